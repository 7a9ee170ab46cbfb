"""``alignloop serve``: an OpenAI-compatible HTTP API over a registry model or a folder, with request batching,
user-feedback capture into the feedback store, and training jobs.

Endpoints (all under ``/v1``, API key as ``Authorization: Bearer KEY``):

* ``POST /chat/completions`` (``stream: true`` answers with server-sent events), ``POST /completions``,
  ``GET /models``, ``GET /models/{id}`` (with lineage) — the OpenAI protocol, so the ``openai`` client works.
* ``POST /predict`` ``{model, question, context}``: the library's ``model.predict`` over HTTP (same prompt).
* ``POST /feedback``: thumbs up/down, a comment, an edited better answer, or a choice between two served
  answers; stored as judgments of labeler kind "user" after masking personal data (``alignloop/pii.py``).
* ``POST /jobs``, ``GET /jobs``, ``GET /jobs/{id}``, ``GET /jobs/{id}/logs``, ``POST /jobs/{id}/cancel``.

Batching: each loaded model has a batcher thread. A request's rows wait in a queue; the batcher takes the
first, collects whatever else arrives within ``--batch-wait-ms`` (up to ``--max-batch-size`` rows) and decodes
them together with one ``generate`` call (``rollout.sample_ids``: left padding, KV cache), so concurrent
requests share every forward pass. A streamer hooked into ``generate`` hands each row its new token at every
step, which is how streaming works inside a batch. Rows with different sampling settings (temperature, top_p,
top_k) go in separate ``generate`` calls; a per-request ``seed`` is not honoured inside a shared batch.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import queue
import secrets
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from alignloop.core.errors import AlignloopError
from alignloop.generation.sampling import SamplingParams, sample_ids
from alignloop.serve.config import ServeConfig

# --------------------------------------------------------------------------------------------------
# Batched generation
# --------------------------------------------------------------------------------------------------


@dataclass
class GenRequest:
    """One request's rows (n choices of one prompt) with its own limits and callbacks."""

    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    n: int = 1
    #: called from the batcher thread with (choice index, token id) for every new token (streaming)
    on_token: Optional[Callable[[int, int], None]] = None
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)

    def key(self) -> tuple:
        return (round(self.temperature, 6), round(self.top_p, 6), self.top_k) if self.temperature > 0 else ("greedy",)


@dataclass
class Choice:
    token_ids: list[int]  # answer tokens without the stop token
    finish_reason: str  # "stop" | "length"


class _RowStreamer:
    """A transformers streamer for a whole batch: ``put`` gets the prompt once, then one token per row per step."""

    def __init__(self, rows: list[tuple[GenRequest, int]], stop_ids: list[int]):
        self.rows, self.stop = rows, set(stop_ids)
        self.count = [0] * len(rows)
        self.done = [False] * len(rows)
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        tokens = value.reshape(-1).tolist()
        for i, t in enumerate(tokens):
            if self.done[i]:
                continue
            req, k = self.rows[i]
            if t in self.stop:
                self.done[i] = True
                continue
            self.count[i] += 1
            if req.on_token is not None:
                req.on_token(k, int(t))
            if self.count[i] >= req.max_new_tokens:
                self.done[i] = True

    def end(self) -> None:
        pass


class _AllRowsDone:
    """Stopping criterion: a row is finished once it hit a stop token or its own request's max_tokens, so a
    short request in a batch with a long one does not make the whole batch decode to the longest limit."""

    def __init__(self, streamer: _RowStreamer):
        self.streamer = streamer

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        return torch.tensor(self.streamer.done, dtype=torch.bool, device=input_ids.device)


