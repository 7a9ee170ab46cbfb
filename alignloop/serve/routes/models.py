"""``GET /v1/models`` (served and registered models), ``/v1/models/{id}`` (with its registry record for an admin
key) and ``/v1/models/{id}/lineage`` (admin key only: ``guard.Guard`` answers 403 to the others).

What an inference key may read about models: the models it may use, as OpenAI model objects (id, name, when
made, whether loaded; for registered ones the stage and the parent). The registry record (the model's folder, its
run with the run's config, data hashes and metrics) and the lineage (data files, exports, labels) are an admin's.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from alignloop.serve.deps import PoolDep, RegistryDep, RoleDep, SettingsDep
from alignloop.serve.errors import ApiError
from alignloop.serve.guard import ADMIN

router = APIRouter(prefix="/models")


def _model_obj(mid: str, created: int, **extra: Any) -> dict:
    return {"id": mid, "object": "model", "created": created, "owned_by": "alignloop", **extra}


def _registered_obj(m: dict) -> dict:
    """A registered model (``Registry.list_models`` / ``show``) as any key may see it."""
    created = int(time.mktime(time.strptime(m["created_at"][:19], "%Y-%m-%dT%H:%M:%S")))
    return _model_obj(m["id"], created, name=m["name"], loaded=False, stage=m["stage"], parent_id=m["parent_id"])


@router.get("")
async def list_models(pool: PoolDep, reg: RegistryDep, cfg: SettingsDep):
    data, seen = [], set()
    if pool is not None:
        for lm in pool.models.values():
            data.append(_model_obj(lm.id, lm.created, name=lm.name, loaded=True))
            seen.add(lm.id)
    if reg is not None and cfg.allow_registry_models:
        for m in await run_in_threadpool(reg.list_models):
            if m["id"] not in seen:
                data.append(_registered_obj(m))
    return {"object": "list", "data": data}


@router.get("/{model_id:path}/lineage")
async def model_lineage(model_id: str, reg: RegistryDep):
    if reg is None:
        raise ApiError(404, "no registry", "model")
    try:
        return await run_in_threadpool(reg.lineage, model_id)
    except Exception as exc:
        raise ApiError(404, str(exc), "model", "model_not_found") from None


@router.get("/{model_id:path}")
async def get_model(model_id: str, pool: PoolDep, reg: RegistryDep, cfg: SettingsDep, role: RoleDep):
    """A model by id, name or alias. An admin key gets its registry record too, and any registered model; other
    callers get the models they may use (served ones; registered ones with --allow-registry-models)."""
    admin = role == ADMIN
    if pool is not None:
        for lm in pool.models.values():
            if model_id in pool.aliases(lm):
                if not admin:
                    return _model_obj(lm.id, lm.created, name=lm.name, loaded=True)
                info = {}
                if reg is not None and lm.id.startswith("m-"):
                    info = await run_in_threadpool(reg.show, lm.id)
                return _model_obj(lm.id, lm.created, name=lm.name, loaded=True, registry=info or None)
    if reg is not None and (admin or cfg.allow_registry_models):
        try:
            info = await run_in_threadpool(reg.show, model_id)
        except Exception:
            info = None
        if info:
            return {**_registered_obj(info), "registry": info} if admin else _registered_obj(info)
    raise ApiError(404, f"no model '{model_id}'", "model", "model_not_found")
