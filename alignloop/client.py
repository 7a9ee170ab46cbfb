"""The Python SDK: drive an ``alignloop serve`` server with the same names as the local library API.

    import alignloop
    client = alignloop.Client("http://127.0.0.1:8000", api_key="...", admin_key="...")  # admin_key: for train/jobs
    model_id = client.train("questions.jsonl", initial_model_id="tiny", model_name="qa-v1", fine_tuning_type="sft")
    answer = client.predict(model_id, "What was revenue in FY2022?", context="...")
    client.feedback(answer.id, thumbs="down", correction="Revenue was $394.3 billion.")
    client.models()

Only ``httpx`` is needed on the client side (no torch). Keys come from the arguments or the environment
(``$ALIGNLOOP_API_KEY``, ``$ALIGNLOOP_ADMIN_KEY``). The server's keys have roles (docs/security.md): training jobs
and a model's lineage need its admin key, which is sent with those calls only; with an inference key they raise
``AdminKeyRequired`` saying so. The server runs jobs only when started with ``--jobs``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import httpx

FINE_TUNING_TYPES = {"sft": "sft", "dpo": "dpo", "ppo": "ppo", "reward": "reward", "grpo": "grpo", "rloo": "rloo"}
TERMINAL = ("completed", "failed", "cancelled")


class ClientError(RuntimeError):
    """The server refused a request; ``status`` is the HTTP status and the message is the server's."""

    def __init__(self, status: int, message: str, body: Any = None):
        self.status, self.body = status, body
        super().__init__(f"HTTP {status}: {message}")


class AdminKeyRequired(ClientError):
    """A call that needs the server's admin key (training jobs, a model's lineage) was made with an inference key."""


class JobFailed(ClientError):
    def __init__(self, job: dict):
        self.job = job
        super().__init__(200, f"job {job['id']} {job['status']}: {job.get('error')}", job)


class Answer(str):
    """An answer string that also carries the id the server gave it (pass it to ``feedback``), and for a model that
    declines when unsure (a trained loop or demo stage) whether it ``declined`` and its ``confidence`` (the mean
    log-probability per answer token; None for other models)."""

    id: str
    model: str
    declined: bool
    confidence: float | None

    def __new__(cls, text: str, id: str, model: str = "", declined: bool = False,
                confidence: float | None = None) -> "Answer":
        obj = super().__new__(cls, text)
        obj.id, obj.model, obj.declined, obj.confidence = id, model, declined, confidence
        return obj


@dataclass
class Job:
    """A training job handle: ``status()``, ``logs()``, ``cancel()``, ``wait() -> model id``."""

    client: "Client"
    id: int

    def status(self) -> dict:
        return self.client._get(f"/v1/jobs/{self.id}", admin=True)

    def logs(self, offset: int = 0) -> str:
        return self.client._get(f"/v1/jobs/{self.id}/logs", params={"offset": offset}, admin=True)["text"]

    def cancel(self) -> dict:
        return self.client._post(f"/v1/jobs/{self.id}/cancel", {}, admin=True)

    def wait(self, timeout: float | None = None, poll: float = 0.5) -> str:
        """Block until the job ends; the new model's id, or ``JobFailed``."""
        start = time.monotonic()
        while True:
            job = self.status()
            if job["status"] in TERMINAL:
                if job["status"] != "completed":
                    raise JobFailed(job)
                return job["model_id"]
            if timeout is not None and time.monotonic() - start > timeout:
                raise TimeoutError(f"job {self.id} still {job['status']} after {timeout:.0f} s")
            time.sleep(poll)


@dataclass
class RemoteModel:
    """``client.load_model(name)``: a served model with the library's ``predict``."""

    client: "Client"
    id: str
    info: dict

    def predict(self, question: str, context: str | None = None, **kw: Any) -> Answer:
        return self.client.predict(self.id, question, context, **kw)