class Batcher:
    """Collects concurrent requests for a few ms and decodes them together (one ``generate`` per batch)."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 16, wait_ms: float = 10.0,
                 start: bool = True):
        from alignloop.data.templates import stop_token_ids

        self.model, self.tok = model, tokenizer
        self.max_batch_size, self.wait_s = max_batch_size, wait_ms / 1000.0
        self.stop_ids = stop_token_ids(tokenizer)
        self.queue: "queue.Queue[GenRequest | None]" = queue.Queue()
        self.stats = {"batches": 0, "rows": 0, "generate_calls": 0, "largest_batch": 0, "new_tokens": 0}
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="alignloop-batcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)

    def submit(self, req: GenRequest) -> concurrent.futures.Future:
        self.queue.put(req)
        return req.future

    def _collect(self) -> list[GenRequest] | None:
        first = self.queue.get()
        if first is None:
            return None
        batch, rows = [first], first.n
        deadline = time.monotonic() + self.wait_s
        while rows < self.max_batch_size:
            remaining = deadline - time.monotonic()
            try:
                nxt = self.queue.get(timeout=remaining) if remaining > 0 else self.queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self.queue.put(None)
                break
            batch.append(nxt)
            rows += nxt.n
        return batch

    def _loop(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self.run_batch(batch)

    def run_batch(self, batch: list[GenRequest]) -> None:
        """Decode a batch; requests with the same sampling settings share one ``generate`` call."""
        self.stats["batches"] += 1
        self.stats["rows"] += sum(r.n for r in batch)
        self.stats["largest_batch"] = max(self.stats["largest_batch"], sum(r.n for r in batch))
        groups: dict[tuple, list[GenRequest]] = {}
        for r in batch:
            groups.setdefault(r.key(), []).append(r)
        for reqs in groups.values():
            try:
                self._generate(reqs)
            except Exception as exc:  # one bad batch must not kill the server
                for r in reqs:
                    if not r.future.done():
                        r.future.set_exception(exc)

    def _generate(self, reqs: list[GenRequest]) -> None:
        from transformers import StoppingCriteriaList

        # rows sorted by prompt length (stable), so sample_ids keeps their order in its single batch
        rows = sorted([(r, k) for r in reqs for k in range(r.n)], key=lambda rk: len(rk[0].prompt_ids))
        first = reqs[0]
        params = SamplingParams(max_new_tokens=max(r.max_new_tokens for r in reqs), temperature=first.temperature,
                                top_p=first.top_p, top_k=first.top_k)
        streamer = _RowStreamer(rows, self.stop_ids)
        self.stats["generate_calls"] += 1
        out = sample_ids(self.model, self.tok, [r.prompt_ids for r, _ in rows], params, batch_size=len(rows),
                         streamer=streamer, stopping_criteria=StoppingCriteriaList([_AllRowsDone(streamer)]))
        results: dict[int, list[Choice | None]] = {id(r): [None] * r.n for r in reqs}
        for (r, k), (ids, ended) in zip(rows, out):
            ids = list(ids)
            stopped = bool(ids) and ids[-1] in self.stop_ids and len(ids) - 1 <= r.max_new_tokens
            if stopped:
                ids = ids[:-1]
            ids = [t for t in ids[:r.max_new_tokens] if t != self.tok.pad_token_id]
            results[id(r)][k] = Choice(ids, "stop" if stopped else "length")
            self.stats["new_tokens"] += len(ids)
        for r in reqs:
            r.future.set_result(results[id(r)])


# --------------------------------------------------------------------------------------------------
# Loaded models
# --------------------------------------------------------------------------------------------------


@dataclass
class LoadedModel:
    id: str  # registry id when registered, else the reference as given
    name: str
    path: str
    model: Any
    tokenizer: Any
    batcher: Batcher
    created: int = field(default_factory=lambda: int(time.time()))
    last_used: float = field(default_factory=time.monotonic)


class ModelPool:
    """The default model plus registry models loaded on first request (least recently used ones unloaded)."""

    def __init__(self, cfg: ServeConfig, registry: Any):
        self.cfg, self.reg = cfg, registry
        self.models: dict[str, LoadedModel] = {}
        self.lock = threading.Lock()
        self.default = self._load(cfg.model)

    def _load(self, ref: str) -> LoadedModel:
        from alignloop.models.load import load_causal_lm
        from alignloop.registry.store import resolve_model_ref

        path, model_id = resolve_model_ref(ref, self.cfg.db) if self.reg is not None else (ref, None)
        dtype = torch.bfloat16 if self.cfg.precision == "bf16" else torch.float32
        model, tok = load_causal_lm(path, dtype=dtype)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        model = model.to(device).eval()
        name = ref
        if model_id is not None and self.reg is not None:
            name = self.reg.find_model(model_id).name
        lm = LoadedModel(model_id or ref, name, str(path), model, tok,
                         Batcher(model, tok, self.cfg.max_batch_size, self.cfg.batch_wait_ms))
        self.models[lm.id] = lm
        return lm

    def aliases(self, lm: LoadedModel) -> set[str]:
        return {lm.id, lm.name, lm.path}

    def get(self, ref: str | None) -> LoadedModel:
        """The loaded model for a request's ``model`` field; loads a registry model when allowed."""
        if not ref:
            return self.default
        with self.lock:
            for lm in self.models.values():
                if ref in self.aliases(lm) or (lm is self.default and ref == self.cfg.model):
                    lm.last_used = time.monotonic()
                    return lm
            m = None
            if self.cfg.allow_registry_models and self.reg is not None:
                try:
                    m = self.reg.find_model(ref) if not Path(ref).exists() else None
                except Exception:
                    m = None
            if m is None:
                raise ApiError(404, f"model '{ref}' is not served here: this server serves '{self.default.id}'"
                               + (" and registered models (GET /v1/models)" if self.cfg.allow_registry_models else ""),
                               param="model", code="model_not_found")
            if m.id in self.models:
                return self.models[m.id]
            while len(self.models) >= self.cfg.max_loaded_models:
                victims = [x for x in self.models.values() if x is not self.default]
                if not victims:
                    break
                old = min(victims, key=lambda x: x.last_used)
                old.batcher.stop()
                del self.models[old.id]
            return self._load(m.id)

    def close(self) -> None:
        for lm in list(self.models.values()):
            lm.batcher.stop()


