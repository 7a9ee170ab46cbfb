"""The task queue at scale (issue 20): maintained counters equal counted ones, next task keeps its old meaning, the
migration fills the counters, and the work of "next task" does not grow with the project or the labeler's history.

The reference here is plain Python over the rows (not the SQL it checks): places taken per task, the project's
open tasks, and per labeler their assignments, judgments and seen open tasks; and the old next-task rule (tasks
with more places taken first, then the project's order; gold tasks by the labeler's seeded draw; never a task
twice to one labeler; never more than ``overlap`` places).
"""

from __future__ import annotations

import datetime as dt
import random
import tempfile
from pathlib import Path

import pytest
from feedback_helpers import generate_records, numbered
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import MetaData, create_engine, select, text

from alignloop.feedback import assign
from alignloop.feedback.io import import_records
from alignloop.feedback.store import (
    Assignment,
    Database,
    Judgment,
    Labeler,
    LabelerProgress,
    Project,
    Task,
    add_judgment,
    create_labeler,
    create_project,
    update_project,
)

T0 = dt.datetime(2026, 12, 1, 9, 0, 0)

# --------------------------------------------------------------------------------------------------
# The reference: counted from the rows
# --------------------------------------------------------------------------------------------------


class Rows:
    """A project's tasks, assignments and judgments, read once (plain rows, no ORM objects)."""

    def __init__(self, s, project_id: int):
        self.project = s.execute(select(Project.__table__).where(Project.id == project_id)).one()
        self.tasks = {t.id: t for t in s.execute(select(Task.__table__).where(Task.project_id == project_id))}
        ids = list(self.tasks)
        self.assignments = s.execute(select(Assignment.__table__).where(Assignment.task_id.in_(ids))).all()
        self.judgments = s.execute(select(Judgment.__table__).where(Judgment.task_id.in_(ids))).all()

    def taken(self, task_id: int, expired: set[int] = frozenset()) -> int:
        return sum(1 for a in self.assignments if a.task_id == task_id and a.slot is not None and a.id not in expired)

    def seen(self, labeler_id: int) -> set[int]:
        return {a.task_id for a in self.assignments if a.labeler_id == labeler_id} | \
            {j.task_id for j in self.judgments if j.labeler_id == labeler_id}

    def is_open(self, task_id: int, expired: set[int] = frozenset()) -> bool:
        t = self.tasks[task_id]
        return not t.is_gold and self.taken(task_id, expired) < self.project.overlap

    def labelers(self) -> set[int]:
        return {a.labeler_id for a in self.assignments} | {j.labeler_id for j in self.judgments}


def counted(rows: Rows) -> dict:
    return {
        "places_taken": {tid: rows.taken(tid) for tid in rows.tasks},
        "open_tasks": sum(rows.is_open(tid) for tid in rows.tasks),
        "counted_seq": max((t.seq for t in rows.tasks.values()), default=0),
        "labelers": {lab: {"assignments": sum(a.labeler_id == lab for a in rows.assignments),
                           "judgments": sum(j.labeler_id == lab for j in rows.judgments),
                           "seen_open": sum(rows.is_open(tid) for tid in rows.seen(lab))}
                     for lab in rows.labelers()},
    }


def maintained(s, project_id: int) -> dict:
    p = s.execute(select(Project.open_tasks, Project.counted_seq).where(Project.id == project_id)).one()
    progress = LabelerProgress.__table__
    return {
        "places_taken": dict(s.execute(select(Task.id, Task.places_taken).where(Task.project_id == project_id)).all()),
        "open_tasks": p.open_tasks,
        "counted_seq": p.counted_seq,
        "labelers": {r.labeler_id: {"assignments": r.assignments, "judgments": r.judgments, "seen_open": r.seen_open}
                     for r in s.execute(select(progress).where(progress.c.project_id == project_id))},
    }


