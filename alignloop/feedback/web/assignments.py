"""Labeling: the next task for the labeler, an assignment, and submitting a judgment on it.

In this API a pairwise choice ``A``/``B`` means the completion shown first/second to that labeler (left/right);
the server maps it to the task's canonical order with the assignment's stored display order.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from typing import Annotated, Optional

from fastapi import APIRouter, Header, Response
from sqlalchemy import Select, bindparam, select
from sqlalchemy.orm import Session

from alignloop.feedback import access, assign
from alignloop.feedback.models import Assignment, Database, Membership, Project, Task
from alignloop.feedback.queries import add_judgment
from alignloop.feedback.web.deps import CurrentLabeler, DbDep, HTTPProblem, Now, Principal, ReadSession, RowId
from alignloop.feedback.web.schemas import JudgmentIn
from alignloop.feedback.web.views import assignment_view

router = APIRouter(prefix="/api")


@router.post("/projects/{name}/next")
def next_task(name: str, who: CurrentLabeler, db: DbDep, now: Now) -> dict:
    # POST, not GET: it creates an assignment, and a GET could be set off from another site (an <img> tag)
    return next_for(db, name, who, now)


@router.get("/assignments/{assignment_id}")
def show_assignment(assignment_id: RowId, who: CurrentLabeler, s: ReadSession) -> dict:
    a = own_assignment(s, assignment_id, who)
    task = s.get(Task, a.task_id)
    return assignment_view(s, a, s.get(Project, task.project_id))


@router.post("/assignments/{assignment_id}/judgment")
def submit(assignment_id: RowId, body: JudgmentIn, who: CurrentLabeler, db: DbDep, response: Response,
           idempotency_key: Annotated[Optional[str], Header(max_length=100)] = None) -> dict:
    out = submit_judgment(db, assignment_id, who, body, idempotency_key or body.idempotency_key)
    response.status_code = 201 if out["created"] else 200
    return out


@router.post("/assignments/{assignment_id}/heartbeat")
def heartbeat(assignment_id: int, who: CurrentLabeler, db: DbDep, now: Now) -> dict:
    """The labeler's page still shows this task (and they used it lately): the lease runs again from now. 409 when
    the assignment is no longer open (an expired one may still take a late answer while the task needs votes)."""
    with db.write() as s:
        a = own_assignment(s, assignment_id, who, expired_ok=True)
        until = assign.heartbeat(s, a, s.get(Project, s.get(Task, a.task_id).project_id), now)
        return {"assignment_id": a.id, "status": a.status, "lease_until": until.isoformat() + "Z"}


def next_for(db: Database, name: str, who: Principal, now: dt.datetime | None = None) -> dict:
    """Hand the labeler their open assignment or a new one, with their progress in the project.

    On SQLite the search runs in a read transaction first, outside the one write lock, so labelers do not queue
    behind each other's searches; the write transaction only takes one of the places found, or searches again
    when others took them all meanwhile. Asking shows the labeler is there: the lease of the assignment handed
    out runs from ``now`` (a write, so a labeler holding an open assignment goes through the write transaction too).
    PostgreSQL has no such lock: there it is one transaction."""
    plan = None
    if db.is_sqlite:
        with db.read() as s:
            p = _project_to_label(s, name, who)
            plan = assign.plan_next(s, p, who.labeler, now)
    with db.write() as s:
        p = _project_to_label(s, name, who)  # (asked again: a membership may end between the two)
        a = assign.next_assignment(s, p, who.labeler, now, plan=plan)
        if a is not None:  # asking for it shows the labeler is there: the lease runs from now
            assign.heartbeat(s, a, p, now)
        view = assignment_view(s, a, p) if a is not None else None
        progress = assign.labeler_progress(s, p, who.labeler)  # from counters: three index look-ups
    return {"done": view is None, **(view or {}), "progress": progress}


def _project_to_label(s: Session, name: str, who: Principal) -> Project:
    p, accepted = access.project_and_warning(s, name, who.labeler)
    if not accepted:
        raise HTTPProblem(409, f"accept the project's content warning first (POST /api/projects/{name}/"
                          "accept-warning)", "content_warning")
    return p


def submit_judgment(db: Database, assignment_id: int, who: Principal, body: JudgmentIn, key: str | None) -> dict:
    """Store the labeler's judgment on their assignment; committed before the response goes out."""
    with db.write() as s:
        a, task, project = _own(s, assignment_id, who, expired_ok=True)  # (held here for add_judgment)
        # a late answer on an expired lease is kept while the task still needs votes (else 409, nothing stored)
        assign.reopen_expired(s, a, task, project, skipping=body.skip_reason is not None)
        j, created = add_judgment(
            s, task.id, who.labeler, canonical_choice(body.choice, task, a), strength=body.strength,
            ranking=body.ranking, ratings=body.ratings, flags=body.flags, rewrite=body.rewrite,
            skip_reason=body.skip_reason, assignment=a, idempotency_key=key, duration_ms=body.duration_ms)
        return {"judgment_id": j.id, "created": created, "skipped": j.skipped}


