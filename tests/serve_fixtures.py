"""The serve tests' fixtures (tests/unit/serve/conftest.py re-exports them): a model server in process with the
tiny model loaded (once per session) and a seeded database: a registered model, a served answer to give feedback
on, a queued job. The route matrix and the OpenAPI fuzzing use it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

KEY, ADMIN_KEY = "matrix-inference-key", "matrix-admin-key"
LOCAL = "http://127.0.0.1"  # a trusted host (TestClient's default, testserver, is not)
REGISTERED = "m-0123abcd"  # a registered model (not served: --allow-registry-models is off)
ANSWER = "chatcmpl-seeded"


@pytest.fixture(scope="session")
def tiny_pool(tiny_path):
    """The tiny model behind a real batcher, served as ``tiny``; answers are a few tokens, so a call takes ms."""
    from alignloop.serve.config import ServeConfig
    from alignloop.serve.pool import ModelPool

    pool = ModelPool(ServeConfig(model="tiny", batch_wait_ms=0).validate(), None)
    yield pool
    pool.close()


@dataclass
class Served:
    app: Any
    reg: Any
    jobs: Any
    job_id: int | None
    folder: Path


def serve_app(folder: Path, pool: Any, keys: bool = True, **options: Any) -> Served:
    """An app over a fresh database in ``folder``: with an inference key and an admin key (and jobs on), or
    without any key (and so without jobs, as ``alignloop serve`` builds it)."""
    from alignloop.registry.store import ModelRow, Registry, ServedAnswer, utcnow
    from alignloop.serve.app import create_app
    from alignloop.serve.config import ServeConfig
    from alignloop.serve.jobs import JobManager

    folder.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{folder / 'serve.db'}"
    settings: dict[str, Any] = {"model": "tiny", "db": db, "docs": True, "max_tokens_limit": 8,
                                "default_max_tokens": 2, "max_request_tokens": 32, "max_prompt_tokens": 256,
                                **options}
    if keys:
        settings.update(api_key=[KEY], admin_key=[ADMIN_KEY], jobs=True)
    cfg = ServeConfig(**settings).validate()
    reg = Registry(db)
    with reg.write() as s:
        s.add(ModelRow(id=REGISTERED, name="qa-v1", path=str(folder / "runs" / "qa" / "final"), stage="sft",
                       base_model="tiny", created_at=utcnow()))
        s.add(ServedAnswer(id=ANSWER, model_id="tiny", prompt=[{"role": "user", "content": "2+2?"}], answers=["4"],
                           user="u", created_at=utcnow()))
    jobs, job_id = None, None
    if keys:
        jobs = JobManager(reg, folder / "jobs")
        job_id = jobs.submit("sft", {"model": "tiny"}, data_records=[{"prompt": "q", "completion": "a"}])["id"]
    app = create_app(cfg, pool, reg, jobs, start_background=False)
    return Served(app, reg, jobs, job_id, folder)