def expected_next(rows: Rows, lab: Labeler, now: dt.datetime) -> tuple[str, object]:
    """The old rule, over the rows: ("current", assignment id) | ("new", {"gold": bool, "ids": [task ids in order]})
    | ("none", None)."""
    p = rows.project
    cutoff = now - dt.timedelta(minutes=p.lease_minutes)
    expired = {a.id for a in rows.assignments if a.status == "open" and a.created_at < cutoff}
    mine = sorted((a for a in rows.assignments if a.labeler_id == lab.id and a.status == "open"
                   and a.id not in expired), key=lambda a: a.id)
    if mine:
        return "current", mine[0].id
    n = sum(a.labeler_id == lab.id for a in rows.assignments)
    gold_first = p.gold_rate > 0 and random.Random(f"{lab.gold_seed}:{p.id}:{n}").random() < p.gold_rate
    seen = rows.seen(lab.id)
    for gold in ([True, False] if gold_first else [False, True]):
        if gold and p.gold_rate <= 0:
            continue
        if gold:
            ids = sorted((t for t in rows.tasks.values() if t.is_gold and t.id not in seen),
                         key=lambda t: (t.seq, t.id))
        else:
            def key(t):
                order = (t.uncertainty is None, -(t.uncertainty or 0.0)) if p.order == "uncertainty" else ()
                return (-rows.taken(t.id, expired), *order, t.seq, t.id)

            ids = sorted((t for t in rows.tasks.values() if not t.is_gold and t.id not in seen
                          and rows.taken(t.id, expired) < p.overlap), key=key)
        if ids:
            return "new", {"gold": gold, "ids": [t.id for t in ids]}
    return "none", None


# --------------------------------------------------------------------------------------------------
# Random sequences of assign, submit, skip, expire, judge and import
# --------------------------------------------------------------------------------------------------

LABELERS = 3


