"""What the routes share, as typed dependencies (``pool: PoolDep``).

The key, its role and the body size are checked before this, in ``guard.Guard`` (an ASGI middleware), so that a
request without a valid key gets 401 whatever else is wrong with it; the route sees the caller through
``CallerDep``.
"""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import Depends, Request

from alignloop.registry.store import Registry, default_db_url
from alignloop.serve.capture import ServedAnswers
from alignloop.serve.config import ServeConfig
from alignloop.serve.guard import OPEN, KeyRing, TokenBudget
from alignloop.serve.jobs import JobManager
from alignloop.serve.pii import PersonalDataFilter
from alignloop.serve.pool import ModelPool


class Server:
    """Everything the routes share: config, registry, model pool, jobs, accepted keys (by role), the
    personal-data filter."""

    def __init__(self, cfg: ServeConfig, pool: ModelPool | None = None, registry: Registry | None = None,
                 jobs: JobManager | None = None):
        self.cfg = cfg
        self.db_url = cfg.db or default_db_url()
        self.reg = registry
        self.pool = pool
        self.jobs = jobs
        self.keys = KeyRing(cfg.keys(), cfg.admin_keys())
        self.budget = TokenBudget(cfg.key_tokens_per_minute)
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


def get_budget(srv: ServerDep) -> TokenBudget:
    return srv.budget


def get_role(request: Request) -> str:
    """The caller's role (``guard.ADMIN``, ``guard.INFERENCE``, or ``guard.OPEN`` on a server without keys)."""
    return getattr(request.state, "role", OPEN)


def get_caller(request: Request) -> str:
    """Who a request's answers and feedback are attributed to: its key (``key-`` and 10 hex digits of the
    key's SHA-256), or ``anonymous`` on a server without keys. Never a name the request gives itself."""
    key = getattr(request.state, "api_key_hash", None)
    return f"key-{key[:10]}" if key else "anonymous"


SettingsDep = Annotated[ServeConfig, Depends(get_settings)]
#: None when the app was built without a model (tests); the generation routes answer 503 then
PoolDep = Annotated[Optional[ModelPool], Depends(get_pool)]
RegistryDep = Annotated[Optional[Registry], Depends(get_registry)]
#: None without --jobs; the job routes answer 503 after checking the request, so a bad request is still a 422
JobsDep = Annotated[Optional[JobManager], Depends(get_jobs)]
AnswersDep = Annotated[ServedAnswers, Depends(get_answers)]
CallerDep = Annotated[str, Depends(get_caller)]
RoleDep = Annotated[str, Depends(get_role)]
BudgetDep = Annotated[TokenBudget, Depends(get_budget)]
