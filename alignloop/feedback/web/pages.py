"""The server-rendered pages: home, labeling, guidelines, the lead's view; and the health check."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from markdown_it import MarkdownIt
from sqlalchemy import select

from alignloop.feedback import access, assign
from alignloop.feedback.stats import project_stats
from alignloop.feedback.web.deps import CurrentLabeler, ReadSession, consensus_method
from alignloop.feedback.web.views import render

router = APIRouter()


@router.get("/health")
def health(s: ReadSession) -> dict:
    s.execute(select(1))
    return {"status": "ok"}


@router.get("/", response_class=HTMLResponse)
def home(request: Request, who: CurrentLabeler, s: ReadSession) -> HTMLResponse:
    rows = [{"project": p, "manage": access.can_manage(s, who.labeler, p), **assign.labeler_progress(s, p, who.labeler)}
            for p in access.visible_projects(s, who.labeler)]
    return render(request, "home.html", who, rows=rows)


@router.get("/p/{name}", response_class=HTMLResponse)
def label_page(request: Request, name: str, who: CurrentLabeler, s: ReadSession) -> HTMLResponse:
    return render(request, "label.html", who, project=access.project_to_label(s, name, who.labeler))


@router.get("/p/{name}/guidelines", response_class=HTMLResponse)
def guidelines_page(request: Request, name: str, who: CurrentLabeler, s: ReadSession) -> HTMLResponse:
    project = access.project_to_label(s, name, who.labeler)
    # html=False: raw HTML in the guidelines is shown as text, never run
    html = MarkdownIt("commonmark", {"html": False}).render(project.guidelines or "*No guidelines yet.*")
    return render(request, "guidelines.html", who, project=project, guidelines_html=html)


@router.get("/lead/{name}", response_class=HTMLResponse)
def lead_page(request: Request, name: str, who: CurrentLabeler, s: ReadSession,
              method: str = "majority") -> HTMLResponse:
    project = access.project_to_manage(s, name, who.labeler)
    stats = project_stats(s, project, method=consensus_method(method))
    return render(request, "lead.html", who, project=project, stats=stats, method=method)
