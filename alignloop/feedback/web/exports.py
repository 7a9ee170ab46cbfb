"""Exports as downloads (JSONL), each recorded with the judgments it holds; for the project's lead or an admin."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response

from alignloop.feedback import access
from alignloop.feedback.io import FORMATS, export_download
from alignloop.feedback.web.deps import CurrentLabeler, DbDep, HTTPProblem, consensus_method

router = APIRouter(prefix="/api")


@router.post("/projects/{name}/export")
def export(name: str, who: CurrentLabeler, db: DbDep, format: str = "trl", method: str = "majority",
           min_judgments: int = 1) -> Response:
    if format not in FORMATS:
        raise HTTPProblem(422, f"'{format}' is not one of {', '.join(FORMATS)}", "format")
    with db.write() as s:  # (POST: it records an export, so no other site may set it off with a GET)
        p = access.project_to_manage(s, name, who.labeler)
        body, export_id = export_download(s, p, format, consensus_method(method), min_judgments)
    return PlainTextResponse(body, media_type="application/x-ndjson", headers={"X-Export-Id": str(export_id)})
