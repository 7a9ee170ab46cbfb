"""The lead's tools: finding tasks, the review queue and decisions (adjudications), a labeler's history and the
activity charts; as JSON under ``/api/projects/NAME/...`` and as pages under ``/lead/NAME/...``.

Every route is for the project's lead or an admin (``access.project_to_manage``: a member who is no lead gets
403, anyone else 404, as if the project did not exist). The rules live in ``feedback.review``."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse

from alignloop.feedback import access, review, search
from alignloop.feedback.errors import Invalid, NotFound
from alignloop.feedback.models import Database, Project, Task
from alignloop.feedback.web import charts
from alignloop.feedback.web.deps import CurrentLabeler, DbDep, Now, ReadSession
from alignloop.feedback.web.schemas import AdjudicationIn
from alignloop.feedback.web.views import render

router = APIRouter()


def _filter(text: Optional[str], labeler: Optional[str], min_agreement: Optional[float],
            max_agreement: Optional[float], disputed: bool, gold_failed: bool, gold: Optional[bool],
            decided: Optional[bool]) -> review.TaskFilter:
    return review.TaskFilter(text=text or None, labeler=labeler or None, min_agreement=min_agreement,
                             max_agreement=max_agreement, disputed=disputed, gold_failed=gold_failed, gold=gold,
                             decided=decided)


def _find(db: Database, name: str, who, f: review.TaskFilter, limit: int, after: Optional[str]) -> dict:  # noqa: ANN001
    with db.read() as s:
        p = access.project_to_manage(s, name, who.labeler)
        review.check_filter(f)
        project_id = p.id
    pending = search.catch_up(db, project_id) if f.text else 0  # the search index first (it writes)
    with db.read() as s:
        page = review.find_tasks(s, s.get(Project, project_id), f, limit, after)
    return {**page, "search_pending": pending}


# --------------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------------


@router.get("/api/projects/{name}/tasks")
def list_tasks(name: str, who: CurrentLabeler, db: DbDep, text: Optional[str] = None, labeler: Optional[str] = None,
               min_agreement: Optional[float] = None, max_agreement: Optional[float] = None, disputed: bool = False,
               gold_failed: bool = False, gold: Optional[bool] = None, decided: Optional[bool] = None,
               limit: int = 50, after: Optional[str] = None) -> dict:
    """A page of tasks that pass every filter given; ``next`` is the cursor of the following page (``after``).
    ``search_pending``: tasks the text search did not cover yet (the index catches up over the next searches)."""
    f = _filter(text, labeler, min_agreement, max_agreement, disputed, gold_failed, gold, decided)
    return _find(db, name, who, f, limit, after)


@router.get("/api/projects/{name}/tasks/{task_id}")
def show_task(name: str, task_id: int, who: CurrentLabeler, s: ReadSession) -> dict:
    p = access.project_to_manage(s, name, who.labeler)
    return review.task_details(s, p, [review.task_of(s, p, task_id)])[0]


@router.get("/api/projects/{name}/review")
def review_queue(name: str, who: CurrentLabeler, s: ReadSession, status: str = "open",
                 max_agreement: Optional[float] = None, limit: int = 20, after: Optional[str] = None) -> dict:
    p = access.project_to_manage(s, name, who.labeler)
    return review.review_queue(s, p, status, max_agreement, limit, after)


@router.put("/api/projects/{name}/tasks/{task_id}/adjudication")
def decide(name: str, task_id: int, body: AdjudicationIn, who: CurrentLabeler, db: DbDep, now: Now) -> dict:
    """The lead's decision on the task (in its canonical terms: "A" is its first completion); it replaces an
    earlier one and becomes the task's consensus."""
    with db.write() as s:
        p = access.project_to_manage(s, name, who.labeler)
        review.adjudicate(s, p, task_id, who.labeler, choice=body.choice, ranking=body.ranking,
                          ratings=body.ratings, note=body.note, now=now, client=who.client)
        return review.task_details(s, p, [s.get(Task, task_id)])[0]


@router.delete("/api/projects/{name}/tasks/{task_id}/adjudication")
def withdraw(name: str, task_id: int, who: CurrentLabeler, db: DbDep) -> dict:
    with db.write() as s:
        p = access.project_to_manage(s, name, who.labeler)
        review.withdraw(s, p, task_id, who.name, who.client)
        s.flush()
        return review.task_details(s, p, [s.get(Task, task_id)])[0]


