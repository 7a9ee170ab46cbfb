"""The option tables in ``docs/``, rendered from the config dataclasses that also make ``--help``.

A page marks where a command's table goes::

    <!-- options: reward train -->
    (generated: never edit by hand)
    <!-- /options -->

``sync_file`` re-renders every marked region of a page; ``scripts/gen_option_docs.py`` (``make docs``) runs it over
``README.md`` and ``docs/*.md``, and ``tests/unit/cli/test_option_docs.py`` fails when a page differs from what the
dataclasses say. Flags, choices, defaults and help come from the same helpers as ``build_parser``, so a page, the
command's ``--help`` and the dataclass cannot disagree.
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

from alignloop.core.config import StageConfig, _is_optional
from alignloop.core.paths import REPO_DATA
from alignloop.pipelines.stages import COMMANDS, load_ref

REGION = re.compile(r"(<!-- options: (?P<cmd>[^>]*?) -->\n)(?P<body>.*?)(<!-- /options -->)", re.S)
REGENERATE = "python scripts/gen_option_docs.py"


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default value (calling its factory for lists and dicts)."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def default_text(value: Any) -> str:
    """A default as the command line and YAML spell it (``true``, ``q_proj k_proj``); empty for none. A file of
    the repository's ``data/`` is written ``<repo>/data/...``, so the docs hold no path of one machine."""
    if value is None or value == "" or value == []:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(map(str, value))
    text = str(value)
    repo = str(REPO_DATA.parent) + os.sep
    return "<repo>/" + text[len(repo):] if text.startswith(repo) else text


def flag_text(f: dataclasses.Field, tp: Any) -> str:
    """How a field is written on the command line: ``--max-steps N``, ``--pooling {last,mean}``,
    ``--lora / --no-lora``, ``FILE`` for a positional."""
    if f.metadata.get("positional"):
        return f.name.upper()
    name = f"--{f.name.replace('_', '-')}"
    _, inner = _is_optional(tp)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if inner is bool:
        text = f"{name} / --no-{name[2:]}"
    elif origin is Literal:
        text = f"{name} {{{','.join(map(str, args))}}}"
    elif origin is list:
        text = f"{name} VALUE ..." if not f.metadata.get("repeat") else f"{name} VALUE (repeatable)"
    else:
        text = f"{name} {'N' if inner is int else 'X' if inner is float else 'VALUE'}"
    return text + (f", {f.metadata['short']}" if f.metadata.get("short") else "")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def render_table(cls: type[StageConfig]) -> str:
    """The markdown table of a command's flags: flag, default, meaning (one row per dataclass field)."""
    hints = typing.get_type_hints(cls)
    rows = ["| flag | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        default = default_text(field_default(f))
        rows.append(f"| `{flag_text(f, hints[f.name])}` | {f'`{_cell(default)}`' if default else ''} | "
                    f"{_cell(f.metadata.get('help', ''))} |")
    return "\n".join(rows)


def render_region(command: str) -> str:
    """What goes between a page's ``<!-- options: COMMAND -->`` and ``<!-- /options -->`` markers."""
    words = tuple(command.split())
    if words not in COMMANDS:
        raise KeyError(command)
    cls = load_ref(COMMANDS[words][1])
    source = cls.__module__.replace(".", "/") + ".py"
    return (f"<!-- generated from {cls.__name__} ({source}) by `{REGENERATE}`: edit the dataclass, not this "
            f"table -->\n\n`alignloop {command}`: {(cls.__doc__ or '').strip()}\n\n{render_table(cls)}\n\n")


def render_page(text: str, where: str = "page") -> tuple[str, list[str]]:
    """``text`` with every marked region re-rendered, and the commands whose region changed. An unknown command
    in a marker is a ValueError naming ``where`` and the line."""
    stale: list[str] = []

    def one(m: re.Match) -> str:
        command = m.group("cmd").strip()
        try:
            body = render_region(command)
        except KeyError:
            line = text.count("\n", 0, m.start()) + 1
            known = ", ".join(" ".join(c) for c in COMMANDS)
            raise ValueError(f"{where}:{line}: '<!-- options: {command} -->' names no command "
                             f"(one of: {known})") from None
        if body != m.group("body"):
            stale.append(command)
        return m.group(1) + body + m.group(4)

    return REGION.sub(one, text), stale


def marked_commands(text: str) -> list[str]:
    """The commands a page has a marked region for, in order."""
    return [m.group("cmd").strip() for m in REGION.finditer(text)]


def sync_file(path: Path, write: bool = True) -> list[str]:
    """Re-render a page's marked regions (written back when ``write`` and something changed); returns the commands
    whose table was stale."""
    text = path.read_text()
    new, stale = render_page(text, str(path))
    if write and new != text:
        path.write_text(new)
    return stale


def pages(root: Path) -> list[Path]:
    """The pages that may hold option tables: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]
