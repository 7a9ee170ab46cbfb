"""Fixed train / dev / test splits of the HH harmless comparisons, grouped by the first human turn.

Some conversations share their opening request; if one landed in train and its twin in test, test accuracy would
measure memory, not generalisation. So the split is decided per *group* (the first human turn, whitespace- and
case-normalised), by a hash: the same group always goes to the same part, on every machine, whatever the order of
the file. Shares: 80% train, 10% dev, 10% test of groups. ``python -m alignloop.data.splits`` rewrites
``data/hh-harmless/{train,dev,test}.jsonl.gz`` from ``pairs.jsonl.gz``; tune on dev only, report on test.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from pathlib import Path

from alignloop.data.readers import parse_hh

SHARES = (("train", 80), ("dev", 10), ("test", 10))
HH_DIR = Path(__file__).resolve().parents[2] / "data" / "hh-harmless"


def group_key(chosen_transcript: str) -> str:
    first = parse_hh(chosen_transcript)[0]["content"]
    return re.sub(r"\s+", " ", first).strip().lower()


def part_of(key: str) -> str:
    bucket = int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100
    edge = 0
    for name, share in SHARES:
        edge += share
        if bucket < edge:
            return name
    return SHARES[-1][0]


def split_rows(rows: list[dict]) -> dict[str, list[dict]]:
    parts: dict[str, list[dict]] = {name: [] for name, _ in SHARES}
    for row in rows:
        parts[part_of(group_key(row["chosen"]))].append(row)
    return parts


def write_splits(source: Path = HH_DIR / "pairs.jsonl.gz", folder: Path = HH_DIR) -> dict[str, int]:
    with gzip.open(source, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    counts = {}
    for name, part in split_rows(rows).items():
        with gzip.GzipFile(folder / f"{name}.jsonl.gz", "wb", mtime=0) as fh:  # mtime=0: byte-identical rebuilds
            for row in part:
                fh.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
        counts[name] = len(part)
    return counts


if __name__ == "__main__":
    print(write_splits())
