"""Per-item result tables: the CSV every evaluation writes next to its summary, so a person can read where the
model failed."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Sequence

from alignloop.core.files import atomic_path


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Write dict rows as a CSV atomically; the columns are the first row's keys, then any new key of a later row."""
    cols = list(rows[0].keys()) if rows else []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return Path(path)
