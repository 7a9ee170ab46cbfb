"""Judgments: a project's (all of them for its lead or an admin, their own for a labeler) and the labeler's own."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from alignloop.feedback import access
from alignloop.feedback.models import Judgment, Task
from alignloop.feedback.web.deps import CurrentLabeler, ReadSession
from alignloop.feedback.web.views import judgment_public

router = APIRouter(prefix="/api")


@router.get("/projects/{name}/judgments")
def project_judgments(name: str, who: CurrentLabeler, s: ReadSession) -> list[dict]:
    p = access.project_to_label(s, name, who.labeler)
    q = select(Judgment).join(Task, Task.id == Judgment.task_id).where(Task.project_id == p.id)
    if not access.can_manage(s, who.labeler, p):  # a labeler sees only their own judgments
        q = q.where(Judgment.labeler_id == who.labeler.id)
    return [judgment_public(j) for j in s.scalars(q.order_by(Judgment.id))]


@router.get("/me/judgments")
def my_judgments(who: CurrentLabeler, s: ReadSession) -> list[dict]:
    q = select(Judgment).where(Judgment.labeler_id == who.labeler.id).order_by(Judgment.id)
    return [judgment_public(j) for j in s.scalars(q)]
