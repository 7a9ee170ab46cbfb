"""Who labels what next.

Each task has ``overlap`` places (slots 0..overlap-1). Taking a place inserts an assignment row; the unique
constraints ``(task_id, slot)`` and ``(task_id, labeler_id)`` make the database refuse a second labeler in
the same place or the same labeler twice, so racing requests (PostgreSQL runs them truly in parallel) can
never double-book: the loser of a race simply tries the next place. Gold tasks are mixed in at the project's
``gold_rate`` and hold no slot (everyone may get them, once). Where they fall is random, drawn from a secret
per-labeler seed, so a labeler cannot tell a gold task by its place in the queue.
"""

from __future__ import annotations

import datetime as dt
import random
import secrets

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback.errors import Conflict
from alignloop.feedback.models import Assignment, Judgment, Labeler, Project, Task, utcnow

CANDIDATES = 20  # tasks looked at per attempt; more only matters under heavy contention


def release_expired(s: Session, project: Project, now: dt.datetime | None = None) -> int:
    """Open assignments not seen for longer than the lease give their place back (the labeler walked away). A
    labeler's page that is open moves ``last_seen_at`` on (``heartbeat``), so a slow but present labeler keeps
    the task."""
    cutoff = (now or utcnow()) - dt.timedelta(minutes=project.lease_minutes)
    task_ids = select(Task.id).where(Task.project_id == project.id).scalar_subquery()
    seen = func.coalesce(Assignment.last_seen_at, Assignment.created_at)
    res = s.execute(update(Assignment).where(Assignment.status == "open", seen < cutoff,
                                             Assignment.task_id.in_(task_ids))
                    .values(status="expired", slot=None).execution_options(synchronize_session="fetch"))
    return res.rowcount or 0


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
            return
        except IntegrityError:
            continue
    raise Conflict("your lease on this task expired and it has all its votes now; your answer was not stored",
                   field="assignment_id")


def open_assignment(s: Session, project: Project, labeler: Labeler) -> Assignment | None:
    return s.scalar(select(Assignment).join(Task, Task.id == Assignment.task_id)
                    .where(Task.project_id == project.id, Assignment.labeler_id == labeler.id,
                           Assignment.status == "open").order_by(Assignment.id).limit(1))


def gold_turn(s: Session, project: Project, labeler: Labeler) -> bool:
    """Whether the labeler's next assignment in ``project`` is a gold task: a draw at ``gold_rate`` from a
    generator seeded by the labeler's secret seed, the project and how many assignments they had there. (A
    fixed schedule, every 1/rate-th task, let labelers spot gold tasks and answer only those with care.)"""
    if project.gold_rate <= 0:
        return False
    if not labeler.gold_seed:  # made on first use, written with the assignment this call hands out
        row = s.get(Labeler, labeler.id)  # (``labeler`` may come from another, closed session)
        row.gold_seed = row.gold_seed or secrets.token_hex(16)
        labeler.gold_seed = row.gold_seed
    n = s.scalar(select(func.count(Assignment.id)).join(Task, Task.id == Assignment.task_id)
                 .where(Task.project_id == project.id, Assignment.labeler_id == labeler.id)) or 0
    return random.Random(f"{labeler.gold_seed}:{project.id}:{n}").random() < project.gold_rate


def _not_seen_by(labeler: Labeler):
    return ~exists().where(Assignment.task_id == Task.id, Assignment.labeler_id == labeler.id)


def _candidates(s: Session, project: Project, labeler: Labeler, gold: bool) -> list[Task]:
    q = select(Task).where(Task.project_id == project.id, Task.is_gold.is_(gold), _not_seen_by(labeler),
                           # judges write judgments without assignments; don't hand a human their own task twice
                           ~exists().where(Judgment.task_id == Task.id, Judgment.labeler_id == labeler.id))
    if not gold:
        taken = (select(func.count(Assignment.id))
                 .where(Assignment.task_id == Task.id, Assignment.slot.is_not(None)).scalar_subquery())
        q = q.where(taken < project.overlap)
        # finish tasks that others started first (complete items become usable data sooner), then the
        # project's order: least certain first for active learning, else import order
        order = [taken.desc()]
        if project.order == "uncertainty":
            order += [Task.uncertainty.is_(None), Task.uncertainty.desc()]
        q = q.order_by(*order, Task.seq, Task.id)
    else:
        q = q.order_by(Task.seq, Task.id)
    return list(s.scalars(q.limit(CANDIDATES)))


