"""Projects: list, create, show, change settings and guidelines, import records, the lead's figures."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from alignloop.core.errors import DataError
from alignloop.feedback import assign
from alignloop.feedback.io import import_records, parse_records
from alignloop.feedback.models import Database, Project
from alignloop.feedback.queries import PROJECT_FIELDS, create_project, get_project, set_guidelines, update_project
from alignloop.feedback.stats import project_stats
from alignloop.feedback.web.deps import AdminUser, CurrentLabeler, DbDep, HTTPProblem, ReadSession, consensus_method
from alignloop.feedback.web.schemas import GuidelinesIn, ProjectIn, ProjectPatch
from alignloop.feedback.web.views import project_public

router = APIRouter(prefix="/api/projects")


@router.get("")
def list_projects(who: CurrentLabeler, s: ReadSession) -> list[dict]:
    return [project_public(p) for p in s.scalars(select(Project).order_by(Project.name))]


@router.post("", status_code=201)
def new_project(body: ProjectIn, who: AdminUser, db: DbDep) -> dict:
    settings = {k: v for k, v in body.model_dump().items() if k in PROJECT_FIELDS and v is not None}
    with db.write() as s:
        p = create_project(s, body.name, guidelines=body.guidelines, content_warning=body.content_warning,
                           **settings)
        return project_public(p)


@router.get("/{name}")
def show_project(name: str, who: CurrentLabeler, s: ReadSession) -> dict:
    p = get_project(s, name)
    return {**project_public(p), "guidelines": p.guidelines, "content_warning": p.content_warning,
            "progress": assign.labeler_progress(s, p, who.labeler)}


@router.patch("/{name}")
def patch_project(name: str, body: ProjectPatch, who: AdminUser, db: DbDep) -> dict:
    with db.write() as s:
        return project_public(update_project(s, get_project(s, name), **body.model_dump()))


@router.put("/{name}/guidelines")
def put_guidelines(name: str, body: GuidelinesIn, who: AdminUser, db: DbDep) -> dict:
    with db.write() as s:
        version = set_guidelines(s, get_project(s, name), body.text, body.content_warning)
    return {"guidelines_version": version}


@router.post("/{name}/import")
async def import_into(name: str, request: Request, who: AdminUser, db: DbDep, labeler: Optional[str] = None) -> dict:
    text = (await request.body()).decode("utf-8", errors="replace")
    return await run_in_threadpool(import_upload, db, name, text, labeler)


@router.get("/{name}/stats")
def stats(name: str, who: AdminUser, s: ReadSession, method: str = "majority") -> dict:
    return project_stats(s, get_project(s, name), method=consensus_method(method))


def import_upload(db: Database, name: str, text: str, labeler: str | None) -> dict:
    """Import an uploaded JSONL text or JSON array into project ``name`` in one transaction: a bad line leaves
    nothing behind."""
    try:
        fmt, records = parse_records(text)
    except DataError as exc:  # exc has no path, so str(exc) is the bare message
        raise HTTPProblem(422, f"line {exc.line}: {exc}", "body") from None
    if not records:
        raise HTTPProblem(422, "no records in the request body", "body")
    with db.write() as s:
        return import_records(s, get_project(s, name), records, source="upload", fmt=fmt, labeler=labeler)