# --------------------------------------------------------------------------------------------------
# Request and response schemas (the OpenAI protocol; unknown fields are ignored as OpenAI does)
# --------------------------------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        super().__init__(message)


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class ChatMessage(_Lenient):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: Union[str, list[dict[str, Any]], None] = None


class StreamOptions(_Lenient):
    include_usage: bool = False


class _Sampling(_Lenient):
    model: str = ""
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    stop: Union[str, list[str], None] = None
    seed: Optional[int] = None
    user: Optional[str] = Field(None, max_length=200)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(16, ge=1)  # the OpenAI default for /completions


class PredictRequest(_Lenient):
    model: str = ""
    question: str = Field(..., min_length=1)
    context: Optional[str] = None
    max_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    user: Optional[str] = Field(None, max_length=200)


class FeedbackRequest(_Lenient):
    response_id: Optional[str] = None
    choice_index: int = Field(0, ge=0)
    thumbs: Optional[Literal["up", "down"]] = None
    comment: Optional[str] = Field(None, max_length=20_000)
    correction: Optional[str] = Field(None, max_length=20_000)
    compare: Optional[list[str]] = Field(None, min_length=2, max_length=2,
                                         description="two response ids (or id#choice_index) shown side by side")
    choice: Optional[Literal["A", "B", "tie", "both_bad"]] = None
    user: Optional[str] = Field(None, max_length=200)
    idempotency_key: Optional[str] = Field(None, max_length=100)


class JobRequest(_Lenient):
    stage: str = Field(..., description="sft, dpo, reward, ppo, grpo or rloo")
    config: dict[str, Any] = Field(default_factory=dict)
    model_name: Optional[str] = Field(None, max_length=200)
    data: Optional[list[dict[str, Any]]] = Field(None, description="training records, written to the job folder")
    data_field: Optional[str] = None


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for p in content:
        if p.get("type") not in ("text", "input_text"):
            raise ApiError(422, f"content part of type '{p.get('type')}' is not supported (text only)", "messages")
        parts.append(str(p.get("text", "")))
    return "".join(parts)


# --------------------------------------------------------------------------------------------------
# The app
# --------------------------------------------------------------------------------------------------


