"""Plain helpers for the tests (conftest.py holds the fixtures). Imported as `from testutil import ...`:
a name of its own, since pytest puts several conftest.py modules on the path under the same name."""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def python_cmd() -> list[str]:
    return [sys.executable, "-m", "alignloop"]