def own_assignment(s: Session, assignment_id: int, who: Principal, expired_ok: bool = False) -> Assignment:
    return _own(s, assignment_id, who, expired_ok)[0]


def _own(s: Session, assignment_id: int, who: Principal, expired_ok: bool = False
         ) -> tuple[Assignment, Task, Project]:
    # one statement: the assignment, its task and project, and the labeler's membership there
    row = s.execute(_own_statement(), {"assignment_id": assignment_id, "labeler_id": who.labeler.id}).first()
    a, task, project, role = row if row is not None else (None, None, None, None)
    # someone else's assignment, or one in a project the labeler left, looks exactly like none
    if a is None or a.labeler_id != who.labeler.id or not access.may_label(who.labeler, project, role):
        raise HTTPProblem(404, f"no assignment {assignment_id} for you", "assignment_id")
    if a.status == "expired" and not expired_ok:
        raise HTTPProblem(409, "this assignment expired; fetch the next task", "assignment_id")
    return a, task, project


@functools.cache
def _own_statement() -> Select:
    return (select(Assignment, Task, Project, Membership.role).join(Task, Task.id == Assignment.task_id)
            .join(Project, Project.id == Task.project_id)
            .outerjoin(Membership, (Membership.project_id == Project.id) &
                       (Membership.labeler_id == bindparam("labeler_id")))
            .where(Assignment.id == bindparam("assignment_id")))


def warm_up(db: Database, connections: int) -> None:
    """Before a server process takes its first request: the labeling round's reads, run once on each of
    ``connections`` database connections at the same time (so the pool holds that many, each warm; one on SQLite),
    as nobody, for the shapes of the first projects (``assign.warm_up``). Read transactions: nothing changes."""
    with contextlib.ExitStack() as held:
        sessions = [held.enter_context(db.read()) for _ in range(1 if db.is_sqlite else max(1, connections))]
        projects = list(sessions[0].scalars(select(Project).order_by(Project.id).limit(WARM_PROJECTS)))
        for s in sessions:
            assign.warm_up(s, projects)
            s.execute(_own_statement(), {"assignment_id": 0, "labeler_id": 0}).all()


#: the projects whose search shapes a starting server process warms (each project with its own overlap, order
#: and gold rate adds a few statements)
WARM_PROJECTS = 20


def canonical_choice(choice: Optional[str], task: Task, a: Assignment) -> Optional[str]:
    """Displayed A/B (first/second on screen) -> the task's canonical A/B."""
    if task.task_type != "pairwise" or choice not in ("A", "B"):
        return choice
    shown = a.display_order[0] if choice == "A" else a.display_order[1]
    return "A" if shown == task.completion_ids[0] else "B"
