"""Bulk import into the feedback studio: how long `alignloop label import` takes for N tasks (issue 20: 100,000
tasks in under 30 s on SQLite).

Writes a file of N records in the chosen shape, imports it into a fresh project with the same code the CLI runs
(``alignloop.feedback.io.import_file``: read, check everything, write in batches in one transaction) and prints
one JSON line of figures. The SQLite database keeps the studio's settings (WAL, ``synchronous=FULL``).

    nice -n 10 python benchmarks/studio_import.py --tasks 100000 --workdir /tmp/studio-import
    python benchmarks/studio_import.py --tasks 100000 --workdir /tmp/w --shape trl      # + one judgment each
    python benchmarks/studio_import.py --tasks 10000 --workdir /tmp/w --db postgresql+psycopg://USER@HOST/DB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_file(path: Path, n: int, shape: str) -> None:
    """N records: ``generate`` (a prompt and 2 candidates, no judgment), ``trl`` (a preference pair and its
    judgment) or ``labelstudio`` (a pairwise task with 2 annotations)."""
    with open(path, "w", encoding="utf-8") as f:
        if shape == "labelstudio":
            f.write("[")
        for i in range(n):
            prompt = f"Question {i}: which of these two answers explains the water cycle better?"
            a, b = f"Answer one to {i}: evaporation, condensation, rain.", f"Answer two to {i}: it rains."
            if shape == "generate":
                row = {"id": f"q{i}", "prompt": prompt, "completions": [a, b], "model": "m", "uncertainty": i % 7}
            elif shape == "trl":
                row = {"id": f"q{i}", "prompt": prompt, "chosen": a, "rejected": b}
            else:
                row = {"id": i, "data": {"prompt": prompt, "answer1": a, "answer2": b},
                       "annotations": [{"completed_by": u, "lead_time": 3.5,
                                        "result": [{"type": "pairwise", "value": {"selected": "left"}}]}
                                       for u in (1, 2)]}
            f.write(("," if shape == "labelstudio" and i else "") + json.dumps(row) + ("\n" if shape != "labelstudio"
                                                                                     else ""))
        if shape == "labelstudio":
            f.write("]\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=100_000, help="records (= pairwise tasks) in the file")
    ap.add_argument("--workdir", required=True, help="folder for the file and the SQLite database (made if missing)")
    ap.add_argument("--shape", choices=("generate", "trl", "labelstudio"), default="generate")
    ap.add_argument("--db", default="", help="database URL (default: a new SQLite file in --workdir)")
    args = ap.parse_args()

    from alignloop.feedback.io import import_file
    from alignloop.feedback.store import Database

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    suffix = ".json" if args.shape == "labelstudio" else ".jsonl"
    data = work / f"import-{args.shape}-{args.tasks}{suffix}"
    write_file(data, args.tasks, args.shape)
    url = args.db
    if not url:
        db_file = work / f"import-{args.shape}-{args.tasks}.db"
        for old in (db_file, Path(f"{db_file}-wal"), Path(f"{db_file}-shm")):
            old.unlink(missing_ok=True)
        url = f"sqlite:///{db_file}"
    db = Database(url)
    project = f"bench-{args.shape}-{args.tasks}-{int(time.time())}"
    load = os.getloadavg()[0]
    t0, c0 = time.perf_counter(), time.process_time()
    summary = import_file(db, project, data)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    db.dispose()
    # cpu_s: this process's CPU time (the wall time on shared cores also holds the time others had the CPU)
    print(json.dumps({"shape": args.shape, "tasks": summary["tasks"], "judgments": summary["judgments"],
                      "seconds": round(seconds, 2), "cpu_s": round(cpu, 2),
                      "tasks_per_s": round(summary["tasks"] / seconds), "db": url.split(":", 1)[0],
                      "file_mb": round(data.stat().st_size / 1e6, 1), "load_before": round(load, 1),
                      "python": platform.python_version()}))


if __name__ == "__main__":
    main()
