"""``alignloop serve``: an OpenAI-compatible HTTP API over a registry model or a folder, with request batching,
user-feedback capture into the feedback store, and training jobs.

Endpoints (all under ``/v1``, API key as ``Authorization: Bearer KEY``; who may call what: docs/security.md):

* ``POST /chat/completions`` (``stream: true`` answers with server-sent events), ``POST /completions``,
  ``GET /models``, ``GET /models/{id}`` (with lineage) — the OpenAI protocol, so the ``openai`` client works.
* ``POST /predict`` ``{model, question, context}``: the library's ``model.predict`` over HTTP (same prompt).
* ``POST /feedback``: thumbs up/down, a comment, an edited better answer, or a choice between two served
  answers; stored as judgments of labeler kind "user" after masking personal data (``alignloop/serve/pii.py``).
* ``POST /jobs``, ``GET /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/logs``, ``POST /jobs/{id}/cancel``: admin
  key only, and only with ``--jobs``.

The parts: ``guard`` (keys and roles, body size, per-key concurrency, headers),
``batcher`` (concurrent requests decoded together), ``pool`` (loaded models), ``schemas`` (request
bodies), ``routes/`` (one router per resource), ``deps`` (what routes share, as typed dependencies), ``capture``
(served answers and the feedback rules), ``jobs`` (the job queue), ``job_policy`` (what a job config may say).
This module assembles them.
"""

from __future__ import annotations

import sys
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.middleware.trustedhost import TrustedHostMiddleware

from alignloop import __version__
from alignloop.core.db import display_url
from alignloop.core.errors import AlignloopError
from alignloop.core.paths import alignloop_home
from alignloop.registry.store import open_registry
from alignloop.serve.batcher import Batcher, Choice, GenRequest
from alignloop.serve.config import ServeConfig, host_header_name
from alignloop.serve.deps import Server
from alignloop.serve.errors import ApiError, install_error_handlers
from alignloop.serve.guard import Guard
from alignloop.serve.job_policy import JobPolicy
from alignloop.serve.jobs import JobManager
from alignloop.serve.pool import LoadedModel, ModelPool
from alignloop.serve.routes import api_router, health
from alignloop.serve.schemas import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    FeedbackRequest,
    JobRequest,
    PredictRequest,
    StreamOptions,
)

#: also the public names of this module before it was split (batcher, pool, schemas), still importable from here
__all__ = ["ApiError", "Batcher", "ChatMessage", "ChatRequest", "Choice", "CompletionRequest", "FeedbackRequest",
           "GenRequest", "JobRequest", "LoadedModel", "ModelPool", "PredictRequest", "Server", "ServeConfig",
           "StreamOptions", "build", "create_app", "run_serve"]


def _lifespan(srv: Server, start_background: bool) -> Callable[[FastAPI], Any]:
    """Start the job worker with the app and stop it (and its running job) on shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if srv.jobs is not None and start_background:
            srv.jobs.start()
        yield
        if srv.jobs is not None and start_background:
            await run_in_threadpool(srv.jobs.stop)

    return lifespan


def create_app(cfg: ServeConfig, pool: ModelPool | None = None, registry: Any = None, jobs: Any = None,
               start_background: bool = True) -> FastAPI:
    """The FastAPI app. ``run_serve`` builds the pool, registry and job manager; tests may pass their own."""
    srv = Server(cfg, pool, registry, jobs)
    docs = {} if cfg.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="alignloop serve", version=__version__, lifespan=_lifespan(srv, start_background), **docs)
    app.state.server = srv
    install_error_handlers(app)
    app.add_middleware(Guard, server=srv)
    hosts = cfg.trusted_hosts()
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=["*"] if "*" in hosts else hosts)  # outermost
    app.include_router(health.router)
    app.include_router(api_router)
    return app


def build(cfg: ServeConfig, load_model: bool = True) -> tuple[FastAPI, Server]:
    """Registry, model pool, job manager and app for a config."""
    reg = open_registry(cfg.db)
    pool = ModelPool(cfg, reg) if load_model else None
    jobs = None
    if cfg.jobs:
        folder = Path(cfg.jobs_folder) if cfg.jobs_folder else alignloop_home() / "jobs"
        jobs = JobManager(reg, folder, resume_interrupted=cfg.resume_interrupted_jobs,
                          policy=JobPolicy.from_config(cfg, reg.url))
    app = create_app(cfg, pool, reg, jobs)
    return app, app.state.server


def start_line(cfg: ServeConfig, srv: Server) -> str:
    """What the server prints when it starts (the database URL without its password)."""
    jobs = "jobs on (admin key)" if srv.jobs is not None else "jobs off"
    return (f"serving {srv.pool.default.id} on http://{host_header_name(cfg.host)}:{cfg.port}/v1 ({jobs}; "
            f"database {display_url(srv.db_url)})")


def run_serve(cfg: ServeConfig) -> int:
    import uvicorn

    try:
        app, srv = build(cfg)
    except AlignloopError:
        raise
    except Exception as exc:
        raise AlignloopError(f"cannot start the server: {exc.__class__.__name__}: {exc}") from None
    if not srv.keys:
        print("warning: no API key set (--api-key or $ALIGNLOOP_API_KEYS): anyone who can reach "
              f"{cfg.host}:{cfg.port} can use this server", file=sys.stderr)
    print(start_line(cfg, srv), file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    srv.pool.close()
    return 0
