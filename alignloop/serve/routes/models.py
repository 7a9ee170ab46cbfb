"""``GET /v1/models`` (served and registered models), ``/v1/models/{id}`` (with its registry record) and
``/v1/models/{id}/lineage``."""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from alignloop.serve.deps import PoolDep, RegistryDep, SettingsDep
from alignloop.serve.errors import ApiError

router = APIRouter(prefix="/models")


def _model_obj(mid: str, created: int, **extra: Any) -> dict:
    return {"id": mid, "object": "model", "created": created, "owned_by": "alignloop", **extra}


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
                created = int(time.mktime(time.strptime(m["created_at"][:19], "%Y-%m-%dT%H:%M:%S")))
                data.append(_model_obj(m["id"], created, name=m["name"], loaded=False, stage=m["stage"],
                                       parent_id=m["parent_id"]))
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
async def get_model(model_id: str, pool: PoolDep, reg: RegistryDep):
    if pool is not None:
        for lm in pool.models.values():
            if model_id in pool.aliases(lm):
                info = {}
                if reg is not None and lm.id.startswith("m-"):
                    info = await run_in_threadpool(reg.show, lm.id)
                return _model_obj(lm.id, lm.created, name=lm.name, loaded=True, registry=info or None)
    if reg is not None:
        try:
            info = await run_in_threadpool(reg.show, model_id)
        except Exception:
            info = None
        if info:
            return _model_obj(info["id"], 0, name=info["name"], loaded=False, registry=info)
    raise ApiError(404, f"no model '{model_id}'", "model", "model_not_found")