class Scenario:
    """One project, three labelers and a judge, driven step by step; ``check`` compares everything after each."""

    counter = 0

    def __init__(self, db: Database, probes: int, overlap: int, order: str, gold_rate: float, n: int):
        Scenario.counter += 1
        self.db, self.probes, self.k = db, probes, Scenario.counter
        self.now = T0
        self.next_record = 0
        with self.db.write() as s:
            p = create_project(s, f"q{self.k}", overlap=overlap, order=order, gold_rate=gold_rate, lease_minutes=30)
            self.project_id = p.id
            self.labelers = []
            for i in range(LABELERS):
                lab = create_labeler(s, f"q{self.k}-lab{i}")
                lab.gold_seed = f"seed-{i}"  # secret per labeler; fixed here so the reference can draw it too
                self.labelers.append(lab.id)
            self.judge_id = create_labeler(s, f"q{self.k}-judge", kind="ai").id
        self._import(n, gold=[False] * n, with_uncertainty=True)

    def _import(self, n: int, gold: list[bool], with_uncertainty: bool, preferences: int = 0) -> None:
        recs = generate_records(n, with_uncertainty=with_uncertainty, start=self.next_record)
        for rec, g in zip(recs, gold):
            if with_uncertainty and rec["id"].endswith("3"):
                rec.pop("uncertainty")  # some tasks have none: they come last in the uncertainty order
            if g:
                rec["gold"] = {"choice": "A"}
        start = self.next_record + n
        recs += [{"id": f"pref{start + i}", "prompt": f"Q{start + i}?", "chosen": "yes", "rejected": "no"}
                 for i in range(preferences)]
        self.next_record += n + preferences
        with self.db.write() as s:
            import_records(s, s.get(Project, self.project_id), numbered(recs), source=f"batch{self.next_record}")

    # ---- steps ------------------------------------------------------------------------------------
    def _next(self, i: int, planned: bool) -> None:
        with self.db.write() as s:
            p = s.get(Project, self.project_id)
            lab = s.get(Labeler, self.labelers[i])
            want, detail = expected_next(Rows(s, self.project_id), lab, self.now)
            plan = assign.plan_next(s, p, lab, now=self.now) if planned else None
            a = assign.next_assignment(s, p, lab, now=self.now, plan=plan)
            if want == "none":
                assert a is None
            elif want == "current":
                assert a is not None and a.id == detail
            else:
                assert a is not None
                task = s.get(Task, a.task_id)
                assert task.is_gold == detail["gold"]
                if self.probes >= 1000:  # the lanes read whole levels: exactly the old order
                    assert a.task_id == detail["ids"][0]
                else:  # fewer probes: any task the old rule allowed, of the kind the draw asked for
                    assert a.task_id in detail["ids"]
                assert (a.slot is None) == task.is_gold

    def next_task(self, i):
        self._next(i, planned=False)

    def next_task_planned(self, i):
        """The web app's way: candidates found first (in a read transaction there), then taken."""
        self._next(i, planned=True)

    def submit(self, pick, skip):
        """Someone who holds an open assignment answers it, or skips it."""
        with self.db.write() as s:
            held = list(s.scalars(select(Assignment).join(Task, Task.id == Assignment.task_id).where(
                Task.project_id == self.project_id, Assignment.status == "open").order_by(Assignment.id)))
            if not held:
                return
            a = held[pick % len(held)]
            lab = s.get(Labeler, a.labeler_id)
            if skip:
                add_judgment(s, a.task_id, lab, skip_reason="not sure", assignment=a)
            else:
                add_judgment(s, a.task_id, lab, "A", assignment=a)

    def walk_away(self):
        """Time passes beyond the lease: every open assignment expires (released by the next request or by
        ``expire``)."""
        self.now += dt.timedelta(minutes=31)

    def expire(self):
        with self.db.write() as s:
            assign.release_expired(s, s.get(Project, self.project_id), now=self.now)

    def judge(self, pick, who):
        """Someone answers a task without an assignment: a judge, or (through the Python API) one of the labelers,
        on a task they hold no assignment in (a human may hold a place in it)."""
        lab_id = self.judge_id if who == LABELERS else self.labelers[who]
        with self.db.write() as s:
            ids = sorted(s.scalars(select(Task.id).where(Task.project_id == self.project_id)))
            done = set(s.scalars(select(Judgment.task_id).where(Judgment.labeler_id == lab_id)))
            done |= set(s.scalars(select(Assignment.task_id).where(Assignment.labeler_id == lab_id)))
            todo = [t for t in ids if t not in done]
            if todo:
                add_judgment(s, todo[pick % len(todo)], s.get(Labeler, lab_id), "B")

    def import_more(self, n, gold, unc, preferences):
        self._import(n, gold[:n], unc, preferences)

    def change_settings(self, overlap, order):
        with self.db.write() as s:
            update_project(s, s.get(Project, self.project_id), overlap=overlap, order=order)

    # ---- after every step ---------------------------------------------------------------------------
    def check(self):
        with self.db.read() as s:
            rows = Rows(s, self.project_id)
            want, got = counted(rows), maintained(s, self.project_id)
            for lab in set(got["labelers"]) - set(want["labelers"]):  # a row for nothing: all zero
                assert got["labelers"].pop(lab) == {"assignments": 0, "judgments": 0, "seen_open": 0}
            assert got == want
            project = s.get(Project, self.project_id)
            for lab_id in self.labelers:  # what a labeler is shown, from the counters
                seen = rows.seen(lab_id)
                mine_open = sum(a.labeler_id == lab_id and a.status == "open" for a in rows.assignments)
                available = sum(rows.is_open(t) for t in rows.tasks if t not in seen) + mine_open
                done = sum(j.labeler_id == lab_id for j in rows.judgments)
                progress = assign.labeler_progress(s, project, s.get(Labeler, lab_id))
                assert progress == {"done": done, "available": available}
        # never a task twice to one labeler, never two labelers in one place, gold tasks hold none
        pairs = [(a.task_id, a.labeler_id) for a in rows.assignments]
        assert len(pairs) == len(set(pairs))
        judged = {(j.task_id, j.labeler_id) for j in rows.judgments if j.assignment_id is None}
        assert not judged & set(pairs)  # a task judged without an assignment is never handed to that labeler
        for tid, t in rows.tasks.items():
            slots = [a.slot for a in rows.assignments if a.task_id == tid and a.slot is not None]
            assert len(slots) == len(set(slots)) and (not t.is_gold or not slots)
            assert all(0 <= x < 3 for x in slots)


