"""What the routes share, as typed dependencies (``pool: PoolDep``), and the checks every ``/v1`` request passes
before its body is read (API key, size).

The API key is checked in the app's middleware, not in a route dependency, so that a request without a valid key
gets 401 whatever else is wrong with it (an unknown path, an oversized or malformed body); the route sees the
caller through ``CallerDep``.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import Annotated, Optional

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from alignloop.registry.store import Registry, default_db_url
from alignloop.serve.capture import ServedAnswers
from alignloop.serve.config import ServeConfig
from alignloop.serve.errors import error_response
from alignloop.serve.jobs import JobManager
from alignloop.serve.pii import PersonalDataFilter
from alignloop.serve.pool import ModelPool


class Server:
    """Everything the routes share: config, registry, model pool, jobs, accepted keys, the personal-data filter."""

    def __init__(self, cfg: ServeConfig, pool: ModelPool | None = None, registry: Registry | None = None,
                 jobs: JobManager | None = None):
        self.cfg = cfg
        self.db_url = cfg.db or default_db_url()
        self.reg = registry
        self.pool = pool
        self.jobs = jobs
        self.keys = {hashlib.sha256(k.encode()).hexdigest(): k for k in cfg.keys()}
        self.pii = PersonalDataFilter(cfg.mask_kinds())
        self.answers = ServedAnswers(registry, self.pii, store=cfg.store_answers)


# ---- typed dependencies -------------------------------------------------------------------------------


def get_server(request: Request) -> Server:
    return request.app.state.server


ServerDep = Annotated[Server, Depends(get_server)]


def get_settings(srv: ServerDep) -> ServeConfig:
    return srv.cfg


def get_pool(srv: ServerDep) -> Optional[ModelPool]:
    return srv.pool


def get_registry(srv: ServerDep) -> Optional[Registry]:
    return srv.reg


def get_jobs(srv: ServerDep) -> Optional[JobManager]:
    return srv.jobs


def get_answers(srv: ServerDep) -> ServedAnswers:
    return srv.answers


def get_caller(request: Request) -> str:
    """Who a request's answers and feedback are attributed to when its body names no ``user``."""
    key = getattr(request.state, "api_key_hash", None)
    return f"key-{key[:10]}" if key else "anonymous"


SettingsDep = Annotated[ServeConfig, Depends(get_settings)]
#: None when the app was built without a model (tests); the generation routes answer 503 then
PoolDep = Annotated[Optional[ModelPool], Depends(get_pool)]
RegistryDep = Annotated[Optional[Registry], Depends(get_registry)]
#: None with --no-jobs; the job routes answer 503 after checking the request, so a bad request is still a 422
JobsDep = Annotated[Optional[JobManager], Depends(get_jobs)]
AnswersDep = Annotated[ServedAnswers, Depends(get_answers)]
CallerDep = Annotated[str, Depends(get_caller)]


# ---- checks before the body is read -------------------------------------------------------------------


def check_api_key(request: Request, keys: dict[str, str]) -> JSONResponse | None:
    """A 401 answer unless the request carries one of ``keys`` (``Authorization: Bearer KEY`` or ``X-API-Key``);
    with no keys configured every request passes. Keys are compared by their SHA-256 in constant time."""
    if not keys:
        return None
    auth = request.headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    digest = hashlib.sha256(key.encode()).hexdigest() if key else ""
    if not key:
        return error_response(401, "no API key: send 'Authorization: Bearer YOUR_KEY'", code="missing_api_key")
    if not any(secrets.compare_digest(digest, h) for h in keys):
        return error_response(401, "incorrect API key provided", code="invalid_api_key")
    request.state.api_key_hash = digest
    return None


async def check_body_size(request: Request, cfg: ServeConfig) -> JSONResponse | None:
    """A 413 answer for a body over the limit: ``--max-upload-bytes`` for jobs (they carry data), else
    ``--max-request-bytes``. A chunked upload has no length header, so it is read (starlette caches it) and measured."""
    path = request.url.path
    jobs = path.startswith("/v1/jobs")
    limit = cfg.max_upload_bytes if jobs else cfg.max_request_bytes
    size = request.headers.get("content-length")
    if size is not None and size.isdigit() and int(size) > limit:
        return error_response(413, f"request body is {int(size)} bytes; the limit for {path} is {limit} bytes "
                              f"({'--max-upload-bytes' if jobs else '--max-request-bytes'})", code="request_too_large")
    if size is None and request.method == "POST":
        body = await request.body()
        if len(body) > limit:
            return error_response(413, f"request body is over the {limit}-byte limit for {path}",
                                  code="request_too_large")
    return None
