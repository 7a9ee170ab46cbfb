"""The lead's tools on a big project (issue 20): how long each filter, the review queue, a labeler's history and
the activity series take, and what the database does for them (its query plan).

    python benchmarks/lead_tools_scale.py --tasks 100000 --db sqlite:///runs/lead-100k.db
    python benchmarks/lead_tools_scale.py --tasks 100000 --db postgresql+psycopg://postgres@127.0.0.1:5432/test

The project is built with bulk inserts, not through the API (the build is not what is measured): prompts of 20
words and two answers of 40 words from a 2,000-word vocabulary; a gold rate of 0.1 (gold answer A); the first half
of the tasks judged by 3 of 30 human labelers (A with probability 0.7), over 30 days. The kept figures
(``task_tallies``, ``gold_misses``, ``daily_activity``) are computed with the same functions
``feedback.tallies`` keeps them with. Then each read runs ``--repeats`` times in a fresh read session; the table
gives the median and the slowest, in milliseconds, and the text search's first catch-up (indexing every task).
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, select, text  # noqa: E402

from alignloop.feedback import review, search, tallies  # noqa: E402
from alignloop.feedback.store import (  # noqa: E402
    Completion,
    DailyActivity,
    Database,
    GoldAnswer,
    GoldMiss,
    Judgment,
    Labeler,
    Project,
    Prompt,
    Task,
    TaskTally,
    create_labeler,
    create_project,
    get_project,
)

CHUNK = 20_000


def build(db: Database, n_tasks: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    vocab = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "po", "ru", "sa", "te", "vu", "zo")
             for b in range(200)]
    words = lambda n: " ".join(rng.choice(vocab) for _ in range(n))  # noqa: E731
    start = dt.datetime(2027, 1, 1)
    with db.write() as s:
        p = create_project(s, "big", overlap=3, gold_rate=0.1)
        labs = [create_labeler(s, f"labeler{i:02d}") for i in range(30)]
        pid, lab_ids = p.id, [lab.id for lab in labs]
    prompt_id = comp_id = task_id = judgment_id = 0
    with db.write() as s:  # ids continue from what is there (none: a fresh database)
        prompt_id = s.scalar(select(Prompt.id).order_by(Prompt.id.desc()).limit(1)) or 0
        comp_id = s.scalar(select(Completion.id).order_by(Completion.id.desc()).limit(1)) or 0
        task_id = s.scalar(select(Task.id).order_by(Task.id.desc()).limit(1)) or 0
        judgment_id = s.scalar(select(Judgment.id).order_by(Judgment.id.desc()).limit(1)) or 0
    days: dict[dt.date, dict[str, int]] = defaultdict(lambda: dict.fromkeys(tallies.DAY_FIELDS, 0))
    for lo in range(0, n_tasks, CHUNK):
        rows = defaultdict(list)
        for i in range(lo, min(lo + CHUNK, n_tasks)):
            prompt_id += 1
            task_id += 1
            rows["prompts"].append({"id": prompt_id, "project_id": pid, "external_id": f"q{i}",
                                    "prompt": f"Question {i}: {words(20)}?", "context": None, "extra": {}})
            cids = []
            for pos in range(2):
                comp_id += 1
                cids.append(comp_id)
                rows["completions"].append({"id": comp_id, "prompt_id": prompt_id, "position": pos,
                                            "text": words(40), "model": "m", "sampling": {}})
            gold = rng.random() < 0.1
            rows["tasks"].append({"id": task_id, "project_id": pid, "prompt_id": prompt_id, "task_type": "pairwise",
                                  "completion_ids": cids, "seq": i, "uncertainty": None, "is_gold": gold,
                                  "created_at": start})
            if gold:
                rows["gold"].append({"task_id": task_id, "answer": {"choice": "A"}, "note": ""})
            if i >= n_tasks // 2:
                continue
            js = sorted((SimpleNamespace(task_id=task_id, labeler_id=lab, skipped=False, ranking=None, ratings=None,
                                         choice="A" if rng.random() < 0.7 else "B",
                                         created_at=start + dt.timedelta(minutes=rng.randrange(30 * 24 * 60)))
                         for lab in rng.sample(lab_ids, 3)), key=lambda j: j.created_at)
            for j in js:  # ids in time order, as add_judgment gives them
                judgment_id += 1
                j.id = judgment_id
            for j in js:
                rows["judgments"].append({"id": j.id, "task_id": task_id, "labeler_id": j.labeler_id,
                                          "assignment_id": None, "choice": j.choice, "skipped": False,
                                          "guideline_version": 1, "created_at": j.created_at})
            fig = tallies.task_figures("pairwise", js, {"choice": "A"} if gold else None)
            rows["tallies"].append({"task_id": task_id, "project_id": pid, "judgments": 3, "skips": 0,
                                    "agreement": fig["agreement"], "gold_misses": len(fig["gold_miss_ids"]),
                                    "last_judged_at": js[-1].created_at})
            rows["misses"] += [{"judgment_id": j.id, "project_id": pid, "task_id": task_id,
                                "labeler_id": j.labeler_id} for j in js if j.id in fig["gold_miss_ids"]]
            for k, j in enumerate(js):
                day = days[j.created_at.date()]
                day["judgments"] += 1
                c, a = tallies.agreement_with_earlier("pairwise", j, js[:k])
                day["compared"] += c
                day["agreeing"] += a
        with db.write() as s:
            for table, key in ((Prompt, "prompts"), (Completion, "completions"), (Task, "tasks"),
                               (GoldAnswer, "gold"), (Judgment, "judgments"), (TaskTally, "tallies"),
                               (GoldMiss, "misses")):
                if rows[key]:
                    s.execute(insert(table), rows[key])
        print(f"  built {min(lo + CHUNK, n_tasks):,} tasks", flush=True)
    with db.write() as s:
        s.execute(insert(DailyActivity), [{"project_id": pid, "day": d, **v} for d, v in days.items()])
        s.execute(text("ANALYZE"))  # what a long-lived database has: the planner's statistics


def timed(db: Database, fn, repeats: int) -> tuple[float, float, float]:
    """(median wall ms, slowest wall ms, median CPU ms of this process). On a shared machine the wall time
    includes waiting for a core; the CPU time does not (on SQLite it is all the work; on PostgreSQL the
    server's share is not in it)."""
    wall, cpu = [], []
    for _ in range(repeats):
        with db.read() as s:
            t0, c0 = time.perf_counter(), time.process_time()
            fn(s)
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
    return statistics.median(wall), max(wall), statistics.median(cpu)


def submit_cost(url: str, n_tasks: int) -> None:
    """What keeping the figures adds to a submit: ``add_judgment`` in its own write transaction (as the web app
    runs it), 3 labelers on each of ``n_tasks`` tasks, with ``tallies.record`` and with it replaced by nothing."""
    from alignloop.feedback import queries
    from alignloop.feedback.io import import_records
    from alignloop.feedback.store import add_judgment

    kept = tallies.record
    for name, record in (("with the kept figures", kept), ("without (record replaced by nothing)", None)):
        db = Database(url)
        with db.write() as s:
            p = create_project(s, f"submits-{len(name)}", overlap=3)
            import_records(s, p, [(i + 1, {"id": f"s{i}", "prompt": f"Question {i}?", "completions": ["a", "b"]})
                                  for i in range(n_tasks)])
            tasks = list(s.scalars(select(Task.id).where(Task.project_id == p.id)))
            labs = [create_labeler(s, f"sub{len(name)}-{i}").id for i in range(3)]
        queries.tallies.record = record or (lambda *a, **k: None)
        times = []
        try:
            for task_id in tasks:
                for lab in labs:
                    t0 = time.perf_counter()
                    with db.write() as s:
                        add_judgment(s, task_id, s.get(Labeler, lab), "A")
                    times.append((time.perf_counter() - t0) * 1000)
        finally:
            queries.tallies.record = kept
        times.sort()
        print(f"| submit, {name} | {statistics.median(times):.2f} | {times[int(len(times) * 0.99)]:.2f} (p99) |")
        db.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", default="sqlite:///runs/lead-tools.db")
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--submit-cost", type=int, default=0, metavar="TASKS",
                    help="instead: time add_judgment with and without the kept figures on a new project of TASKS")
    args = ap.parse_args()
    if args.submit_cost:
        submit_cost(args.db, args.submit_cost)
        return
    if args.db.startswith("sqlite:///"):
        Path(args.db[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    db = Database(args.db)
    with db.read() as s:
        fresh = s.scalar(select(Project.id).where(Project.name == "big")) is None
    if fresh:
        t0 = time.perf_counter()
        build(db, args.tasks)
        print(f"built in {time.perf_counter() - t0:.1f} s")
    with db.read() as s:
        p = get_project(s, "big")
        pid = p.id
        tasks = s.scalar(select(Task.id).where(Task.project_id == pid).order_by(Task.id.desc()).limit(1))
        some_labeler = s.scalar(select(Labeler.name).where(Labeler.name == "labeler07"))
    t0 = time.perf_counter()
    left = search.catch_up(db, pid, budget_s=3600)
    print(f"text search index caught up in {time.perf_counter() - t0:.1f} s (left {left})")
    with db.read() as s:
        deep = review.find_tasks(s, p, review.TaskFilter(), limit=50, after=str(tasks - 1000))
        mid_cursor = deep["next"]
        disputed = review.find_tasks(s, p, review.TaskFilter(disputed=True), limit=50)
        word = s.scalar(select(Prompt.prompt).where(Prompt.project_id == pid).limit(1)).split()[2].rstrip("?")

    def find(**kw):
        after = kw.pop("after", None)
        return lambda s: review.find_tasks(s, s.get(Project, pid), review.TaskFilter(**kw), limit=50, after=after)

    cases = [
        ("tasks, first page", find()),
        ("tasks, a page deep in (cursor)", find(after=mid_cursor)),
        ("disputed, first page", find(disputed=True)),
        ("disputed, second page", find(disputed=True, after=disputed["next"])),
        ("agreement 0.3 to 0.4", find(min_agreement=0.3, max_agreement=0.4)),
        ("unanimous (agreement 1)", find(min_agreement=1.0)),
        ("by labeler", find(labeler=some_labeler)),
        ("by labeler, disputed", find(labeler=some_labeler, disputed=True)),
        ("gold failed", find(gold_failed=True)),
        ("gold failed by labeler", find(gold_failed=True, labeler=some_labeler)),
        (f"words: '{word}' (in ~1 % of tasks)", find(text=word)),
        ("words: 'question' (every task)", find(text="question")),
        ("words: two words, disputed", find(text=f"{word} question", disputed=True)),
        ("not decided, first page", find(decided=False)),
        ("review queue, 20 tasks in full", lambda s: review.review_queue(s, s.get(Project, pid))),
        ("labeler history, 50", lambda s: review.labeler_history(s, s.get(Project, pid), some_labeler)),
        ("activity, 30 days", lambda s: review.activity(s, s.get(Project, pid), 30, dt.date(2027, 1, 30))),
    ]
    print(f"\n{args.tasks:,} tasks ({db.engine.dialect.name}); ms over {args.repeats} runs\n")
    print("| read | median ms | slowest ms | median CPU ms | rows |\n| --- | --- | --- | --- | --- |")
    for name, fn in cases:
        with db.read() as s:
            got = fn(s)
        n = len(got["tasks"] if isinstance(got, dict) and "tasks" in got else
                got["judgments"] if isinstance(got, dict) else got)
        med, worst, cpu = timed(db, fn, args.repeats)
        print(f"| {name} | {med:.1f} | {worst:.1f} | {cpu:.1f} | {n} |", flush=True)
    checks = []
    for _ in range(args.repeats):  # what every search by words does first when nothing is new
        t0 = time.perf_counter()
        search.catch_up(db, pid)
        checks.append((time.perf_counter() - t0) * 1000)
    print(f"| text index up to date? (before each search by words) | {statistics.median(checks):.1f} | "
          f"{max(checks):.1f} | | |")
    with db.write() as s:
        lead = s.scalar(select(Labeler).where(Labeler.name == "lead-bench")) or \
            create_labeler(s, "lead-bench", role="lead")
        t0 = time.perf_counter()
        first = review.find_tasks(s, s.get(Project, pid), review.TaskFilter(disputed=True, gold=False), limit=1)
        review.adjudicate(s, s.get(Project, pid), first["tasks"][0]["task_id"], lead, choice="B")
        print(f"| decide one task (write) | {(time.perf_counter() - t0) * 1000:.1f} | | | |")
    db.dispose()


if __name__ == "__main__":
    main()
