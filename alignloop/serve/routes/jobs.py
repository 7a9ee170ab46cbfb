"""Training jobs: ``POST /v1/jobs``, ``GET /v1/jobs``, ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/logs``,
``POST /v1/jobs/{id}/cancel`` (the queue itself is ``alignloop.serve.jobs``, what a config may say is
``alignloop.serve.job_policy``). Only admin keys get here (``guard.Guard`` answers 403 to the others)."""

from __future__ import annotations

from typing import Annotated, Any, Callable

from fastapi import APIRouter, Path, Query
from starlette.concurrency import run_in_threadpool

from alignloop.serve.deps import JobsDep
from alignloop.serve.errors import ApiError
from alignloop.serve.jobs import JobError, JobManager
from alignloop.serve.schemas import JobRequest

router = APIRouter(prefix="/jobs")
#: a job id as the database stores it (a 32-bit integer on PostgreSQL): larger ones are a 422, not a driver error
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="the job's id")]
#: where to start reading the log, in bytes (a file offset: larger ones would overflow a seek)
LogOffset = Annotated[int, Query(ge=0, le=2**53, description="bytes of the log already read (next_offset)")]


def _queue(jobs: JobManager | None) -> JobManager:
    if jobs is None:
        raise ApiError(503, "this server does not run jobs (start it with --jobs and an admin key)",
                       type="server_error")
    return jobs


async def _found(lookup: Callable[[int], Any], job_id: int) -> Any:
    """``lookup(job_id)``, or 404 when there is no such job."""
    out = await run_in_threadpool(lookup, job_id)
    if out is None:
        raise ApiError(404, f"no job {job_id}", "job_id", "job_not_found")
    return out


@router.post("", status_code=201)
async def submit_job(req: JobRequest, jobs: JobsDep):
    try:  # registry ids and names as models are resolved to their folders by the policy
        return await run_in_threadpool(_queue(jobs).submit, req.stage, dict(req.config), req.model_name, req.data,
                                       req.data_field)
    except JobError as exc:
        raise ApiError(exc.status, "invalid job: " + "; ".join(exc.problems), "config") from None


@router.get("")
async def list_jobs(jobs: JobsDep):
    return {"object": "list", "data": await run_in_threadpool(_queue(jobs).list)}


@router.get("/{job_id}")
async def get_job(job_id: JobId, jobs: JobsDep):
    return await _found(_queue(jobs).get, job_id)


@router.get("/{job_id}/logs")
async def job_logs(job_id: JobId, jobs: JobsDep, offset: LogOffset = 0):
    queue = _queue(jobs)
    text, next_offset = await _found(lambda i: queue.log(i, offset), job_id)
    return {"job_id": job_id, "text": text, "next_offset": next_offset}


@router.post("/{job_id}/cancel")
async def cancel_job(job_id: JobId, jobs: JobsDep):
    return await _found(_queue(jobs).cancel, job_id)
