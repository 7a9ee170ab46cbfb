"""Who labels what next.

Each task has ``overlap`` places (slots 0..overlap-1). Taking a place inserts an assignment row; the unique
constraints ``(task_id, slot)`` and ``(task_id, labeler_id)`` make the database refuse a second labeler in
the same place or the same labeler twice, so racing requests (PostgreSQL runs them truly in parallel) can
never double-book: the loser of a race simply tries the next place. Gold tasks are mixed in at the project's
``gold_rate`` and hold no slot (everyone may get them, once). Where they fall is random, drawn from a secret
per-labeler seed, so a labeler cannot tell a gold task by its place in the queue.

The order: tasks with more places taken first (complete items become usable data sooner), then the project's
order (import order, or least certain first). Nothing is counted per request, so "next task" takes the same time
in a project of a thousand tasks or a million, for a new labeler or one with ten thousand judgments:

- every task keeps ``places_taken`` (the assignments holding one of its places), and the queue indexes list a
  project's tasks by places taken, then in the project's order. The search walks the free places level by level
  (``overlap - 1`` places taken down to none), reading at most ``PROBES`` tasks from the start of each level and,
  where those were all seen by the labeler already, ``PROBES`` more from the labeler's cursor: the task furthest
  along the order they were handed (a labeler ahead of the others has seen the start of each level; what lies
  beyond their cursor is new to them). Whether the labeler saw a task is a lookup in the unique indexes of
  assignments and judgments, never a scan of their history.
- only when all that finds nothing does the exact search run (every free task the labeler has not seen, the old
  query): it decides "nothing left" and finds a task the probes missed, which happens near a project's end.
- counters (``Project.open_tasks``, ``LabelerProgress``) are kept as places are taken and given back, so a
  labeler's progress and gold draw read one row. Counter rows are written at the end of each operation in one
  order (projects, then labelers by id), so PostgreSQL transactions that touch the same rows never deadlock.
- on PostgreSQL every statement is a round trip, and its CPU on both back-ends is most of a request's: the
  labeler's open assignment, counters, cursors and whether a lease ran out are read in one statement
  (``_read_state``), every lane of the search in one more (``_lanes_statement``), and the first candidate that
  has a place and that no other transaction is handing out, with its places in use, in one (``_take_first``).
- ``plan_next`` finds the candidates in a read transaction; ``next_assignment`` then only checks and takes them
  inside the write transaction, and searches again only when they were taken meanwhile. The web app does this on
  SQLite, where writers go one at a time; on PostgreSQL it runs ``next_assignment`` alone, in one transaction.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from sqlalchemy import (
    Boolean,
    Integer,
    any_,
    bindparam,
    case,
    exists,
    func,
    literal,
    select,
    tuple_,
    union,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from alignloop.core.db import run
from alignloop.feedback.errors import Conflict
from alignloop.feedback.models import Assignment, Judgment, Labeler, LabelerProgress, Project, Task, utcnow

PROBES = 20  # tasks read per lane (the start of a level, or from the labeler's cursor)
HINTS = 3  # candidates found before the write transaction that it tries before searching itself
_PENDING = "alignloop.feedback.assign.pending"  # Session.info key of the counter changes not yet written

# The statements of the hot path are built once, with their values as bind parameters: on a busy CPU building a
# SQLAlchemy statement costs more than SQLite takes to run one of these index look-ups.
_once = functools.cache


# --------------------------------------------------------------------------------------------------
# Counters: changes collected during an operation, written at its end in one order
# --------------------------------------------------------------------------------------------------


@dataclass
class _Pending:
    open_tasks: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # project id -> delta
    deltas: dict[tuple[int, int], dict[str, int]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(int)))
    sets: dict[tuple[int, int], dict[str, Any]] = field(default_factory=lambda: defaultdict(dict))


def _pending(s: Session) -> _Pending:
    p = s.info.get(_PENDING)
    if p is None:
        p = s.info[_PENDING] = _Pending()
    return p


def _bump(s: Session, project_id: int, labeler_id: int, **deltas: int) -> None:
    row = _pending(s).deltas[(project_id, labeler_id)]
    for k, v in deltas.items():
        row[k] += v


def write_counts(s: Session) -> None:
    """Write the counter changes collected so far (each public operation here ends with it)."""
    p: _Pending | None = s.info.pop(_PENDING, None)
    if p is None:
        return
    for pid, d in sorted(p.open_tasks.items()):
        if d:
            s.execute(update(Project).where(Project.id == pid).values(open_tasks=Project.open_tasks + d))
    for key in sorted(set(p.deltas) | set(p.sets)):
        deltas = {k: v for k, v in p.deltas.get(key, {}).items() if v}
        sets = p.sets.get(key, {})
        if deltas or sets:
            _upsert_progress(s, key[0], key[1], deltas, sets)


def _upsert_progress(s: Session, project_id: int, labeler_id: int, deltas: dict[str, int],
                     sets: dict[str, Any]) -> None:
    table = LabelerProgress.__table__
    res = s.execute(_progress_update_statement(tuple(sorted(deltas)), tuple(sorted(sets))),
                    {"w_project_id": project_id, "w_labeler_id": labeler_id, **{f"d_{k}": v for k, v in deltas.items()},
                     **{f"s_{k}": v for k, v in sets.items()}})
    if res.rowcount:
        return
    # the labeler's first row in this project (a plain insert could lose a race with their own second request)
    dialect = s.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert
        else:
            from sqlalchemy.dialects.postgresql import insert
        ins = insert(table).values(project_id=project_id, labeler_id=labeler_id, **deltas, **sets)
        s.execute(ins.on_conflict_do_update(
            index_elements=[table.c.project_id, table.c.labeler_id],
            set_={**{k: table.c[k] + ins.excluded[k] for k in deltas}, **{k: ins.excluded[k] for k in sets}}))
    else:
        s.execute(table.insert().values(project_id=project_id, labeler_id=labeler_id, **deltas, **sets))


@_once
def _progress_update_statement(added: tuple[str, ...], set_: tuple[str, ...]) -> Any:
    """The labeler's counters ``added`` to and columns ``set_``, built once per shape (building it each time cost
    about as much as running it)."""
    table = LabelerProgress.__table__
    return (update(table).where(table.c.project_id == bindparam("w_project_id"),
                                table.c.labeler_id == bindparam("w_labeler_id"))
            .values(**{k: table.c[k] + bindparam(f"d_{k}") for k in added}, **{k: bindparam(f"s_{k}") for k in set_}))


def _seen_by(s: Session, task_id: int) -> set[int]:
    """Everyone who has seen the task: an assignment (any status) or a judgment (judges and imports have none)."""
    q = union(select(Assignment.labeler_id).where(Assignment.task_id == task_id),
              select(Judgment.labeler_id).where(Judgment.task_id == task_id))
    return set(s.scalars(select(q.subquery().c[0])))


def _places_changed(s: Session, project: Project, task_id: int, before: int, after: int) -> None:
    """A regular task's places taken went from ``before`` to ``after``: when it filled up or got a free place
    again, the project's open tasks and the "seen and still open" count of everyone who saw it follow."""
    was_open, is_open = before < project.overlap, after < project.overlap
    if was_open == is_open:
        return
    d = 1 if is_open else -1
    _pending(s).open_tasks[project.id] += d
    for lab in _seen_by(s, task_id):
        _bump(s, project.id, lab, seen_open=d)