@router.get("/api/projects/{name}/labelers/{user}/history")
def labeler_history(name: str, user: str, who: CurrentLabeler, s: ReadSession, limit: int = 50,
                    after: Optional[str] = None) -> dict:
    p = access.project_to_manage(s, name, who.labeler)
    return review.labeler_history(s, p, user, limit, after)


@router.get("/api/projects/{name}/activity")
def activity(name: str, who: CurrentLabeler, s: ReadSession, now: Now, days: int = 30) -> list[dict]:
    p = access.project_to_manage(s, name, who.labeler)
    return review.activity(s, p, days, now.date())


# --------------------------------------------------------------------------------------------------
# Pages
# --------------------------------------------------------------------------------------------------


def _number(value: Optional[str], field: str) -> Optional[float]:
    """A number from a form field; an empty field is no filter."""
    if value is None or not value.strip():
        return None
    try:
        return float(value)
    except ValueError:
        raise Invalid(f"'{value}' is not a number", field=field) from None


@router.get("/lead/{name}/tasks", response_class=HTMLResponse)
def tasks_page(request: Request, name: str, who: CurrentLabeler, db: DbDep, text: Optional[str] = None,
               labeler: Optional[str] = None, min_agreement: Optional[str] = None,
               max_agreement: Optional[str] = None, disputed: bool = False, gold_failed: bool = False,
               decided: Optional[str] = None, limit: int = 50, after: Optional[str] = None) -> HTMLResponse:
    # a form sends its empty fields too: "" means no filter
    decided_flag = {"yes": True, "no": False}.get(decided or "")
    f = _filter(text, labeler, _number(min_agreement, "min_agreement"), _number(max_agreement, "max_agreement"),
                disputed, gold_failed, None, decided_flag)
    page = _find(db, name, who, f, limit, after)
    with db.read() as s:
        p = access.project_to_manage(s, name, who.labeler)
        members = access.members(s, p)
    query = {k: v for k, v in request.query_params.items() if k != "after" and v != ""}
    return render(request, "lead_tasks.html", who, project=p, page=page, f=f, decided=decided or "",
                  members=members, query=query)


@router.get("/lead/{name}/tasks/{task_id}", response_class=HTMLResponse)
def task_page(request: Request, name: str, task_id: int, who: CurrentLabeler, s: ReadSession) -> HTMLResponse:
    p = access.project_to_manage(s, name, who.labeler)
    task = review.task_details(s, p, [review.task_of(s, p, task_id)])[0]
    return render(request, "lead_task.html", who, project=p, task=task)


@router.get("/lead/{name}/review", response_class=HTMLResponse)
def review_page(request: Request, name: str, who: CurrentLabeler, s: ReadSession, status: str = "open",
                limit: int = 20, after: Optional[str] = None) -> HTMLResponse:
    p = access.project_to_manage(s, name, who.labeler)
    page = review.review_queue(s, p, status, None, limit, after)
    return render(request, "lead_review.html", who, project=p, page=page, status=status)


@router.get("/lead/{name}/labelers/{user}", response_class=HTMLResponse)
def labeler_page(request: Request, name: str, user: str, who: CurrentLabeler, s: ReadSession, limit: int = 50,
                 after: Optional[str] = None) -> HTMLResponse:
    p = access.project_to_manage(s, name, who.labeler)
    history = review.labeler_history(s, p, user, limit, after)
    return render(request, "lead_labeler.html", who, project=p, history=history)


@router.get("/lead/{name}/charts/{chart}.svg")
def chart(name: str, chart: str, who: CurrentLabeler, s: ReadSession, now: Now, days: int = 30) -> Response:
    """The lead view's charts, drawn on the server as SVG (nothing is fetched from elsewhere, no script runs)."""
    p = access.project_to_manage(s, name, who.labeler)
    if chart not in charts.CHARTS:
        raise NotFound(f"no chart named '{chart}' (there are {', '.join(charts.CHARTS)})", field="chart")
    svg = charts.CHARTS[chart](review.activity(s, p, days, now.date()))
    return Response(svg, media_type="image/svg+xml")