@pytest.fixture
def queue_db(db_url, tmp_path):
    """The test database; SQLite's file in memory-backed /dev/shm where there is one (hundreds of commits, each
    fsynced with synchronous=FULL, would dominate the test's time on a disk)."""
    if db_url.startswith("sqlite") and Path("/dev/shm").is_dir():
        with tempfile.TemporaryDirectory(dir="/dev/shm") as folder:
            d = Database(f"sqlite:///{folder}/queue.db")
            yield d
            d.dispose()
        return
    d = Database(db_url)
    yield d
    d.dispose()


STEPS = st.one_of(  # next task comes twice: it is what most steps are
    st.tuples(st.just("next_task"), st.integers(0, LABELERS - 1)),
    st.tuples(st.just("next_task_planned"), st.integers(0, LABELERS - 1)),
    st.tuples(st.just("submit"), st.integers(0, 10_000), st.booleans()),
    st.tuples(st.just("walk_away")),
    st.tuples(st.just("expire")),
    st.tuples(st.just("judge"), st.integers(0, 10_000), st.integers(0, LABELERS)),
    st.tuples(st.just("import_more"), st.integers(1, 4), st.lists(st.booleans(), min_size=4, max_size=4),
              st.booleans(), st.integers(0, 2)),
    st.tuples(st.just("change_settings"), st.integers(1, 3), st.sampled_from(["import", "uncertainty"])),
)


