"""The ``alignloop`` command: one subcommand per stage, each a thin call into its module.

Flags are generated from the stage's config dataclass (``alignloop/config.py`` and the modules named in
``COMMANDS``): every field is a ``--flag`` and a YAML key of ``--config file.yaml``; flags override the file.
Only the invoked command's module is imported, so ``alignloop --help`` stays instant (no torch import).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from typing import Any, Literal, Sequence

from alignloop.cli.options_doc import default_text, field_default
from alignloop.core.config import ConfigError, StageConfig, _is_optional
from alignloop.core.errors import AlignloopError
from alignloop.pipelines.stages import COMMANDS, load_ref, run

GROUPS = [
    ("train", ["sft", "reward", "dpo", "ppo", "grpo", "rloo", "launch"]),
    ("data and feedback", ["generate", "label", "judge"]),
    ("evaluate and run", ["eval", "loop", "demo", "serve", "models"]),
]




def top_help() -> str:
    lines = ["usage: alignloop <command> [<action>] [--config FILE.yaml] [--flags ...]", "",
             "End-to-end RLHF: SFT, sampling, human and AI feedback, reward models, PPO/GRPO/RLOO, DPO,",
             "evaluation and serving. `alignloop <command> --help` lists a command's flags.", ""]
    for title, words in GROUPS:
        lines.append(f"{title}:")
        for w in words:
            for cmd, (help_line, _) in COMMANDS.items():
                if cmd[0] == w:
                    lines.append(f"  {' '.join(cmd):<22} {help_line}")
        lines.append("")
    return "\n".join(lines)


def _flag_type(tp: Any) -> tuple[dict[str, Any], str]:
    """argparse keyword arguments for a field type, and a metavar."""
    _, inner = _is_optional(tp)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is Literal:
        return {"choices": list(args)}, ""
    if inner is int:
        return {"type": int}, "N"
    if inner is float:
        return {"type": float}, "X"
    if origin is list:
        return {}, "VALUE"
    return {}, "VALUE"


def build_parser(cls: type[StageConfig]) -> argparse.ArgumentParser:
    words = " ".join(cls.command)
    parser = argparse.ArgumentParser(
        prog=f"alignloop {words}", description=(cls.__doc__ or "").strip(),
        argument_default=argparse.SUPPRESS, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file whose keys are these flags; flags override it")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        tp = hints[f.name]
        default = default_text(field_default(f))  # as the docs' option tables show it (options_doc)
        help_text = meta.get("help", "")
        if default:
            help_text += f" [default: {default}]"
        help_text = help_text.replace("%", "%%")
        if meta.get("positional"):
            parser.add_argument(f.name, metavar=f.name.upper(), nargs="?", help=help_text)
            continue
        names = [f"--{f.name.replace('_', '-')}"] + ([meta["short"]] if meta.get("short") else [])
        _, inner = _is_optional(tp)
        if inner is bool:
            parser.add_argument(*names, dest=f.name, action=argparse.BooleanOptionalAction, help=help_text)
            continue
        kw, metavar = _flag_type(tp)
        if typing.get_origin(inner) is list:
            kw["action"] = "append" if meta.get("repeat") else None
            if kw["action"] is None:
                kw.pop("action")
                kw["nargs"] = "+"
        if metavar and "choices" not in kw:
            kw["metavar"] = metavar
        parser.add_argument(*names, dest=f.name, help=help_text, **kw)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


def parse(argv: Sequence[str]) -> tuple[type[StageConfig], StageConfig]:
    """Find the command, parse its flags and config file, validate. Raises ConfigError with every problem."""
    argv = list(argv)
    matches = [cmd for cmd in COMMANDS if tuple(argv[: len(cmd)]) == cmd]
    if not matches:
        first = argv[0]
        actions = [" ".join(c) for c in COMMANDS if c[0] == first]
        if actions:
            raise SystemExit(f"alignloop {first}: choose an action: {', '.join(a.split(' ', 1)[1] for a in actions)}")
        raise SystemExit(f"alignloop: unknown command '{first}'. Run `alignloop --help` for the list.")
    cmd = max(matches, key=len)
    cls = load_ref(COMMANDS[cmd][1])
    parser = build_parser(cls)
    rest_field = getattr(cls, "rest_field", None)
    if rest_field:
        ns, rest = parser.parse_known_args(argv[len(cmd):])
        if rest and rest[0] == "--":
            rest = rest[1:]
        setattr(ns, rest_field, rest)
    else:
        ns = parser.parse_args(argv[len(cmd):])
    values = vars(ns)
    config_file = values.pop("config", None)
    if config_file:
        return cls, cls.load(config_file, overrides=values)
    return cls, cls.from_dict(values, source="flags").validate()



def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(top_help())
        return 0
    if argv[0] in ("-V", "--version"):
        from alignloop import __version__

        print(f"alignloop {__version__}")
        return 0
    try:
        cls, cfg = parse(argv)
        # once per launch: under `alignloop launch` / `accelerate launch` every rank runs this same command
        if getattr(cls, "print_config", True) and os.environ.get("RANK", "0") == "0":
            print(f"# alignloop {' '.join(cls.command)} — resolved config", file=sys.stderr)
            print(cfg.to_yaml().rstrip(), file=sys.stderr)
        result = run(cfg)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except AlignloopError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last saved checkpoint is kept; rerun with --resume to continue", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) and not isinstance(result, bool) else 0


if __name__ == "__main__":
    raise SystemExit(main())
