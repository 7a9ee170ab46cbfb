"""What the responses show: pages rendered from the templates, and the JSON views of projects, judgments and
assignments. Model names are left out of everything a labeler sees on purpose (labelers must not know them)."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from alignloop.core.db import run
from alignloop.feedback.models import Assignment, Completion, Judgment, Project, Prompt, Task
from alignloop.feedback.web.deps import Principal

LETTERS = "ABCDEFGHIJKLMNOP"


def render(request: Request, name: str, who: Principal | None, status_code: int = 200, **ctx: Any) -> HTMLResponse:
    """A page from ``templates/`` with the signed-in user and the session's CSRF token for its forms."""
    csrf = who.session.csrf_token if who and who.session else ""
    templates = request.app.state.templates
    return templates.TemplateResponse(request, name, {"me": who.labeler if who else None, "csrf": csrf, **ctx},
                                      status_code=status_code)


def project_public(p: Project, manage: bool = False) -> dict:
    """A project's settings; ``gold_rate`` and ``admin_only`` only for those who manage it (a labeler who knows
    the gold rate knows how often to be careful)."""
    out = {"name": p.name, "task_type": p.task_type, "criteria": p.criteria, "flags": p.flags, "scale": p.scale,
           "overlap": p.overlap, "order": p.order, "lease_minutes": p.lease_minutes,
           "guidelines_version": p.guidelines_version, "has_content_warning": bool(p.content_warning)}
    return {**out, "gold_rate": p.gold_rate, "admin_only": p.admin_only} if manage else out


def judgment_public(j: Judgment) -> dict:
    return {"id": j.id, "task_id": j.task_id, "choice": j.choice, "strength": j.strength, "ranking": j.ranking,
            "ratings": j.ratings, "flags": j.flags, "rewrite": j.rewrite, "skipped": j.skipped,
            "skip_reason": j.skip_reason, "guideline_version": j.guideline_version,
            "created_at": j.created_at.isoformat() + "Z"}


def assignment_view(s: Session, a: Assignment, p: Project) -> dict:
    """What the labeler's page needs, completions in the order this labeler sees them."""
    # one statement: the task's prompt and its completions (a row each), plain columns
    rows = run(s, _assignment_statement(), {"task_id": a.task_id}).all()
    task, texts = rows[0], {r.completion_id: r.text for r in rows}
    return {"assignment_id": a.id, "task_id": task.id, "task_type": task.task_type, "prompt": task.prompt,
            "context": task.context,
            "completions": [{"id": cid, "label": LETTERS[i], "text": texts[cid]}
                            for i, cid in enumerate(a.display_order)],
            "criteria": p.criteria, "flags": p.flags, "scale": p.scale,
            "guidelines_version": p.guidelines_version, "content_warning": p.content_warning,
            "started_at": a.created_at.isoformat() + "Z", "lease_minutes": p.lease_minutes,
            "heartbeat_seconds": heartbeat_seconds(p)}


@functools.cache
def _assignment_statement() -> Any:
    return (select(Task.id, Task.task_type, Prompt.prompt, Prompt.context, Completion.id.label("completion_id"),
                   Completion.text)
            .join(Prompt, Prompt.id == Task.prompt_id).join(Completion, Completion.prompt_id == Prompt.id)
            .where(Task.id == bindparam("task_id")))


def heartbeat_seconds(p: Project) -> int:
    """How often the labeling page tells the server the task is still open: four times a lease, at most once a
    minute (a lost beat or two cost nothing)."""
    return max(5, min(60, p.lease_minutes * 60 // 4))
