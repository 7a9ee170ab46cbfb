"""Projects: list, create, show, change settings and guidelines, import records, the lead's figures, members,
and accepting the content warning.

A labeler reaches only the projects they are a member of (others answer 404, as if they did not exist); a
project's lead or an admin manages it (``access``)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from alignloop.core.errors import DataError
from alignloop.feedback import access, assign
from alignloop.feedback.accounts import get_user
from alignloop.feedback.io import import_labeled, parse_upload, read_upload
from alignloop.feedback.models import Database
from alignloop.feedback.queries import PROJECT_FIELDS, create_project, get_project, set_guidelines, update_project
from alignloop.feedback.stats import project_stats
from alignloop.feedback.web.deps import CurrentLabeler, DbDep, HTTPProblem, Principal, ReadSession, consensus_method
from alignloop.feedback.web.schemas import GuidelinesIn, MemberIn, ProjectIn, ProjectPatch
from alignloop.feedback.web.views import project_public

router = APIRouter(prefix="/api/projects")


@router.get("")
def list_projects(who: CurrentLabeler, s: ReadSession) -> list[dict]:
    return [project_public(p, access.can_manage(s, who.labeler, p)) for p in access.visible_projects(s, who.labeler)]


@router.post("", status_code=201)
def new_project(body: ProjectIn, who: CurrentLabeler, db: DbDep) -> dict:
    if who.labeler.role not in ("admin", "lead"):
        raise HTTPProblem(403, "creating a project needs the lead or admin role")
    if body.admin_only is not None and not who.is_admin:
        raise HTTPProblem(403, "only an admin sets admin_only", "admin_only")
    settings = {k: v for k, v in body.model_dump().items() if k in PROJECT_FIELDS and v is not None}
    with db.write() as s:
        p = create_project(s, body.name, guidelines=body.guidelines, content_warning=body.content_warning,
                           **settings)
        if not who.is_admin:  # a lead leads the projects they create
            access.add_member(s, p, who.labeler, "lead", who.name, who.client)
        return project_public(p, True)


@router.get("/{name}")
def show_project(name: str, who: CurrentLabeler, s: ReadSession) -> dict:
    p = access.project_to_label(s, name, who.labeler)
    return {**project_public(p, access.can_manage(s, who.labeler, p)), "guidelines": p.guidelines,
            "content_warning": p.content_warning,
            "content_warning_accepted": access.warning_accepted(s, who.labeler, p),
            "progress": assign.labeler_progress(s, p, who.labeler)}


@router.patch("/{name}")
def patch_project(name: str, body: ProjectPatch, who: CurrentLabeler, db: DbDep) -> dict:
    if body.admin_only is not None and not who.is_admin:
        raise HTTPProblem(403, "only an admin sets admin_only", "admin_only")
    with db.write() as s:
        p = access.project_to_manage(s, name, who.labeler)
        return project_public(update_project(s, p, **body.model_dump()), True)


@router.put("/{name}/guidelines")
def put_guidelines(name: str, body: GuidelinesIn, who: CurrentLabeler, db: DbDep) -> dict:
    with db.write() as s:
        version = set_guidelines(s, access.project_to_manage(s, name, who.labeler), body.text, body.content_warning)
    return {"guidelines_version": version}


@router.post("/{name}/accept-warning")
def accept_warning(name: str, who: CurrentLabeler, db: DbDep) -> dict:
    """The labeler has read the project's content warning; /next hands out tasks only after this."""
    with db.write() as s:
        p = access.project_to_label(s, name, who.labeler)
        access.accept_warning(s, who.labeler, p)
    return {"project": name, "content_warning_accepted": True}


@router.get("/{name}/members")
def list_members(name: str, who: CurrentLabeler, s: ReadSession) -> list[dict]:
    return access.members(s, access.project_to_manage(s, name, who.labeler))


@router.post("/{name}/members", status_code=201)
def add_member(name: str, body: MemberIn, who: CurrentLabeler, db: DbDep) -> dict:
    return add_member_as(db, name, body.name, body.role, who)


@router.delete("/{name}/members/{user}")
def remove_member(name: str, user: str, who: CurrentLabeler, db: DbDep) -> dict:
    return remove_member_as(db, name, user, who)


IMPORT_BODY = {"required": True, "description": "Records as JSON Lines (one JSON object a line) or as one JSON array, "
               "in any format `alignloop label import` reads; strict UTF-8.",
               "content": {"text/plain": {"schema": {"type": "string"}},
                           "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}}}


@router.post("/{name}/import", openapi_extra={"requestBody": IMPORT_BODY})
async def import_into(name: str, request: Request, who: CurrentLabeler, db: DbDep,
                      labeler: Optional[str] = None) -> dict:
    with db.read() as s:
        access.project_to_manage(s, name, who.labeler)
    try:
        rows = parse_upload(await request.body())
    except DataError as exc:  # exc has no path, so str(exc) is the bare message
        raise HTTPProblem(422, f"line {exc.line}: {exc}", "body") from None
    if not rows:
        raise HTTPProblem(422, "no records in the request body", "body")
    return await run_in_threadpool(import_upload, db, name, rows, labeler)


@router.get("/{name}/stats")
def stats(name: str, who: CurrentLabeler, s: ReadSession, method: str = "majority") -> dict:
    return project_stats(s, access.project_to_manage(s, name, who.labeler), method=consensus_method(method))


# Membership changes, from the API or from the lead's members page (web/manage.py): one place each.


def add_member_as(db: Database, name: str, member: str, role: str, who: Principal) -> dict:
    """``who`` (the project's lead or an admin) makes ``member`` a member of project ``name``; only an admin
    makes someone a lead."""
    if role == "lead" and not who.is_admin:
        raise HTTPProblem(403, "only an admin makes someone a lead", "role")
    with db.write() as s:
        p = access.project_to_manage(s, name, who.labeler)
        m = access.add_member(s, p, get_user(s, member), role, who.name, who.client)
        return {"project": name, "name": member, "role": m.role}


def remove_member_as(db: Database, name: str, member: str, who: Principal) -> dict:
    """``who`` (the project's lead or an admin) removes ``member`` from project ``name``; only an admin removes a
    lead."""
    with db.write() as s:
        p = access.project_to_manage(s, name, who.labeler)
        lab = get_user(s, member)
        m = access.membership(s, lab, p)
        if m is not None and m.role == "lead" and not who.is_admin:
            raise HTTPProblem(403, "only an admin removes a lead", "name")
        access.remove_member(s, p, lab, who.name, who.client)
    return {"project": name, "name": member, "removed": True}


def import_upload(db: Database, name: str, rows: list, labeler: str | None) -> dict:
    """Import an upload's rows (any shape a file may have) into project ``name`` in one transaction: read before
    the write lock, checked whole before the first row is written."""
    lf = read_upload(rows)
    with db.write() as s:
        return import_labeled(s, get_project(s, name), lf, source="upload", labeler=labeler)
