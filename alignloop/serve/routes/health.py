"""``GET /health``: outside ``/v1``, so it needs no API key (load balancers, the SDK's start-up wait)."""

from fastapi import APIRouter

from alignloop.serve.deps import PoolDep

router = APIRouter()


@router.get("/health")
async def health(pool: PoolDep):
    return {"status": "ok", "model": pool.default.id if pool else None}