class Client:
    """``api_key``: the server's inference key (completions, predict, models, feedback); ``admin_key``: its admin
    key, sent with training jobs only (``train``, ``job``, ``jobs``). Either defaults to ``$ALIGNLOOP_API_KEY`` /
    ``$ALIGNLOOP_ADMIN_KEY``; with an admin key alone, it is sent with every request."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, timeout: float = 600.0,
                 admin_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        if self.base_url.endswith("/v1"):
            self.base_url = self.base_url[:-3]
        admin_key = admin_key or os.environ.get("ALIGNLOOP_ADMIN_KEY")
        api_key = api_key or os.environ.get("ALIGNLOOP_API_KEY") or admin_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._admin = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    # ---- plumbing -------------------------------------------------------------------------------
    def _check(self, r: httpx.Response, admin: bool = False) -> Any:
        if r.status_code >= 400:
            try:
                body = r.json()
                msg = body.get("error", {}).get("message") or body.get("detail") or r.text
            except (ValueError, AttributeError):
                body, msg = None, r.text
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else None
            if admin and r.status_code == 403 and code == "admin_key_required":
                raise AdminKeyRequired(403, self._needs_admin(str(msg)), body)
            raise ClientError(r.status_code, str(msg), body)
        return r.json()

    def _needs_admin(self, server_says: str) -> str:
        """The server's refusal, and what to do about it on this side."""
        if self._admin:
            return (f"{server_says}. The key given as admin_key is not one of the server's admin keys (it took it "
                    "for an inference key, or it has none)")
        return (f"{server_says}. This client has no admin key: pass alignloop.Client(..., admin_key=...) or set "
                "$ALIGNLOOP_ADMIN_KEY")

    def _get(self, path: str, admin: bool = False, **kw: Any) -> Any:
        return self._check(self.http.get(path, headers=self._admin if admin else None, **kw), admin)

    def _post(self, path: str, body: dict, admin: bool = False) -> Any:
        return self._check(self.http.post(path, json=body, headers=self._admin if admin else None), admin)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- the library API, remotely ----------------------------------------------------------------
    def models(self) -> list[dict]:
        """Models the server serves or can load (OpenAI ``/v1/models`` objects, with name and stage)."""
        return self._get("/v1/models")["data"]

    def load_model(self, name: str) -> RemoteModel:
        """A handle to a served or registered model (by id or name)."""
        info = self._get(f"/v1/models/{name}")
        return RemoteModel(self, info["id"], info)

    def lineage(self, model_id: str) -> dict:
        """The chain of runs, data and labels behind a model (the server's admin key: it names files and labels)."""
        return self._get(f"/v1/models/{model_id}/lineage", admin=True)

    def predict(self, model_id: str, question: str, context: str | None = None, max_tokens: int = 256,
                temperature: float = 0.0, user: str | None = None) -> Answer:
        """The model's answer to a question (greedy by default), with ``.id`` for feedback."""
        body = {"model": model_id, "question": question, "context": context, "max_tokens": max_tokens,
                "temperature": temperature}
        if user:
            body["user"] = user
        r = self._post("/v1/predict", body)
        return Answer(r["answer"], r["id"], r["model"], bool(r.get("declined", False)), r.get("confidence"))

    def train(self, train_data: str | os.PathLike | Iterable[dict], initial_model_id: str | None = None,
              model_name: str | None = None, fine_tuning_type: str = "sft", wait: bool = True,
              timeout: float | None = None, **config: Any) -> str | Job:
        """Train on labeled examples through the server; the new model's id (``wait=True``) or a ``Job``.

        Needs the server's admin key (``Client(admin_key=...)``; ``AdminKeyRequired`` with an inference key) and a
        server started with ``--jobs``.
        ``train_data``: records (dicts) or a local JSONL/JSON file, uploaded with the job. ``initial_model_id``:
        a registry id or name, or an alias (``tiny``). Other keyword arguments are the stage's config fields
        (``max_steps=20``, ``learning_rate=1e-5``, ``reward_model=...``) that a job may set: the server owns
        ``output`` and ``db``, reads files only under the job's folder or its ``--data-root`` folders, and runs only
        the ``python:`` rewards it registers (``--reward-function``); anything else is refused with the reason."""
        if fine_tuning_type not in FINE_TUNING_TYPES:
            raise ValueError(f"fine_tuning_type must be one of {', '.join(FINE_TUNING_TYPES)}, "
                             f"not '{fine_tuning_type}'")
        records = _records(train_data)
        cfg = dict(config)
        if initial_model_id:
            cfg["model"] = initial_model_id
        job = self._post("/v1/jobs", {"stage": FINE_TUNING_TYPES[fine_tuning_type], "config": cfg,
                                      "model_name": model_name, "data": records}, admin=True)
        handle = Job(self, job["id"])
        return handle.wait(timeout=timeout) if wait else handle

    def job(self, job_id: int) -> Job:
        return Job(self, job_id)

    def jobs(self) -> list[dict]:
        return self._get("/v1/jobs", admin=True)["data"]

    def feedback(self, response_id: str | None = None, thumbs: str | None = None, comment: str | None = None,
                 correction: str | None = None, compare: tuple[str, str] | None = None, choice: str | None = None,
                 user: str | None = None, choice_index: int = 0, idempotency_key: str | None = None) -> dict:
        """Feedback on a served answer (``thumbs="up"|"down"``, ``comment``, ``correction``: an edited better
        answer) or on two answers shown side by side (``compare=(id_a, id_b), choice="A"|"B"|"tie"|"both_bad"``).
        Stored as a judgment of kind "user"; returns its id and project."""
        body: dict[str, Any] = {"choice_index": choice_index}
        for k, v in (("response_id", response_id), ("thumbs", thumbs), ("comment", comment),
                     ("correction", correction), ("choice", choice), ("user", user),
                     ("idempotency_key", idempotency_key)):
            if v is not None:
                body[k] = v
        if compare is not None:
            body["compare"] = list(compare)
        return self._post("/v1/feedback", body)


def _records(data: Any) -> list[dict]:
    if isinstance(data, (str, os.PathLike)):
        p = Path(data)
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            rows = json.loads(text)
            return rows if isinstance(rows, list) else [rows]
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = list(data)
    if not all(isinstance(r, dict) for r in rows):
        raise TypeError("train_data must be a file path or a list of dicts")
    return rows
