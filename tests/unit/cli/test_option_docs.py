"""The option tables in README.md and docs/*.md are generated from the config dataclasses (alignloop/cli/options_doc.py)
and must say what the dataclasses say."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignloop.cli.main import build_parser
from alignloop.cli.options_doc import REGENERATE, marked_commands, pages, render_page, render_table, sync_file
from alignloop.pipelines.stages import COMMANDS, load_ref

ROOT = Path(__file__).resolve().parents[3]


def test_every_marked_table_matches_its_dataclass():
    stale = {str(p.relative_to(ROOT)): render_page(p.read_text(), str(p))[1] for p in pages(ROOT)}
    stale = {page: cmds for page, cmds in stale.items() if cmds}
    assert not stale, f"option tables differ from the config dataclasses: {stale}; regenerate with `{REGENERATE}`"


def test_every_command_has_exactly_one_table():
    marked = [c for p in pages(ROOT) for c in marked_commands(p.read_text())]
    assert sorted(marked) == sorted(" ".join(c) for c in COMMANDS)


def test_a_hand_edited_default_is_caught_and_regenerated(tmp_path):
    from alignloop.trainers.config import RewardTrainConfig

    page = tmp_path / "page.md"
    page.write_text("intro\n\n<!-- options: reward train -->\nold table\n<!-- /options -->\n\noutro\n")
    assert sync_file(page, write=False) == ["reward train"]
    assert sync_file(page) == ["reward train"]
    text = page.read_text()
    assert text.startswith("intro\n\n<!-- options: reward train -->\n")
    assert text.endswith("<!-- /options -->\n\noutro\n")
    assert render_table(RewardTrainConfig) in text and "old table" not in text
    assert sync_file(page) == []  # now current
    # someone edits a default by hand: the check names the command
    page.write_text(text.replace("| `--pooling {last,mean}` | `mean` |", "| `--pooling {last,mean}` | `last` |"))
    assert sync_file(page, write=False) == ["reward train"]


def test_rows_are_what_help_says():
    from alignloop.trainers.config import RewardTrainConfig

    rows = {r.split(" | ")[0]: r for r in render_table(RewardTrainConfig).splitlines()}
    assert rows["| `--freeze-backbone / --no-freeze-backbone`"].split(" | ")[1] == "`true`"
    assert rows["| `--pooling {last,mean}`"].split(" | ")[1] == "`mean`"
    assert rows["| `--max-length N`"].split(" | ")[1] == "`512`"
    assert rows["| `--backbone-layers N`"].split(" | ")[1] == ""  # no default: an empty cell
    assert "\\|w\\|^2" in render_table(RewardTrainConfig)  # a | in the help is escaped, not a new column
    helptext = " ".join(build_parser(RewardTrainConfig).format_help().split())
    assert "[default: true]" in helptext and "[default: mean]" in helptext and "[default: 512]" in helptext


def test_unknown_command_in_a_marker_names_page_and_line():
    with pytest.raises(ValueError, match=r"x\.md:3: '<!-- options: reward tran -->' names no command"):
        render_page("a\n\n<!-- options: reward tran -->\n<!-- /options -->\n", "x.md")


def test_every_config_class_renders():
    for words, (_, ref) in COMMANDS.items():
        table = render_table(load_ref(ref))
        assert table.count("\n") >= 2, words


def test_defaults_inside_the_repository_are_written_without_this_machines_path():
    from alignloop.cli.options_doc import default_text
    from alignloop.core.paths import REPO_DATA

    assert default_text(str(REPO_DATA / "financebench" / "questions.jsonl")) == \
        "<repo>/data/financebench/questions.jsonl"
    assert default_text("/elsewhere/data.jsonl") == "/elsewhere/data.jsonl"
    root = str(REPO_DATA.parent)
    for page in (REPO_DATA.parent / "docs").glob("*.md"):
        assert root not in page.read_text(), f"{page} holds this checkout's path {root}"