def _take(s: Session, task: Task, labeler: Labeler, project: Project, wait: bool = False) -> Assignment | None:
    if s.get_bind().dialect.name != "postgresql":
        return _take_place(s, task, labeler, project)  # SQLite runs one writer at a time anyway
    # the classic queue pattern: while another labeler's transaction is taking a place in this task, move on to
    # the next one instead of racing for the same place (a lost unique-key race on PostgreSQL waits for the
    # winner's commit, which piles up under load). The row lock is taken inside a savepoint that is rolled back
    # when no place was taken: PostgreSQL then releases the lock at once. Without that, a transaction kept the
    # locks of every full task it had looked at, and two labelers whose last tries wait for busy tasks could
    # each wait for a lock the other kept: a deadlock (seen in test_concurrent_labelers_never_share_a_place).
    savepoint = s.begin_nested()
    locked = s.scalar(select(Task.id).where(Task.id == task.id).with_for_update(skip_locked=not wait))
    a = _take_place(s, task, labeler, project) if locked is not None else None
    if a is None:
        savepoint.rollback()
    else:
        savepoint.commit()
    return a


def _take_place(s: Session, task: Task, labeler: Labeler, project: Project) -> Assignment | None:
    """Insert the labeler's assignment in the first free place of ``task`` (None when none is left)."""
    order = list(task.completion_ids)
    random.shuffle(order)  # left/right (and list) order randomised per task and stored with the assignment
    if task.is_gold:
        slots: list[int | None] = [None]
    else:
        used = set(s.scalars(select(Assignment.slot).where(Assignment.task_id == task.id,
                                                           Assignment.slot.is_not(None))))
        slots = [i for i in range(project.overlap) if i not in used]
    for slot in slots:
        a = Assignment(task_id=task.id, labeler_id=labeler.id, slot=slot, display_order=order)
        try:
            with s.begin_nested():
                s.add(a)
                s.flush()
            return a
        except IntegrityError:
            # another labeler took this place a moment ago, or this labeler already has the task
            if s.scalar(select(Assignment.id).where(Assignment.task_id == task.id,
                                                    Assignment.labeler_id == labeler.id)):
                return None
    return None


def next_assignment(s: Session, project: Project, labeler: Labeler, now: dt.datetime | None = None
                    ) -> Assignment | None:
    """The labeler's open assignment, or a new one; None when nothing is left for them. ``now``: the clock of
    the leases (default: the current time)."""
    release_expired(s, project, now)
    current = open_assignment(s, project, labeler)
    if current is not None:
        return current
    kinds = [True, False] if gold_turn(s, project, labeler) else [False, True]
    for gold in kinds:
        if gold and project.gold_rate <= 0:
            continue
        for attempt in range(5):  # lost races re-read the candidates
            tasks = _candidates(s, project, labeler, gold)
            if not tasks:
                break
            for task in tasks:
                # the last tries wait for busy tasks rather than skip them, so a labeler is never told
                # "nothing left" only because every remaining task was being handed out at that moment
                a = _take(s, task, labeler, project, wait=attempt >= 3)
                if a is not None:
                    return a
    return None


def queue(s: Session, project: Project, limit: int = 50) -> list[dict]:
    """The next tasks in assignment order with how many places are taken: the lead's view of the queue."""
    taken = (select(func.count(Assignment.id))
             .where(Assignment.task_id == Task.id, Assignment.slot.is_not(None)).scalar_subquery())
    done = (select(func.count(Assignment.id))
            .where(Assignment.task_id == Task.id, Assignment.status == "done").scalar_subquery())
    order = [taken.desc()]
    if project.order == "uncertainty":
        order += [Task.uncertainty.is_(None), Task.uncertainty.desc()]
    q = (select(Task.id, Task.seq, Task.uncertainty, taken.label("taken"), done.label("done"))
         .where(Task.project_id == project.id, Task.is_gold.is_(False), taken < project.overlap)
         .order_by(*order, Task.seq, Task.id).limit(limit))
    return [{"task_id": r.id, "seq": r.seq, "uncertainty": r.uncertainty, "places_taken": r.taken,
             "judged": r.done, "overlap": project.overlap} for r in s.execute(q)]


def labeler_progress(s: Session, project: Project, labeler: Labeler) -> dict:
    """What a labeler sees: how many they did and roughly how many are still open to them."""
    done = s.scalar(select(func.count(Judgment.id)).join(Task, Task.id == Judgment.task_id)
                    .where(Task.project_id == project.id, Judgment.labeler_id == labeler.id)) or 0
    taken = (select(func.count(Assignment.id))
             .where(Assignment.task_id == Task.id, Assignment.slot.is_not(None)).scalar_subquery())
    left = s.scalar(select(func.count(Task.id)).where(
        Task.project_id == project.id, Task.is_gold.is_(False), _not_seen_by(labeler),
        taken < project.overlap)) or 0
    current = s.scalar(select(func.count(Assignment.id)).join(Task, Task.id == Assignment.task_id).where(
        Task.project_id == project.id, Assignment.labeler_id == labeler.id, Assignment.status == "open")) or 0
    return {"done": done, "available": left + current}
