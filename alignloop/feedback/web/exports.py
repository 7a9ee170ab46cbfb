"""Exports as downloads (JSONL), each recorded with the judgments it holds."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from alignloop.feedback.io import FORMATS, export_download
from alignloop.feedback.queries import get_project
from alignloop.feedback.web.deps import AdminUser, DbDep, HTTPProblem, consensus_method

router = APIRouter(prefix="/api")


@router.get("/projects/{name}/export")
def export(name: str, who: AdminUser, db: DbDep, format: str = "trl", method: str = "majority",
           min_judgments: int = 1) -> Response:
    if format not in FORMATS:
        raise HTTPProblem(422, f"'{format}' is not one of {', '.join(FORMATS)}", "format")
    with db.write() as s:
        p = get_project(s, name)
        body, export_id = export_download(s, p, format, consensus_method(method), min_judgments)
    return PlainTextResponse(body, media_type="application/x-ndjson", headers={"X-Export-Id": str(export_id)})