@_once
def _add_places_statement() -> Any:
    return (update(Task).where(Task.id == bindparam("task_id")).values(places_taken=Task.places_taken + bindparam("d"))
            .returning(Task.places_taken))


def _add_places(s: Session, task_id: int, d: int) -> int:
    """Add ``d`` to the task's places taken; returns the new value (the row is locked until commit)."""
    return run(s, _add_places_statement(), {"task_id": task_id, "d": d}).scalar_one()


def release_place(s: Session, project: Project, assignment: Assignment) -> bool:
    """Give the assignment's place back (a skip); False when it held none (gold, or its lease ran out meanwhile)."""
    freed = s.execute(update(Assignment).where(Assignment.id == assignment.id, Assignment.slot.is_not(None))
                      .values(slot=None).returning(Assignment.task_id)
                      .execution_options(synchronize_session="fetch")).first()
    if freed is not None:
        after = _add_places(s, freed.task_id, -1)
        _places_changed(s, project, freed.task_id, after + 1, after)
    write_counts(s)
    return freed is not None


def judgment_added(s: Session, project: Project, task: Task, labeler: Labeler, assignment: Assignment | None) -> None:
    """Count a new judgment (``queries.add_judgment`` calls this). One made without an assignment (judges,
    imports, served-model feedback) is the first time its labeler sees the task, unless they hold an assignment."""
    _bump(s, project.id, labeler.id, judgments=1)
    if assignment is None and not task.is_gold and s.scalar(select(Assignment.id).where(
            Assignment.task_id == task.id, Assignment.labeler_id == labeler.id)) is None:
        q = select(Task.places_taken).where(Task.id == task.id)
        if _is_pg(s):
            # FOR NO KEY UPDATE, the lock tallies.record takes on the same row in this transaction: a FOR UPDATE here
            # would wait for the KEY SHARE locks of the other judgments being inserted (a deadlock between two submits)
            q = q.with_for_update(key_share=True)  # a labeler taking its last place waits, then counts this one in
        if s.scalar(q) < project.overlap:
            _bump(s, project.id, labeler.id, seen_open=1)
    write_counts(s)


def count_new_tasks(s: Session, project: Project) -> int:
    """Add the tasks inserted since the last call to the project's counters; returns how many were new. Imports
    call it once after inserting their tasks (plain inserts are right as they are: ``places_taken`` defaults to
    0). It counts the tasks whose ``seq`` is above the highest one counted before, so calling it twice is safe."""
    s.flush()
    q = select(Project.counted_seq).where(Project.id == project.id)
    if _is_pg(s):
        q = q.with_for_update()  # two imports into one project count one after the other
    counted = s.scalar(q) or 0
    row = s.execute(select(func.count(Task.id), func.max(Task.seq),
                           func.sum(case((Task.is_gold.is_(False) & (Task.places_taken < project.overlap), 1),
                                         else_=0)))
                    .where(Task.project_id == project.id, Task.seq > counted)).one()
    n, top, regular_open = row[0] or 0, row[1], row[2] or 0
    if n:
        s.execute(update(Project).where(Project.id == project.id).values(
            open_tasks=Project.open_tasks + regular_open, counted_seq=top))
    return n


