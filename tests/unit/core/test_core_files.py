"""alignloop.core.files: a file is either the old one or the complete new one, never torn, and no temporary file
is left behind; the contents are pinned literally."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from alignloop.core.files import atomic_path, replace_folder, write_json, write_jsonl, write_text


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_atomic_path_moves_the_finished_file_into_place(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    with atomic_path(target) as tmp:
        assert tmp.parent == target.parent  # same folder, so the rename is atomic
        assert tmp != target and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert listing(target.parent) == ["out.bin"]


def test_atomic_path_keeps_the_old_file_on_an_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"), atomic_path(target) as tmp:
        tmp.write_text("half of the new")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert listing(tmp_path) == ["out.txt"]


def test_atomic_path_error_before_anything_was_written(tmp_path):
    target = tmp_path / "never.txt"
    with pytest.raises(KeyError), atomic_path(target):
        raise KeyError("x")
    assert listing(tmp_path) == []


def test_write_text_replaces_and_returns_the_path(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    assert write_text(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode()


def test_write_json_literal_content(tmp_path):
    out = write_json(tmp_path / "m.json", {"b": 1.5, "a": [1, None], "where": Path("/x/y")})
    assert out.read_text() == '{\n  "b": 1.5,\n  "a": [\n    1,\n    null\n  ],\n  "where": "/x/y"\n}'
    write_json(out, {"k": "v"}, indent=None)
    assert out.read_text() == '{"k": "v"}'
    assert listing(tmp_path) == ["m.json"]


ROWS = [{"prompt": "Où?", "n": 1}, {"list": [1, 2], "none": None}]
LINES = '{"prompt": "Où?", "n": 1}\n{"list": [1, 2], "none": null}\n'


def test_write_jsonl_plain_literal_content(tmp_path):
    out = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    assert out.read_text(encoding="utf-8") == LINES


def test_write_jsonl_gz_round_trip(tmp_path):
    out = write_jsonl(tmp_path / "rows.jsonl.gz", iter(ROWS))
    assert out.read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    with gzip.open(out, "rt", encoding="utf-8") as fh:
        assert fh.read() == LINES
    assert listing(tmp_path) == ["rows.jsonl.gz"]


def test_write_jsonl_keeps_the_old_file_when_the_rows_fail(tmp_path):
    target = tmp_path / "rows.jsonl"
    target.write_text("old\n")

    def rows():
        yield {"a": 1}
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        write_jsonl(target, rows())
    assert target.read_text() == "old\n"
    assert listing(tmp_path) == ["rows.jsonl"]


def test_replace_folder_swaps_in_the_new_folder(tmp_path):
    folder, new = tmp_path / "final", tmp_path / "final.tmp"
    folder.mkdir()
    (folder / "old.txt").write_text("old")
    new.mkdir()
    (new / "model.txt").write_text("new")
    assert replace_folder(new, folder) == folder
    assert listing(folder) == ["model.txt"] and (folder / "model.txt").read_text() == "new"
    assert listing(tmp_path) == ["final"]  # neither the temporary nor the old folder is left


def test_replace_folder_when_there_was_none(tmp_path):
    new = tmp_path / "staging"
    new.mkdir()
    (new / "a").write_text("1")
    replace_folder(new, tmp_path / "final")
    assert listing(tmp_path) == ["final"] and (tmp_path / "final" / "a").read_text() == "1"