@pytest.mark.parametrize("probes", [1000, 2])
def test_counters_and_next_task_match_the_counted_rule(queue_db, probes, monkeypatch):
    """Random sequences of next task (with and without a plan made first), submit, skip, leases running out,
    judges, imports (gold tasks, uncertainty, preference records with their judgment), overlap and order changes;
    after every step the counters equal the counted values and next task did what the old rule does: with
    ``probes=1000`` each lane reads its whole level, so the choice is exactly the old one; with ``probes=2`` the
    lanes read two tasks, so the cursor lanes and the exact search run too, and the choice is one the old rule
    allowed."""
    monkeypatch.setattr(assign, "PROBES", probes)

    examples, ran = (20 if queue_db.is_sqlite else 6), []

    @settings(max_examples=examples, deadline=None, derandomize=True,
              phases=[Phase.explicit, Phase.reuse, Phase.generate],  # a failure is shown as found: shrinking is slow
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(overlap=st.sampled_from([1, 1, 2, 3]), order=st.sampled_from(["import", "uncertainty"]),
           gold_rate=st.sampled_from([0.0, 0.3]), n=st.integers(1, 6), steps=st.lists(STEPS, min_size=20, max_size=35))
    def run(overlap, order, gold_rate, n, steps):
        scenario = Scenario(queue_db, probes, overlap, order, gold_rate, n)
        scenario.check()
        for name, *values in steps:
            getattr(scenario, name)(*values)
            scenario.check()
        ran.append(len(steps))

    run()
    assert len(ran) == examples and sum(ran) >= 20 * examples


def test_recount_repairs_every_counter(db):
    """``recount`` (an overlap change, a bulk build by SQL, a repair) sets every counter from the rows."""
    scenario = Scenario(db, assign.PROBES, overlap=2, order="import", gold_rate=0.3, n=6)
    for step in [("next_task", 0), ("submit", 0, False), ("next_task", 1), ("next_task_planned", 2),
                 ("submit", 1, True), ("judge", 3, 3), ("judge", 1, 0),
                 ("import_more", 2, [True, False, False, False], True, 1), ("next_task", 0),
                 ("walk_away",), ("expire",), ("next_task", 1)]:
        getattr(scenario, step[0])(*step[1:])
    scenario.check()
    with db.write() as s:
        s.execute(text("UPDATE tasks SET places_taken = 7"))
        s.execute(text("UPDATE projects SET open_tasks = 99, counted_seq = 0"))
        s.execute(text("UPDATE labeler_progress SET assignments = 5, judgments = 5, seen_open = 5"))
    with pytest.raises(AssertionError):
        scenario.check()
    with db.write() as s:
        assign.recount(s, s.get(Project, scenario.project_id))
    scenario.check()


def test_a_task_the_probes_miss_is_still_found(db, monkeypatch):
    """A labeler's own skipped task heads the queue and their cursor is past the rest when a new import puts a task
    in between (uncertainty order): the probes read only the skipped task and what lies beyond the cursor, so the
    exact search finds the new task; "nothing left" is said only when nothing is."""
    monkeypatch.setattr(assign, "PROBES", 1)

    def record(i, u):
        return {"id": f"u{i}", "prompt": f"Q{i}?", "completions": ["a", "b"], "uncertainty": u}

    with db.write() as s:
        p = create_project(s, "al", overlap=1, order="uncertainty")
        import_records(s, p, numbered([record(1, 0.5), record(2, 0.4)]), source="first")
        lab = create_labeler(s, "ann")
    with db.write() as s:
        p, lab = s.get(Project, p.id), s.get(Labeler, lab.id)
        a = assign.next_assignment(s, p, lab)
        first = a.task_id
        add_judgment(s, a.task_id, lab, skip_reason="not my field", assignment=a)  # stays at the head, seen
        b = assign.next_assignment(s, p, lab)
        add_judgment(s, b.task_id, lab, "A", assignment=b)  # the cursor is now at uncertainty 0.4
        import_records(s, p, numbered([record(3, 0.45)]), source="second")
        between = s.scalar(select(Task.id).where(Task.uncertainty == 0.45))
        assert assign.labeler_progress(s, p, lab) == {"done": 2, "available": 1}
        c = assign.next_assignment(s, p, lab)
        assert c is not None and c.task_id == between and first != between
        add_judgment(s, c.task_id, lab, "B", assignment=c)
        assert assign.next_assignment(s, p, lab) is None
        assert assign.labeler_progress(s, p, lab) == {"done": 3, "available": 0}


# --------------------------------------------------------------------------------------------------
# The migration fills the counters from the rows
# --------------------------------------------------------------------------------------------------


def test_migration_0003_fills_the_counters(db_url):
    """A database at 0002 with assignments in every state, gold tasks, judges' judgments and two projects upgrades,
    and every counter equals what the rows say."""
    from alignloop.feedback.migrations import current, upgrade

    engine = create_engine(db_url)
    upgrade(engine, "0002")
    now = dt.datetime(2026, 11, 30, 12, 0)
    meta = MetaData()
    meta.reflect(engine)  # the tables as 0002 made them
    with engine.begin() as c:
        def ins(table, **row):
            t = meta.tables[table]
            return c.execute(t.insert().values(**row).returning(t.c.id)).scalar_one()

        labs = [ins("labelers", name=f"l{i}", kind="ai" if i == 3 else "human", role="labeler", identity="",
                    active=True, created_at=now) for i in range(4)]
        projects = []
        for k, overlap in enumerate((2, 1)):
            pid = ins("projects", name=f"p{k}", task_type="pairwise", criteria=[], flags=[], scale=5,
                      overlap=overlap, gold_rate=0.2, order="import", lease_minutes=60, guidelines="",
                      content_warning="", guidelines_version=1, created_at=now, admin_only=False)
            tasks = []
            for i in range(5):
                prompt = ins("prompts", project_id=pid, external_id=f"x{i}", prompt="q", extra={})
                comps = [ins("completions", prompt_id=prompt, position=j, text="a", sampling={}) for j in range(2)]
                tasks.append(ins("tasks", project_id=pid, prompt_id=prompt, task_type="pairwise",
                                 completion_ids=comps, seq=i + 1 + 10 * k, is_gold=i == 4, created_at=now))
            projects.append((pid, tasks))

        def assignment(task, lab, slot, status):
            return ins("assignments", task_id=task, labeler_id=lab, slot=slot, display_order=[], status=status,
                       created_at=now)

        (p0, t0), (p1, t1) = projects
        # p0 (overlap 2): t0 full (done + open), t1 one done + one skipped, t2 one expired, t3 untouched, t4 gold
        a = assignment(t0[0], labs[0], 0, "done")
        ins("judgments", task_id=t0[0], labeler_id=labs[0], assignment_id=a, choice="A", skipped=False,
            guideline_version=1, created_at=now)
        assignment(t0[0], labs[1], 1, "open")
        a = assignment(t0[1], labs[0], 0, "done")
        ins("judgments", task_id=t0[1], labeler_id=labs[0], assignment_id=a, choice="B", skipped=False,
            guideline_version=1, created_at=now)
        a = assignment(t0[1], labs[1], None, "skipped")
        ins("judgments", task_id=t0[1], labeler_id=labs[1], assignment_id=a, skipped=True, skip_reason="?",
            guideline_version=1, created_at=now)
        assignment(t0[2], labs[2], None, "expired")
        assignment(t0[4], labs[0], None, "done")  # gold: no place
        # a judge's judgments without assignments: one on a free task, one on the full one
        for task in (t0[3], t0[0]):
            ins("judgments", task_id=task, labeler_id=labs[3], choice="A", skipped=False, guideline_version=1,
                created_at=now)
        # p1 (overlap 1): t0 full, everything else free
        assignment(t1[0], labs[2], 0, "open")
    upgrade(engine)
    assert current(engine) == "0004"  # the head: 0003 filled the counters, 0004 (the lead's figures) came after
    engine.dispose()
    db = Database(db_url)
    try:
        with db.read() as s:
            for pid, _ in projects:
                rows = Rows(s, pid)
                assert maintained(s, pid) == counted(rows)
            # the figures by hand, for p0: places 2, 1, 0, 0, 0; open tasks t1, t2, t3
            assert [maintained(s, p0)["places_taken"][t] for t in t0] == [2, 1, 0, 0, 0]
            assert maintained(s, p0)["open_tasks"] == 3 and maintained(s, p1)["open_tasks"] == 3
            assert maintained(s, p0)["labelers"][labs[1]] == {"assignments": 2, "judgments": 1, "seen_open": 1}
            assert maintained(s, p0)["labelers"][labs[3]] == {"assignments": 0, "judgments": 2, "seen_open": 1}
    finally:
        db.dispose()


# --------------------------------------------------------------------------------------------------
# The work of next task does not grow with the project or with the labeler's history
# --------------------------------------------------------------------------------------------------


def _bulk_project(db, name: str, n: int, history: int, overlap: int = 3, order: str = "import") -> tuple[int, int]:
    """A pairwise project of ``n`` tasks (every 10th gold) made by SQL inserts: the first half complete (every place
    done by three other labelers), then ``history`` tasks where the returned veteran holds one place (so the tasks
    others started are, at the head of the queue, the veteran's own)."""
    with db.write() as s:
        p = create_project(s, name, overlap=overlap, order=order, gold_rate=0.1)
        others = [create_labeler(s, f"{name}-o{i}").id for i in range(overlap)]
        vet = create_labeler(s, f"{name}-veteran")
        vet.gold_seed = "vet"
        c = s.connection()
        c.execute(text("INSERT INTO prompts (project_id, external_id, prompt, extra) VALUES (:p, :x, '\"q\"', '{}')"),
                  [{"p": p.id, "x": f"{name}{i}"} for i in range(n)])
        prompt_ids = list(s.scalars(text("SELECT id FROM prompts WHERE project_id = :p ORDER BY id"), {"p": p.id}))
        c.execute(text("INSERT INTO tasks (project_id, prompt_id, task_type, completion_ids, seq, uncertainty, "
                       "is_gold, created_at) VALUES (:p, :q, 'pairwise', '[1, 2]', :seq, :u, :g, :t)"),
                  [{"p": p.id, "q": q, "seq": i + 1, "u": (i * 7919 % 1000) / 1000, "g": i % 10 == 9, "t": T0}
                   for i, q in enumerate(prompt_ids)])
        regular = list(s.scalars(text("SELECT id FROM tasks WHERE project_id = :p AND is_gold = :no ORDER BY seq"),
                                 {"p": p.id, "no": False}))
        half = len(regular) // 2
        rows = [{"t": t, "l": lab, "slot": k, "st": "done", "at": T0} for t in regular[:half]
                for k, lab in enumerate(others)]
        rows += [{"t": t, "l": vet.id, "slot": 0, "st": "done", "at": T0} for t in regular[half:half + history]]
        c.execute(text("INSERT INTO assignments (task_id, labeler_id, slot, display_order, status, created_at) "
                       "VALUES (:t, :l, :slot, '[1, 2]', :st, :at)"), rows)
        assign.recount(s, p)  # the counters, as the migration fills them in an existing database
        return p.id, vet.id


def _vm_steps(db, project_id: int, labeler_id: int, calls: int = 3) -> int:
    """SQLite virtual-machine steps (in hundreds) of ``calls`` rounds of next task, submit and progress: a measure
    of the work that does not depend on the machine or its load."""
    steps = [0]

    def tick():
        steps[0] += 1
        return 0

    for _ in range(calls):
        with db.write() as s:
            raw = s.connection().connection.dbapi_connection
            raw.set_progress_handler(tick, 100)
            try:
                p, lab = s.get(Project, project_id), s.get(Labeler, labeler_id)
                a = assign.next_assignment(s, p, lab)
                add_judgment(s, a.task_id, lab, "A", assignment=a)
                assign.labeler_progress(s, p, lab)
            finally:
                raw.set_progress_handler(None, 0)
    return steps[0]


@pytest.mark.parametrize("order", ["import", "uncertainty"])
def test_next_task_work_does_not_grow_with_the_project_or_the_history(tmp_path, order):
    """The old search counted every task's assignments (and a labeler's own started tasks came first and were
    skipped one by one): its work grew with both. Now a project 20 times larger costs about what a small one costs,
    and a labeler with 1,500 judgments at most a fixed number of look-ups more."""
    db = Database(f"sqlite:///{tmp_path / 'scale.db'}")
    try:
        small = _bulk_project(db, "small", 400, history=0, order=order)
        large = _bulk_project(db, "large", 8_000, history=1_500, order=order)
        with db.write() as s:
            fresh = create_labeler(s, "fresh")
            fresh.gold_seed = "fresh"
            fresh_id = fresh.id
        base = _vm_steps(db, *small)
        vs_size = _vm_steps(db, large[0], fresh_id)
        vs_history = _vm_steps(db, *large)
    finally:
        db.dispose()
    # measured (hundreds of steps; small / large with a new labeler / large with the veteran): import 40 / 48 / 83,
    # uncertainty 45 / 52 / 114. A veteran pays a bounded extra: up to PROBES of their own started tasks per lane.
    # The old search: 1227 / 24243 / 21088 and 1245 / 24913 / 21562, growing with the project.
    assert 0 < base < 200, base
    assert vs_size < 2 * base, (base, vs_size)
    assert vs_history < 4 * base, (base, vs_history)