class Server:
    """Everything the routes share: config, registry, model pool, jobs, feedback settings."""

    def __init__(self, cfg: ServeConfig, pool: ModelPool | None = None, registry: Any = None, jobs: Any = None):
        from alignloop.serve.pii import PersonalDataFilter
        from alignloop.registry.store import default_db_url

        self.cfg = cfg
        self.db_url = cfg.db or default_db_url()
        self.reg = registry
        self.pool = pool
        self.jobs = jobs
        self.keys = {hashlib.sha256(k.encode()).hexdigest(): k for k in cfg.keys()}
        self.pii = PersonalDataFilter(cfg.mask_kinds())

    # ---- helpers --------------------------------------------------------------------------------
    def user_of(self, request: Request, explicit: str | None) -> str:
        if explicit:
            return explicit
        key = getattr(request.state, "api_key_hash", None)
        return f"key-{key[:10]}" if key else "anonymous"

    def limits(self, req: _Sampling, max_tokens: int | None) -> int:
        mt = max_tokens if max_tokens is not None else self.cfg.default_max_tokens
        if mt > self.cfg.max_tokens_limit:
            raise ApiError(422, f"max_tokens is {mt}; this server allows at most {self.cfg.max_tokens_limit} "
                           "(--max-tokens-limit)", "max_tokens")
        if req.n > self.cfg.max_n:
            raise ApiError(422, f"n is {req.n}; this server allows at most {self.cfg.max_n} choices (--max-n)", "n")
        return mt

    def check_prompt(self, ids: list[int], param: str) -> None:
        if len(ids) > self.cfg.max_prompt_tokens:
            raise ApiError(422, f"the prompt is {len(ids)} tokens; this server accepts at most "
                           f"{self.cfg.max_prompt_tokens} (--max-prompt-tokens). Shorten the {param}.", param,
                           "context_length_exceeded")

    def store_answer(self, answer_id: str, model_id: str, prompt: Any, answers: list[str], user: str) -> None:
        if not self.cfg.store_answers or self.reg is None:
            return
        from alignloop.registry.store import ServedAnswer, utcnow

        try:
            with self.reg.write() as s:
                s.add(ServedAnswer(id=answer_id, model_id=model_id, prompt=self.pii.mask_any(prompt),
                                   answers=[self.pii.mask(a) for a in answers], user=user, created_at=utcnow()))
        except Exception as exc:  # serving must go on even if the database hiccups
            print(f"warning: could not store served answer {answer_id}: {exc}", file=sys.stderr)


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


def _stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise ApiError(422, "at most 4 stop sequences", "stop")
    return [s for s in stops if s]


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    if not hits:
        return text, False
    return text[:min(hits)], True


class _Decoder:
    """Incremental detokenisation of one choice: emits only complete characters."""

    def __init__(self, tok: Any, stops: list[str]):
        self.tok, self.stops = tok, stops
        self.ids: list[int] = []
        self.sent = ""
        self.stopped = False

    def add(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        text = self.tok.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):  # half a multi-byte character: wait for the rest
            return ""
        text, hit = _cut_at_stop(text, self.stops)
        if hit:
            self.stopped = True
        # hold back a tail that could be the start of a stop sequence
        hold = 0
        if not hit:
            for s in self.stops:
                for k in range(min(len(s) - 1, len(text)), 0, -1):
                    if text.endswith(s[:k]):
                        hold = max(hold, k)
                        break
        visible = text[:len(text) - hold] if hold else text
        delta = visible[len(self.sent):] if visible.startswith(self.sent) else ""
        self.sent = visible if visible.startswith(self.sent) else self.sent
        return delta

    def final_text(self, ids: list[int]) -> tuple[str, bool]:
        text = self.tok.decode(ids, skip_special_tokens=True)
        return _cut_at_stop(text, self.stops)


