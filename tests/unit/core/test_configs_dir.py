"""Every example config in configs/ loads into its command's dataclass (first line: `# alignloop <command>`)."""

from pathlib import Path

import pytest

from alignloop.pipelines.stages import COMMANDS
from alignloop.pipelines.stages import load_ref as _load

CONFIGS = sorted((Path(__file__).resolve().parents[3] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_matches_its_dataclass(path, monkeypatch):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# alignloop "), f"{path.name}: first line must name its command"
    words = tuple(first[len("# alignloop "):].split())
    cls = _load(COMMANDS[words][1])
    # paths in examples are relative to the repository root
    monkeypatch.chdir(path.parents[1])
    cfg = cls.load(path)
    assert cfg.command == words
