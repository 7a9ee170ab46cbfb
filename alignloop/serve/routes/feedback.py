"""``POST /v1/feedback``: thumbs up/down, a comment, an edited better answer, or a choice between two served
answers, stored as studio judgments of labeler kind "user" (the rules are in ``alignloop.serve.capture``)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from alignloop.core.errors import AlignloopError
from alignloop.feedback.store import StoreError
from alignloop.serve.capture import record_feedback
from alignloop.serve.deps import CallerDep, ServerDep
from alignloop.serve.errors import ApiError
from alignloop.serve.schemas import FeedbackRequest

router = APIRouter()


@router.post("/feedback", status_code=201)
async def feedback(req: FeedbackRequest, srv: ServerDep, caller: CallerDep):
    if srv.reg is None:
        raise ApiError(503, "feedback needs the database", type="server_error")
    try:
        result = await run_in_threadpool(record_feedback, srv.answers, srv.db_url, srv.cfg.feedback_project, req,
                                         caller)  # the key votes; req.user is metadata
    except StoreError as exc:  # the studio's own validation: 404/409/422 with its message
        raise ApiError(exc.status, str(exc), exc.field) from None
    except AlignloopError as exc:  # e.g. a served prompt the studio cannot import
        raise ApiError(422, str(exc)) from None
    return {"object": "feedback", **result}