def create_app(cfg: ServeConfig, pool: ModelPool | None = None, registry: Any = None, jobs: Any = None,
               start_background: bool = True) -> FastAPI:
    """The FastAPI app. ``run_serve`` builds the pool, registry and job manager; tests may pass their own."""
    from contextlib import asynccontextmanager

    srv = Server(cfg, pool, registry, jobs)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if srv.jobs is not None and start_background:
            srv.jobs.start()
        yield
        if srv.jobs is not None and start_background:
            await run_in_threadpool(srv.jobs.stop)

    app = FastAPI(title="alignloop serve", version="0.1.0", lifespan=lifespan)
    app.state.server = srv

    # ---- errors in the OpenAI shape -------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return _error(exc.status, exc.message, exc.param, exc.code, exc.type)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            problems.append(f"{loc or 'body'}: {e.get('msg')}")
        first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
        param = ".".join(str(x) for x in first if x != "body") or None
        return _error(422, "; ".join(problems), param, "invalid_value")

    # ---- size limits and API keys (one middleware: cheap checks before the body is read) --------
    @app.middleware("http")
    async def _guard(request: Request, call_next):
        path = request.url.path
        if path.startswith("/v1"):
            if srv.keys:
                auth = request.headers.get("authorization", "")
                key = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
                digest = hashlib.sha256(key.encode()).hexdigest() if key else ""
                if not key:
                    return _error(401, "no API key: send 'Authorization: Bearer YOUR_KEY'", code="missing_api_key")
                if not any(secrets.compare_digest(digest, h) for h in srv.keys):
                    return _error(401, "incorrect API key provided", code="invalid_api_key")
                request.state.api_key_hash = digest
            limit = cfg.max_upload_bytes if path.startswith("/v1/jobs") else cfg.max_request_bytes
            size = request.headers.get("content-length")
            if size is not None and size.isdigit() and int(size) > limit:
                return _error(413, f"request body is {int(size)} bytes; the limit for {path} is {limit} bytes "
                              f"({'--max-upload-bytes' if path.startswith('/v1/jobs') else '--max-request-bytes'})",
                              code="request_too_large")
            if size is None and request.method == "POST":
                body = await request.body()  # chunked upload: read it (starlette caches it) and measure
                if len(body) > limit:
                    return _error(413, f"request body is over the {limit}-byte limit for {path}",
                                  code="request_too_large")
        return await call_next(request)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": srv.pool.default.id if srv.pool else None}

    # ---- models -----------------------------------------------------------------------------------
    def _model_obj(mid: str, created: int, **extra: Any) -> dict:
        return {"id": mid, "object": "model", "created": created, "owned_by": "alignloop", **extra}

    @app.get("/v1/models")
    async def list_models():
        data, seen = [], set()
        if srv.pool is not None:
            for lm in srv.pool.models.values():
                data.append(_model_obj(lm.id, lm.created, name=lm.name, loaded=True))
                seen.add(lm.id)
        if srv.reg is not None and cfg.allow_registry_models:
            for m in await run_in_threadpool(srv.reg.list_models):
                if m["id"] not in seen:
                    created = int(time.mktime(time.strptime(m["created_at"][:19], "%Y-%m-%dT%H:%M:%S")))
                    data.append(_model_obj(m["id"], created, name=m["name"], loaded=False, stage=m["stage"],
                                           parent_id=m["parent_id"]))
        return {"object": "list", "data": data}

    @app.get("/v1/models/{model_id:path}/lineage")
    async def model_lineage(model_id: str):
        if srv.reg is None:
            raise ApiError(404, "no registry", "model")
        try:
            return await run_in_threadpool(srv.reg.lineage, model_id)
        except Exception as exc:
            raise ApiError(404, str(exc), "model", "model_not_found") from None

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str):
        if srv.pool is not None:
            for lm in srv.pool.models.values():
                if model_id in srv.pool.aliases(lm):
                    info = {}
                    if srv.reg is not None and lm.id.startswith("m-"):
                        info = await run_in_threadpool(srv.reg.show, lm.id)
                    return _model_obj(lm.id, lm.created, name=lm.name, loaded=True, registry=info or None)
        if srv.reg is not None:
            try:
                info = await run_in_threadpool(srv.reg.show, model_id)
            except Exception:
                info = None
            if info:
                return _model_obj(info["id"], 0, name=info["name"], loaded=False, registry=info)
        raise ApiError(404, f"no model '{model_id}'", "model", "model_not_found")

    # ---- generation ---------------------------------------------------------------------------------
    async def _model_for(ref: str) -> LoadedModel:
        if srv.pool is None:
            raise ApiError(503, "no model loaded", type="server_error")
        return await run_in_threadpool(srv.pool.get, ref)

    async def _generate(lm: LoadedModel, prompt_ids: list[int], req: _Sampling, max_tokens: int,
                        on_token: Callable | None = None) -> list[Choice]:
        g = GenRequest(prompt_ids, max_tokens, req.temperature, req.top_p, req.top_k, req.n, on_token)
        return await asyncio.wrap_future(lm.batcher.submit(g))

    def _chat_prompt(lm: LoadedModel, req: ChatRequest) -> tuple[list[dict], list[int]]:
        from alignloop.data.records import Prompt
        from alignloop.data.templates import encode_prompt

        messages = [{"role": "system" if m.role == "developer" else m.role, "content": _content_text(m.content)}
                    for m in req.messages]
        ids = encode_prompt(lm.tokenizer, Prompt(messages), cfg.chat_template)
        srv.check_prompt(ids, "messages")
        return messages, ids

    def _usage(prompt_tokens: int, choices: list[Choice]) -> dict:
        c = sum(len(x.token_ids) for x in choices)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": c, "total_tokens": prompt_tokens + c}

    def _stream(lm: LoadedModel, request: Request, req: _Sampling, prompt_ids: list[int], max_tokens: int,
                stops: list[str], kind: str, prompt_json: Any) -> StreamingResponse:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        created = int(time.time())
        obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        decoders = [_Decoder(lm.tokenizer, stops) for _ in range(req.n)]
        user = srv.user_of(request, req.user)

        def on_token(k: int, t: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, ("token", k, t))

        fut = lm.batcher.submit(GenRequest(prompt_ids, max_tokens, req.temperature, req.top_p, req.top_k, req.n,
                                           on_token))
        fut.add_done_callback(lambda f: loop.call_soon_threadsafe(events.put_nowait, ("done", None, None)))

        def chunk(k: int, delta: str | None, finish: str | None, role: bool = False) -> str:
            if kind == "chat":
                d: dict = {}
                if role:
                    d["role"] = "assistant"
                if delta:
                    d["content"] = delta
                body = {"id": rid, "object": obj, "created": created, "model": lm.id,
                        "choices": [{"index": k, "delta": d, "logprobs": None, "finish_reason": finish}]}
            else:
                body = {"id": rid, "object": obj, "created": created, "model": lm.id,
                        "choices": [{"index": k, "text": delta or "", "logprobs": None, "finish_reason": finish}]}
            return f"data: {json.dumps(body)}\n\n"

        async def gen():
            if kind == "chat":
                for k in range(req.n):
                    yield chunk(k, "", None, role=True)
            while True:
                ev, k, t = await events.get()
                if ev == "token":
                    delta = decoders[k].add(t)
                    if delta:
                        yield chunk(k, delta, None)
                    continue
                break
            try:
                choices = fut.result()
            except Exception as exc:
                err = {"error": {"message": f"generation failed: {exc}", "type": "server_error"}}
                yield f"data: {json.dumps(err)}\n\n"
                return
            texts = []
            for k, c in enumerate(choices):
                full, hit = decoders[k].final_text(c.token_ids)
                rest = full[len(decoders[k].sent):] if full.startswith(decoders[k].sent) else ""
                if rest:
                    yield chunk(k, rest, None)
                texts.append(full)
                yield chunk(k, None, "stop" if hit else c.finish_reason)
            if req.stream_options is not None and req.stream_options.include_usage:
                body = {"id": rid, "object": obj, "created": created, "model": lm.id, "choices": [],
                        "usage": _usage(len(prompt_ids), choices)}
                yield f"data: {json.dumps(body)}\n\n"
            yield "data: [DONE]\n\n"
            await run_in_threadpool(srv.store_answer, rid, lm.id, prompt_json, texts, user)

        return StreamingResponse(gen(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/chat/completions")
    async def chat_completions(req: ChatRequest, request: Request):
        lm = await _model_for(req.model)
        max_tokens = srv.limits(req, req.max_completion_tokens or req.max_tokens)
        stops = _stop_list(req.stop)
        messages, ids = _chat_prompt(lm, req)
        if req.stream:
            return _stream(lm, request, req, ids, max_tokens, stops, "chat", messages)
        choices = await _generate(lm, ids, req, max_tokens)
        rid = "chatcmpl-" + secrets.token_hex(12)
        out, texts = [], []
        for k, c in enumerate(choices):
            text, hit = _cut_at_stop(lm.tokenizer.decode(c.token_ids, skip_special_tokens=True), stops)
            texts.append(text)
            out.append({"index": k, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": "stop" if hit else c.finish_reason})
        await run_in_threadpool(srv.store_answer, rid, lm.id, messages, texts, srv.user_of(request, req.user))
        return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": lm.id,
                "choices": out, "usage": _usage(len(ids), choices)}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        lm = await _model_for(req.model)
        max_tokens = srv.limits(req, req.max_tokens)
        stops = _stop_list(req.stop)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts or len(prompts) * req.n > cfg.max_batch_size:
            raise ApiError(422, f"give 1 to {cfg.max_batch_size // req.n} prompts per request", "prompt")
        encoded = [lm.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
        for e in encoded:
            srv.check_prompt(e, "prompt")
        if req.stream:
            if len(prompts) != 1:
                raise ApiError(422, "streaming takes one prompt per request", "prompt")
            return _stream(lm, request, req, encoded[0], max_tokens, stops, "completion", prompts[0])
        results = await asyncio.gather(*[_generate(lm, e, req, max_tokens) for e in encoded])
        rid = "cmpl-" + secrets.token_hex(12)
        out, texts, all_choices = [], [], []
        for i, choices in enumerate(results):
            for k, c in enumerate(choices):
                text, hit = _cut_at_stop(lm.tokenizer.decode(c.token_ids, skip_special_tokens=True), stops)
                texts.append(text)
                all_choices.append(c)
                out.append({"index": i * req.n + k, "text": text, "logprobs": None,
                            "finish_reason": "stop" if hit else c.finish_reason})
        await run_in_threadpool(srv.store_answer, rid, lm.id, prompts[0] if len(prompts) == 1 else prompts, texts,
                                srv.user_of(request, req.user))
        return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": lm.id,
                "choices": out, "usage": _usage(sum(len(e) for e in encoded), all_choices)}

    @app.post("/v1/predict")
    async def predict(req: PredictRequest, request: Request):
        """The library's ``model.predict(question, context)`` over HTTP: the same prompt, greedy by default."""
        from alignloop.data.readers import qa_prompt
        from alignloop.data.templates import encode_prompt

        lm = await _model_for(req.model)
        sampling = _Sampling(model=req.model, temperature=req.temperature, n=1)
        max_tokens = srv.limits(sampling, req.max_tokens)
        prompt = qa_prompt(req.question, req.context)
        ids = encode_prompt(lm.tokenizer, prompt, cfg.chat_template)
        srv.check_prompt(ids, "question and context")
        choices = await _generate(lm, ids, sampling, max_tokens)
        answer = lm.tokenizer.decode(choices[0].token_ids, skip_special_tokens=True).strip()
        rid = "pred-" + secrets.token_hex(12)
        await run_in_threadpool(srv.store_answer, rid, lm.id, prompt.to_json(), [answer], srv.user_of(request, req.user))
        return {"id": rid, "object": "prediction", "model": lm.id, "answer": answer,
                "finish_reason": choices[0].finish_reason, "usage": _usage(len(ids), choices)}

    # ---- feedback from use ------------------------------------------------------------------------
    def _served(ref: str) -> tuple[Any, str, int]:
        from alignloop.registry.store import ServedAnswer

        rid, _, idx = ref.partition("#")
        with srv.reg.read() as s:
            row = s.get(ServedAnswer, rid)
            if row is None:
                raise ApiError(404, f"no served answer '{rid}' (answers are kept only with --store-answers)",
                               "response_id", "answer_not_found")
            s.expunge(row)
        return row, rid, int(idx) if idx.isdigit() else 0

    def _feedback(req: FeedbackRequest, user: str) -> dict:
        from alignloop.serve.app import capture as fb

        mask = srv.pii.mask
        comment = mask(req.comment) if req.comment else None
        correction = mask(req.correction) if req.correction else None
        if req.compare:
            if req.choice is None:
                raise ApiError(422, "compare needs a choice: A (the first answer), B, tie or both_bad", "choice")
            (a, ida, ka), (b, idb, kb) = _served(req.compare[0]), _served(req.compare[1])
            if json.dumps(a.prompt, sort_keys=True) != json.dumps(b.prompt, sort_keys=True):
                raise ApiError(422, "the two answers were given to different prompts", "compare")
            for row, k, ref in ((a, ka, req.compare[0]), (b, kb, req.compare[1])):
                if k >= len(row.answers):
                    raise ApiError(422, f"{ref}: no choice {k}", "compare")
            return fb.add_choice_feedback(srv.db_url, cfg.feedback_project, f"{ida}#{ka}|{idb}#{kb}", a.prompt,
                                          [a.answers[ka], b.answers[kb]], [a.model_id, b.model_id], user,
                                          req.choice, comment, req.idempotency_key)
        if not req.response_id:
            raise ApiError(422, "give response_id (with thumbs and/or correction) or compare (with choice)", "response_id")
        row, rid, _ = _served(req.response_id)
        k = req.choice_index
        if k >= len(row.answers):
            raise ApiError(422, f"answer {rid} has {len(row.answers)} choice(s); choice_index {k} is out of range",
                           "choice_index")
        if req.thumbs is None and correction is None:
            raise ApiError(422, "feedback needs thumbs ('up'/'down') or a correction (an edited better answer); "
                           "a comment goes with one of them", "thumbs")
        return fb.add_answer_feedback(srv.db_url, cfg.feedback_project, f"{rid}#{k}" if len(row.answers) > 1 else rid,
                                      row.prompt, row.answers[k], row.model_id, user, req.thumbs, correction,
                                      comment, req.idempotency_key)

    @app.post("/v1/feedback", status_code=201)
    async def feedback(req: FeedbackRequest, request: Request):
        from alignloop.serve.app import capture as fb

        if srv.reg is None:
            raise ApiError(503, "feedback needs the database", type="server_error")
        user = srv.user_of(request, req.user)
        try:
            result = await run_in_threadpool(_feedback, req, user)
        except fb.FeedbackUnavailable as exc:
            raise ApiError(501, str(exc), type="server_error") from None
        except fb.store_error_types() as exc:  # the studio's own validation: 404/409/422 with its message
            raise ApiError(getattr(exc, "status", 400), str(exc), getattr(exc, "field", None)) from None
        except AlignloopError as exc:  # e.g. a served prompt the studio cannot import
            raise ApiError(422, str(exc)) from None
        return {"object": "feedback", **result}

    # ---- jobs -----------------------------------------------------------------------------------------
    def _jobs():
        if srv.jobs is None:
            raise ApiError(503, "this server does not run jobs (started with --no-jobs)", type="server_error")
        return srv.jobs

    @app.post("/v1/jobs", status_code=201)
    async def submit_job(req: JobRequest):
        from alignloop.serve.jobs import JobError

        config = dict(req.config)
        if "model" in config and srv.reg is not None:  # a registry id or name → its folder
            from alignloop.registry.store import resolve_model_ref

            config["model"] = (await run_in_threadpool(resolve_model_ref, str(config["model"]), srv.db_url))[0]
        try:
            return await run_in_threadpool(_jobs().submit, req.stage, config, req.model_name, req.data, req.data_field)
        except JobError as exc:
            raise ApiError(exc.status, "invalid job: " + "; ".join(exc.problems), "config") from None

    @app.get("/v1/jobs")
    async def list_jobs():
        return {"object": "list", "data": await run_in_threadpool(_jobs().list)}

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: int):
        j = await run_in_threadpool(_jobs().get, job_id)
        if j is None:
            raise ApiError(404, f"no job {job_id}", "job_id", "job_not_found")
        return j

    @app.get("/v1/jobs/{job_id}/logs")
    async def job_logs(job_id: int, offset: int = 0):
        out = await run_in_threadpool(_jobs().log, job_id, max(0, offset))
        if out is None:
            raise ApiError(404, f"no job {job_id}", "job_id", "job_not_found")
        return {"job_id": job_id, "text": out[0], "next_offset": out[1]}

    @app.post("/v1/jobs/{job_id}/cancel")
    async def cancel_job(job_id: int):
        j = await run_in_threadpool(_jobs().cancel, job_id)
        if j is None:
            raise ApiError(404, f"no job {job_id}", "job_id", "job_not_found")
        return j

    return app


def build(cfg: ServeConfig, load_model: bool = True) -> tuple[FastAPI, Server]:
    """Registry, model pool, job manager and app for a config."""
    from alignloop.core.paths import alignloop_home
    from alignloop.serve.jobs import JobManager
    from alignloop.registry.store import open_registry

    reg = open_registry(cfg.db)
    pool = ModelPool(cfg, reg) if load_model else None
    jobs = None
    if cfg.jobs:
        folder = Path(cfg.jobs_folder) if cfg.jobs_folder else alignloop_home() / "jobs"
        jobs = JobManager(reg, folder, resume_interrupted=cfg.resume_interrupted_jobs)
    app = create_app(cfg, pool, reg, jobs)
    return app, app.state.server


def run_serve(cfg: ServeConfig) -> int:
    import uvicorn

    from alignloop.core.errors import AlignloopError

    try:
        app, srv = build(cfg)
    except AlignloopError:
        raise
    except Exception as exc:
        raise AlignloopError(f"cannot start the server: {exc.__class__.__name__}: {exc}") from None
    if not srv.keys:
        print("warning: no API key set (--api-key or $ALIGNLOOP_API_KEYS): anyone who can reach "
              f"{cfg.host}:{cfg.port} can use this server", file=sys.stderr)
    print(f"serving {srv.pool.default.id} on http://{cfg.host}:{cfg.port}/v1 (database {srv.db_url})",
          file=sys.stderr, flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    srv.pool.close()
    return 0