def recount(s: Session, project: Project) -> None:
    """Count every counter of the project again from its rows: places taken per task, the open tasks, and each
    labeler's assignments, judgments and seen open tasks. For an overlap change (which tasks have a free place
    changes for the whole project), rows written by plain SQL (a benchmark's bulk build), or a repair. Reads the
    whole project once; cursors are kept (they are hints)."""
    s.flush()
    write_counts(s)
    taken = (select(func.count(Assignment.id)).where(Assignment.task_id == Task.id, Assignment.slot.is_not(None))
             .correlate(Task).scalar_subquery())
    s.execute(update(Task).where(Task.project_id == project.id, Task.places_taken != taken)
              .values(places_taken=taken).execution_options(synchronize_session=False))
    mine = Task.project_id == project.id
    free = mine & (Task.is_gold == False) & (Task.places_taken < project.overlap)  # noqa: E712
    open_tasks = s.scalar(select(func.count(Task.id)).where(free)) or 0
    top = s.scalar(select(func.max(Task.seq)).where(mine)) or 0
    s.execute(update(Project).where(Project.id == project.id).values(open_tasks=open_tasks, counted_seq=top))

    def per_labeler(q: Any) -> dict[int, int]:
        sub = q.subquery()
        return dict(s.execute(select(sub.c.labeler_id, func.count()).group_by(sub.c.labeler_id)).all())

    a_rows = select(Assignment.task_id, Assignment.labeler_id).join(Task, Task.id == Assignment.task_id)
    j_rows = select(Judgment.task_id, Judgment.labeler_id).join(Task, Task.id == Judgment.task_id)
    counts = {"assignments": per_labeler(a_rows.where(mine)), "judgments": per_labeler(j_rows.where(mine)),
              "seen_open": per_labeler(union(a_rows.where(free), j_rows.where(free)))}
    s.execute(update(LabelerProgress).where(LabelerProgress.project_id == project.id)
              .values(assignments=0, judgments=0, seen_open=0))
    for lab in sorted(set().union(*counts.values())):
        _upsert_progress(s, project.id, lab, {}, {k: v.get(lab, 0) for k, v in counts.items()})


# --------------------------------------------------------------------------------------------------
# Leases, the open assignment, the gold draw
# --------------------------------------------------------------------------------------------------


