"""Helpers shared by the feedback tests (a unique module name: tests/ has no packages)."""

from __future__ import annotations

import json
from pathlib import Path


def generate_records(n: int = 6, k: int = 2, with_uncertainty: bool = False, start: int = 0) -> list[dict]:
    out = []
    for i in range(start, start + n):
        rec = {"id": f"p{i}", "prompt": [{"role": "user", "content": f"Question {i}?"}],
               "completions": [f"answer {i}.{c}" for c in range(k)], "model": f"model-{i % 2}",
               "sampling": {"temperature": 0.8}}
        if with_uncertainty:
            rec["uncertainty"] = round((i * 7 % 10) / 10, 2)
        out.append(rec)
    return out


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def numbered(records: list) -> list[tuple[int, dict]]:
    return [(i + 1, r) for i, r in enumerate(records)]
