"""The HTTP routes, one module per resource; ``api_router`` is everything under ``/v1``."""

from fastapi import APIRouter

from alignloop.serve.routes import feedback, jobs, models, openai

api_router = APIRouter(prefix="/v1")
api_router.include_router(models.router)
api_router.include_router(openai.router)
api_router.include_router(feedback.router)
api_router.include_router(jobs.router)