def _is_pg(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


def last_seen() -> Any:
    """When an assignment's labeler last showed they still have it: its last heartbeat, else its start."""
    return func.coalesce(Assignment.last_seen_at, Assignment.created_at)


def release_expired(s: Session, project: Project, now: dt.datetime | None = None) -> int:
    """Open assignments not seen for longer than the lease give their place back (the labeler walked away). A
    labeler's page that is open moves ``last_seen_at`` on (``heartbeat``), so a slow but present labeler keeps
    the task. ``now`` is the clock (tests pass one; the default is the current time)."""
    cutoff = (now or utcnow()) - dt.timedelta(minutes=project.lease_minutes)
    q = (select(Assignment.id, Assignment.task_id, Assignment.slot).join(Task, Task.id == Assignment.task_id)
         .where(Assignment.status == "open", last_seen() < cutoff, Task.project_id == project.id)
         .order_by(Assignment.id))
    if _is_pg(s):
        q = q.with_for_update(of=Assignment)  # a submit or another expiry of the same lease goes first or waits
    rows = s.execute(q).all()
    if not rows:
        return 0
    s.execute(update(Assignment).where(Assignment.id.in_([r.id for r in rows]))
              .values(status="expired", slot=None).execution_options(synchronize_session="fetch"))
    for r in sorted((r for r in rows if r.slot is not None), key=lambda r: r.task_id):
        after = _add_places(s, r.task_id, -1)
        _places_changed(s, project, r.task_id, after + 1, after)
    write_counts(s)
    return len(rows)


@_once
def _open_statement() -> Any:
    return (select(Assignment).join(Task, Task.id == Assignment.task_id)
            .where(Task.project_id == bindparam("project_id"), Assignment.labeler_id == bindparam("labeler_id"),
                   Assignment.status == "open").order_by(Assignment.id).limit(1))


def heartbeat(s: Session, a: Assignment, project: Project, now: dt.datetime | None = None) -> dt.datetime:
    """The labeler still has the task open: the lease runs again from ``now``. Returns when it ends. An
    assignment that is done, skipped or expired (its place given back) is a Conflict: a late answer to an expired
    one may still be kept (``reopen_expired``)."""
    if a.status != "open":
        raise Conflict(f"this assignment is {a.status}", field="assignment_id")
    a.last_seen_at = now or utcnow()
    return a.last_seen_at + dt.timedelta(minutes=project.lease_minutes)


def reopen_expired(s: Session, a: Assignment, task: Task, project: Project, skipping: bool = False) -> None:
    """An answer arrives on an expired lease. It is kept when the task still needs votes: the assignment takes a
    free place again (gold tasks hold no place, and a skip needs none). Every place taken by others: Conflict
    (the answer is not stored)."""
    if a.status != "expired":
        return
    if task.is_gold or skipping:
        a.status = "open"
        return
    used = set(s.scalars(select(Assignment.slot).where(Assignment.task_id == task.id, Assignment.slot.is_not(None))))
    for slot in [i for i in range(project.overlap) if i not in used]:
        try:
            with s.begin_nested():  # the unique (task, slot) constraint settles a race for the last place
                a.slot, a.status = slot, "open"
                s.flush()
            after = _add_places(s, task.id, 1)  # the place is taken again: the counters follow
            _places_changed(s, project, task.id, after - 1, after)
            write_counts(s)
            return
        except IntegrityError:
            continue
    raise Conflict("your lease on this task expired and it has all its votes now; your answer was not stored",
                   field="assignment_id")


def open_assignment(s: Session, project: Project, labeler: Labeler) -> Assignment | None:
    return s.scalar(_open_statement(), {"project_id": project.id, "labeler_id": labeler.id})


@dataclass
class _State:
    """What "next task" reads of the labeler before it searches, in one statement (``_read_state``): their open
    assignment's id, their counters and cursors (``progress``: None before their first assignment here), and the
    cursors' places in the project's order (None when there is none, the task is gone, or the order changed)."""

    open_id: int | None
    progress: Any
    cursor: tuple | None
    gold_cursor: tuple | None
    expired: bool  # whether the project has an open assignment whose lease ran out (``release_expired`` is due)


@_once
def _state_statement() -> Any:
    t = LabelerProgress.__table__
    cur, gold_cur = aliased(Task), aliased(Task)
    open_id = _open_statement().with_only_columns(Assignment.id).scalar_subquery()
    expired = exists().where(Assignment.task_id == Task.id, Task.project_id == bindparam("project_id"),
                             Assignment.status == "open", last_seen() < bindparam("cutoff"))
    return (select(open_id.label("open_id"), expired.label("expired"), t.c.assignments, t.c.judgments,
                   t.c.seen_open, t.c.cursor_task_id, t.c.cursor_order, t.c.gold_cursor_task_id,
                   cur.uncertainty_rank.label("cursor_rank"), cur.seq.label("cursor_seq"), cur.id.label("cursor_id"),
                   gold_cur.seq.label("gold_seq"), gold_cur.id.label("gold_id"))
            .select_from(Project)
            .outerjoin(t, (t.c.project_id == Project.id) & (t.c.labeler_id == bindparam("labeler_id")))
            .outerjoin(cur, cur.id == t.c.cursor_task_id)
            .outerjoin(gold_cur, gold_cur.id == t.c.gold_cursor_task_id)
            .where(Project.id == bindparam("project_id")))


def _read_state(s: Session, project: Project, labeler: Labeler, now: dt.datetime | None = None) -> _State:
    cutoff = (now or utcnow()) - dt.timedelta(minutes=project.lease_minutes)
    row = run(s, _state_statement(), {"project_id": project.id, "labeler_id": labeler.id, "cutoff": cutoff}).one()
    progress = row if row.assignments is not None else None
    cursor = None
    if row.cursor_id is not None and row.cursor_order == project.order:
        cursor = (row.cursor_rank, row.cursor_seq, row.cursor_id) if project.order == "uncertainty" else \
            (row.cursor_seq, row.cursor_id)
    gold_cursor = (row.gold_seq, row.gold_id) if row.gold_id is not None else None
    return _State(row.open_id, progress, cursor, gold_cursor, bool(row.expired))


@_once
def _progress_statement() -> Any:
    t = LabelerProgress.__table__
    return select(t.c.assignments, t.c.judgments, t.c.seen_open, t.c.cursor_task_id, t.c.cursor_order,
                  t.c.gold_cursor_task_id).where(t.c.project_id == bindparam("project_id"),
                                                 t.c.labeler_id == bindparam("labeler_id"))


def _progress_row(s: Session, project: Project, labeler: Labeler) -> Any:
    return s.execute(_progress_statement(), {"project_id": project.id, "labeler_id": labeler.id}).first()


def gold_turn(s: Session, project: Project, labeler: Labeler, progress: Any = False) -> bool:
    """Whether the labeler's next assignment in ``project`` is a gold task: a draw at ``gold_rate`` from a
    generator seeded by the labeler's secret seed, the project and how many assignments they had there. (A
    fixed schedule, every 1/rate-th task, let labelers spot gold tasks and answer only those with care.)"""
    if project.gold_rate <= 0:
        return False
    if not labeler.gold_seed:  # made on first use, written with the assignment this call hands out
        row = s.get(Labeler, labeler.id)  # (``labeler`` may come from another, closed session)
        row.gold_seed = row.gold_seed or secrets.token_hex(16)
        labeler.gold_seed = row.gold_seed
    if progress is False:  # (not read by the caller yet)
        progress = _progress_row(s, project, labeler)
    n = progress.assignments if progress is not None else 0
    return random.Random(f"{labeler.gold_seed}:{project.id}:{n}").random() < project.gold_rate


# --------------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------------


def _order_columns(project: Project, gold: bool) -> tuple:
    """The columns of the project's order (gold tasks always come in import order)."""
    if project.order == "uncertainty" and not gold:
        return Task.uncertainty_rank, Task.seq, Task.id
    return Task.seq, Task.id


def _seen_clause(task_id: Any, labeler_id: Any) -> Any:
    return exists().where(Assignment.task_id == task_id, Assignment.labeler_id == labeler_id) | \
        exists().where(Judgment.task_id == task_id, Judgment.labeler_id == labeler_id)


@_once
def _lanes_statement(uncertainty: bool, levels: tuple[int, ...], cursor: bool) -> Any:
    """Every lane of a search in one statement, built once per shape: for each level (places taken), up to
    ``probes`` tasks from its start and, with a cursor, up to ``probes`` after the cursor's key; in the order the
    search reads them (level by level, the start before the cursor's lane, the project's order), each with whether
    the labeler has seen it. (One lane a statement cost a round trip each on PostgreSQL.)"""
    cols = (Task.uncertainty_rank, Task.seq, Task.id) if uncertainty else (Task.seq, Task.id)
    members = []
    for level in levels:
        for lane in (0, 1) if cursor else (0,):
            inner = select(*cols).where(Task.project_id == bindparam("project_id"),
                                        Task.is_gold == bindparam("gold", type_=Boolean), Task.places_taken == level)
            if lane:
                inner = inner.where(tuple_(*cols) > tuple_(*[bindparam(f"after{i}") for i in range(len(cols))]))
            sub = inner.order_by(*cols).limit(bindparam("probes")).subquery()
            members.append(select(*[sub.c[c.key] for c in cols], literal(level).label("level"),
                                  literal(lane).label("lane"),
                                  _seen_clause(sub.c.id, bindparam("labeler_id")).label("seen")))
    u = union_all(*members)
    by = u.selected_columns
    return u.order_by(by.level.desc(), by.lane, *[by[c.key] for c in cols])


def _search(s: Session, project: Project, labeler: Labeler, gold: bool, state: _State) -> list[tuple[int, tuple]]:
    """(id, key in the project's order) of tasks the labeler may take next, best first (at most PROBES); empty when
    nothing is left. Reads the start of each level and, where those were all seen, the tasks after the labeler's
    cursor; the exact search only when that finds nothing (its keys are None).

    The unseen tasks of every lane come, in the search's order, not only those of the best lane: under load the
    best lane often holds one or two unseen tasks that others are taking at that moment, and a search that offered
    only those told a labeler "nothing left" with hundreds of tasks free (1 run in 8 of four labelers on two
    PostgreSQL server processes, test_workers)."""
    cursor = state.gold_cursor if gold else state.cursor
    levels = (0,) if gold else tuple(range(project.overlap - 1, -1, -1))
    uncertainty = project.order == "uncertainty" and not gold
    params = {"project_id": project.id, "gold": gold, "probes": PROBES, "labeler_id": labeler.id,
              **{f"after{i}": v for i, v in enumerate(cursor or ())}}
    lanes: dict[tuple[int, int], list] = defaultdict(list)
    for row in run(s, _lanes_statement(uncertainty, levels, cursor is not None), params):
        lanes[(row.level, row.lane)].append(row)
    width = 3 if uncertainty else 2
    found: dict[int, tuple] = {}  # (a task in both lanes of a level keeps its first place: the same key)
    for level in levels:
        for lane in (0, 1):
            rows = lanes[(level, lane)]
            found.update((r.id, tuple(r[:width])) for r in rows if not r.seen)
            if lane == 0 and len(rows) < PROBES:  # the level ends before the cursor's lane would start
                break
    if found:
        return list(found.items())[:PROBES]
    return [(task_id, None) for task_id in _exact(s, project, labeler, gold)]


def _exact(s: Session, project: Project, labeler: Labeler, gold: bool) -> list[int]:
    """Every free task the labeler has not seen, in order (reads all free tasks: only when the lanes found none)."""
    q = select(Task.id).where(Task.project_id == project.id, Task.is_gold == gold, ~_seen_clause(Task.id, labeler.id))
    if not gold:
        q = q.where(Task.places_taken < project.overlap)
    return list(s.scalars(q.order_by(Task.places_taken.desc(), *_order_columns(project, gold)).limit(PROBES)))


@_once
def _key_statement(uncertainty: bool) -> Any:
    cols = (Task.uncertainty_rank, Task.seq, Task.id) if uncertainty else (Task.seq, Task.id)
    return select(*cols).where(Task.id == bindparam("task_id"))


def _key(s: Session, project: Project, task_id: int, gold: bool) -> tuple | None:
    """The task's place in the project's order, as a tuple that compares like the order."""
    statement = _key_statement(project.order == "uncertainty" and not gold)
    row = s.execute(statement, {"task_id": task_id}).first()
    return tuple(row) if row is not None else None


def candidates(s: Session, project: Project, labeler: Labeler, gold: bool) -> list[int]:
    """Ids of tasks the labeler may take next, best first (at most PROBES); empty when nothing is left."""
    return [task_id for task_id, _ in _search(s, project, labeler, gold, _read_state(s, project, labeler))]


# --------------------------------------------------------------------------------------------------
# Taking a place
# --------------------------------------------------------------------------------------------------


def _take(s: Session, task_id: int, labeler: Labeler, project: Project, now: dt.datetime,
          wait: bool = False, checked: bool = False) -> Assignment | None:
    """``checked``: the task was found unseen by the labeler in this transaction (else it is checked again)."""
    if not _is_pg(s):
        return _take_place(s, task_id, labeler, project, now, None, checked)  # SQLite runs one writer at a time
    # the classic queue pattern: while another labeler's transaction is taking a place in this task, move on to
    # the next one instead of racing for the same place (a lost unique-key race on PostgreSQL waits for the
    # winner's commit, which piles up under load). The row lock is taken inside a savepoint that is rolled back
    # when no place was taken: PostgreSQL then releases the lock at once. Without that, a transaction kept the
    # locks of every full task it had looked at, and two labelers whose last tries wait for busy tasks could
    # each wait for a lock the other kept: a deadlock (seen in test_concurrent_labelers_never_share_a_place).
    return _in_savepoint(s, lambda: _take_place(s, task_id, labeler, project, now, "wait" if wait else "skip",
                                                checked))


def _in_savepoint(s: Session, take: Callable[[], Assignment | None]) -> Assignment | None:
    """PostgreSQL: ``take()`` inside a savepoint, rolled back when it took no place, which releases at once the row
    locks it took (see ``_take``)."""
    savepoint = s.begin_nested()
    try:
        a = take()
    except IntegrityError:  # (the task row is locked: only this labeler's own second request gets here)
        a = None
    if a is None:
        savepoint.rollback()
    else:
        savepoint.commit()
    return a


def _take_first(s: Session, found: list[tuple[int, tuple | None]], labeler: Labeler, project: Project,
                now: dt.datetime) -> tuple[Assignment, tuple | None] | None:
    """PostgreSQL: a place in the first of the ``found`` tasks (unseen by the labeler in this transaction) that
    has one and that no other transaction is handing out, with its key; None when every one is full or busy.

    The queue pattern in one statement: the candidates that still have a place, in the search's order, row-locked
    with SKIP LOCKED, LIMIT 1. Under load most labelers ask for the same head of the queue, and trying the
    candidates one at a time (a savepoint, a locking read and a rollback each) failed two tries in three with 16
    labelers at once (benchmarks/README.md). The savepoint stays around the one try: rolled back when nothing was
    taken, it releases any row the statement locked (a transaction that kept such locks could deadlock later
    with another one's waiting tries, see ``_take``)."""
    keys = dict(found)

    def take() -> Assignment | None:
        row = run(s, _first_free_statement(), {"ids": list(keys), "overlap": project.overlap}).first()
        return _place(s, row, labeler, project, now) if row is not None else None

    a = _in_savepoint(s, take)
    return (a, keys[a.task_id]) if a is not None else None


@_once
def _first_free_statement() -> Any:
    ids = bindparam("ids", type_=postgresql.ARRAY(Integer))
    used = (select(func.array_agg(Assignment.slot)).where(Assignment.task_id == Task.id, Assignment.slot.is_not(None))
            .scalar_subquery())
    return (select(Task.id, Task.is_gold, Task.places_taken, Task.completion_ids, used.label("used"))
            .where(Task.id == any_(ids), Task.is_gold | (Task.places_taken < bindparam("overlap")))
            .order_by(func.array_position(ids, Task.id)).limit(1)
            .with_for_update(of=Task, skip_locked=True))


@_once
def _take_statements(lock: str | None) -> Any:
    # the task with its places in use (a row per place; one row with slot None when none is): one round trip
    # and whether the labeler has seen it
    held = aliased(Assignment)  # (an alias: the "seen" test's own look-up of assignments must not correlate)
    task = (select(Task.id, Task.is_gold, Task.places_taken, Task.completion_ids, held.slot,
                   _seen_clause(Task.id, bindparam("labeler_id")).label("seen"))
            .outerjoin(held, (held.task_id == Task.id) & held.slot.is_not(None))
            .where(Task.id == bindparam("task_id")))
    if lock is not None:
        task = task.with_for_update(of=Task, skip_locked=lock == "skip")
    return task


def _take_place(s: Session, task_id: int, labeler: Labeler, project: Project, now: dt.datetime,
                lock: str | None, checked: bool) -> Assignment | None:
    """Insert the labeler's assignment in the first free place of the task (None when none is left for them)."""
    rows = run(s, _take_statements(lock), {"task_id": task_id, "labeler_id": labeler.id}).all()
    task = rows[0] if rows else None
    if task is None or (not task.is_gold and task.places_taken >= project.overlap):
        return None
    if not checked and task.seen:
        return None
    return _place(s, task, labeler, project, now, {r.slot for r in rows}, locked=lock is not None)


def _place(s: Session, task: Any, labeler: Labeler, project: Project, now: dt.datetime, used: set | None = None,
           locked: bool = True) -> Assignment | None:
    """Insert the labeler's assignment in the first free place of ``task`` (a row: id, is_gold, places_taken,
    completion_ids and, when ``used`` is None, ``used``: the slots in use). ``locked``: the task's row is locked
    by this transaction (PostgreSQL), so no other labeler can take the place meanwhile."""
    if used is None:
        used = set(task.used or ())
    order = list(task.completion_ids)
    random.shuffle(order)  # left/right (and list) order randomised per task and stored with the assignment
    if task.is_gold:
        slots: list[int | None] = [None]
    else:
        slots = [i for i in range(project.overlap) if i not in used]
    for slot in slots:
        a = Assignment(task_id=task.id, labeler_id=labeler.id, slot=slot, display_order=order, created_at=now,
                       last_seen_at=now)  # (the lease runs from the same clock as created_at)
        if locked:  # PostgreSQL: the task's row lock keeps others out; the caller's savepoint catches the rest
            s.add(a)
            s.flush()
        else:
            try:
                with s.begin_nested():
                    s.add(a)
                    s.flush()
            except IntegrityError:
                # another labeler took this place a moment ago, or this labeler already has the task
                if s.scalar(select(Assignment.id).where(Assignment.task_id == task.id,
                                                        Assignment.labeler_id == labeler.id)):
                    return None
                continue
        _bump(s, project.id, labeler.id, assignments=1)
        if not task.is_gold:
            after = _add_places(s, task.id, 1)
            if after - 1 < project.overlap:  # the labeler now has seen a task that had a free place
                _bump(s, project.id, labeler.id, seen_open=1)
            _places_changed(s, project, task.id, after - 1, after)
        return a
    return None


def _move_cursor(s: Session, project: Project, labeler: Labeler, task_id: int, gold: bool, state: _State,
                 key: tuple | None) -> None:
    """The labeler's cursor moves to the task when it lies further along the order than the cursor. ``key``: the
    task's place in the order when the search read it (else it is read here)."""
    name = "gold_cursor_task_id" if gold else "cursor_task_id"
    cursor = state.gold_cursor if gold else state.cursor
    if key is None:
        key = _key(s, project, task_id, gold)
    if cursor is None or key is None or key > cursor:
        sets = _pending(s).sets[(project.id, labeler.id)]
        sets[name] = task_id
        if not gold:
            sets["cursor_order"] = project.order


# --------------------------------------------------------------------------------------------------
# Next task
# --------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    """What a read transaction found before the write: the labeler's open assignment (not expired), or the kind
    of task due and a few candidates of it."""

    current: Assignment | None = None
    gold: bool | None = None
    candidates: list[int] = field(default_factory=list)
    keys: dict[int, tuple | None] = field(default_factory=dict)  # the candidates' places in the project's order


def plan_next(s: Session, project: Project, labeler: Labeler, now: dt.datetime | None = None) -> Plan:
    """The search for the labeler's next task, in a read transaction (outside SQLite's one write lock)."""
    now = now or utcnow()
    state = _read_state(s, project, labeler, now)
    current = s.get(Assignment, state.open_id) if state.open_id is not None else None
    if current is not None and (current.last_seen_at or current.created_at) >= \
            now - dt.timedelta(minutes=project.lease_minutes):
        return Plan(current=current)
    gold = bool(labeler.gold_seed) and gold_turn(s, project, labeler, state.progress)
    found = _search(s, project, labeler, gold, state)[:HINTS]
    return Plan(gold=gold, candidates=[task_id for task_id, _ in found], keys=dict(found))


def next_assignment(s: Session, project: Project, labeler: Labeler, now: dt.datetime | None = None,
                    plan: Plan | None = None) -> Assignment | None:
    """The labeler's open assignment, or a new one; None when nothing is left for them. ``plan`` (from
    ``plan_next``) names candidates to try first; ``now`` is the clock."""
    now = now or utcnow()
    state = _read_state(s, project, labeler, now)  # (only this labeler's own requests change it)
    if state.expired and release_expired(s, project, now):  # (the state says when: a statement less per request)
        plan = None  # places came free since the plan was made: they may come first
        state = _read_state(s, project, labeler, now)
    if state.open_id is not None:
        return s.get(Assignment, state.open_id)
    kinds = [True, False] if gold_turn(s, project, labeler, state.progress) else [False, True]
    for gold in kinds:
        if gold and project.gold_rate <= 0:
            continue
        if plan is not None and plan.gold == gold:
            for task_id in plan.candidates:
                a = _take(s, task_id, labeler, project, now)
                if a is not None:
                    return _handed_out(s, project, labeler, a, gold, state, plan.keys.get(task_id))
        for attempt in range(5):  # lost races search again
            found = _search(s, project, labeler, gold, state)
            if not found:
                break
            if attempt < 3 and _is_pg(s):  # PostgreSQL's first tries skip busy tasks, all in one statement
                taken = _take_first(s, found, labeler, project, now)
                if taken is not None:
                    return _handed_out(s, project, labeler, taken[0], gold, state, taken[1])
                continue
            for task_id, key in found:
                # SQLite: every try (one writer at a time, nothing is busy). PostgreSQL: the last tries wait for
                # busy tasks rather than skip them, so a labeler is never told "nothing left" only because every
                # remaining task was being handed out at that moment
                a = _take(s, task_id, labeler, project, now, wait=True, checked=True)
                if a is not None:
                    return _handed_out(s, project, labeler, a, gold, state, key)
    write_counts(s)
    return None


def _handed_out(s: Session, project: Project, labeler: Labeler, a: Assignment, gold: bool, state: _State,
                key: tuple | None) -> Assignment:
    _move_cursor(s, project, labeler, a.task_id, gold, state, key)
    write_counts(s)
    return a


def warm_up(s: Session, projects: list[Project]) -> None:
    """Run the next task's reads once for the shape of each of ``projects`` (overlap, order, gold; a search from the
    start of the queue and one from a cursor), as a labeler who does not exist, so it changes nothing: SQLAlchemy
    compiles the statements in this process, and PostgreSQL loads the tables' and indexes' descriptions in this
    connection. Done by each server process as it starts (``web.assignments.warm_up``); a cold process took 100 to
    250 ms over a warm one's 15 for its first next task, and a freshly started server under 50 judgments a second
    had next-task p99s of 330 ms against 36 warm (benchmarks/README.md)."""
    nobody = _Nobody()
    for project in projects:
        _read_state(s, project, nobody)  # type: ignore[arg-type]
        width = 3 if project.order == "uncertainty" else 2
        for gold in (False, True) if project.gold_rate > 0 else (False,):
            for cursor in (None, (0,) * (2 if gold else width)):  # (gold tasks come in import order)
                _search(s, project, nobody, gold, _State(None, None, cursor, cursor, False))  # type: ignore[arg-type]
        labeler_progress(s, project, nobody)  # type: ignore[arg-type]
        if _is_pg(s):
            run(s, _first_free_statement(), {"ids": [], "overlap": project.overlap}).all()


@dataclass
class _Nobody:
    """A labeler who does not exist (id 0): what ``warm_up`` searches as."""

    id: int = 0
    gold_seed: str = "warm-up"


# --------------------------------------------------------------------------------------------------
# What leads and labelers see
# --------------------------------------------------------------------------------------------------


def queue(s: Session, project: Project, limit: int = 50) -> list[dict]:
    """The next tasks in assignment order with how many places are taken: the lead's view of the queue."""
    rows: list[Any] = []
    for level in range(project.overlap - 1, -1, -1):
        if len(rows) >= limit:
            break
        rows += s.execute(select(Task.id, Task.seq, Task.uncertainty, Task.places_taken)
                          .where(Task.project_id == project.id, Task.is_gold == False,  # noqa: E712 (indexable)
                                 Task.places_taken == level)
                          .order_by(*_order_columns(project, False)).limit(limit - len(rows))).all()
    ids = [r.id for r in rows]
    done = dict(s.execute(select(Assignment.task_id, func.count(Assignment.id))
                          .where(Assignment.task_id.in_(ids), Assignment.status == "done")
                          .group_by(Assignment.task_id)).all()) if ids else {}
    return [{"task_id": r.id, "seq": r.seq, "uncertainty": r.uncertainty, "places_taken": r.places_taken,
             "judged": done.get(r.id, 0), "overlap": project.overlap} for r in rows]


def labeler_progress(s: Session, project: Project, labeler: Labeler) -> dict:
    """What a labeler sees: how many they did (skips included) and how many are still open to them (regular tasks
    with a free place they have not seen, plus their open assignments). Read from counters, not counted."""
    row = run(s, _progress_statements(), {"project_id": project.id, "labeler_id": labeler.id}).one()
    return {"done": row.done or 0, "available": (row.open_tasks or 0) - (row.seen_open or 0) + (row.current or 0)}


@_once
def _progress_statements() -> Any:
    """One round trip: the project's open tasks, the labeler's counters and their open assignments."""
    mine = (LabelerProgress.project_id == bindparam("project_id")) & \
        (LabelerProgress.labeler_id == bindparam("labeler_id"))
    return select(
        select(Project.open_tasks).where(Project.id == bindparam("project_id")).scalar_subquery().label("open_tasks"),
        select(LabelerProgress.judgments).where(mine).scalar_subquery().label("done"),
        select(LabelerProgress.seen_open).where(mine).scalar_subquery().label("seen_open"),
        select(func.count(Assignment.id)).join(Task, Task.id == Assignment.task_id).where(
            Task.project_id == bindparam("project_id"), Assignment.labeler_id == bindparam("labeler_id"),
            Assignment.status == "open").scalar_subquery().label("current"))
