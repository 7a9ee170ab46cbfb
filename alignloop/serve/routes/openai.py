"""The OpenAI protocol: ``POST /v1/chat/completions`` (``stream: true`` answers with server-sent events),
``POST /v1/completions``, and ``POST /v1/predict`` (the library's ``model.predict`` over HTTP). Every answer is
kept (masked) under its response id for feedback. A request's work is bounded (``--max-request-tokens``), a full
queue answers 429, and a client that goes away has its generation cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from alignloop.data.readers import qa_prompt
from alignloop.data.records import Prompt
from alignloop.data.templates import encode_prompt
from alignloop.serve.batcher import Choice, GenRequest, submit
from alignloop.serve.capture import ServedAnswers
from alignloop.serve.config import ServeConfig
from alignloop.serve.deps import AnswersDep, BudgetDep, CallerDep, PoolDep, SettingsDep
from alignloop.serve.errors import ApiError
from alignloop.serve.guard import TokenBudget
from alignloop.serve.pool import LoadedModel, ModelPool
from alignloop.serve.schemas import ChatRequest, CompletionRequest, PredictRequest, SamplingRequest
from alignloop.serve.streaming import EventStream, cut_at_stop, stop_list, usage

router = APIRouter()


# ---- request checks -----------------------------------------------------------------------------------


def max_tokens_for(cfg: ServeConfig, req: SamplingRequest, max_tokens: int | None, prompts: int = 1) -> int:
    """The request's token limit (the server default when it sets none); 422 above the server's limits,
    including the request's whole work: prompts x n x max_tokens new tokens at most ``--max-request-tokens``."""
    mt = max_tokens if max_tokens is not None else cfg.default_max_tokens
    if mt > cfg.max_tokens_limit:
        raise ApiError(422, f"max_tokens is {mt}; this server allows at most {cfg.max_tokens_limit} "
                       "(--max-tokens-limit)", "max_tokens")
    if req.n > cfg.max_n:
        raise ApiError(422, f"n is {req.n}; this server allows at most {cfg.max_n} choices (--max-n)", "n")
    total = prompts * req.n * mt
    if total > cfg.max_request_tokens:
        raise ApiError(422, f"this request asks for up to {total} new tokens ({prompts} prompt(s) x n={req.n} x "
                       f"max_tokens={mt}); this server allows {cfg.max_request_tokens} per request "
                       "(--max-request-tokens): lower max_tokens or n, or send fewer prompts", "max_tokens",
                       "request_too_large")
    return mt


def charge(budget: TokenBudget, caller: str, tokens: int) -> None:
    """Charge a request's tokens (prompts x n x max_tokens) to its caller's budget; 429 when it has no room."""
    wait = budget.charge(caller, tokens)
    if wait is None:
        return
    per = budget.per_minute
    if math.isinf(wait):
        raise ApiError(429, f"this request asks for up to {tokens} new tokens, more than a key's {per} per minute "
                       "(--key-tokens-per-minute)", "max_tokens", "token_budget")
    raise ApiError(429, f"this key has asked for its {per} new tokens of the last minute (--key-tokens-per-minute); "
                   f"retry in {math.ceil(wait)} s", "max_tokens", "token_budget")


def check_prompt(cfg: ServeConfig, ids: list[int], param: str) -> None:
    """422 for a prompt of no tokens (the model cannot start from nothing) or of more than ``--max-prompt-tokens``."""
    if not ids:
        raise ApiError(422, f"the prompt is empty (no tokens); give the {param} some text", param, "empty_prompt")
    if len(ids) > cfg.max_prompt_tokens:
        raise ApiError(422, f"the prompt is {len(ids)} tokens; this server accepts at most "
                       f"{cfg.max_prompt_tokens} (--max-prompt-tokens). Shorten the {param}.", param,
                       "context_length_exceeded")


def content_text(content: Any) -> str:
    """A chat message's content as text: a string, or text parts (other part types are refused)."""
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


def chat_prompt(cfg: ServeConfig, lm: LoadedModel, req: ChatRequest) -> tuple[list[dict], list[int]]:
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": content_text(m.content)}
                for m in req.messages]
    ids = encode_prompt(lm.tokenizer, Prompt(messages), cfg.chat_template)
    check_prompt(cfg, ids, "messages")
    return messages, ids


# ---- generation -----------------------------------------------------------------------------------------


async def model_for(pool: ModelPool | None, ref: str) -> LoadedModel:
    if pool is None:
        raise ApiError(503, "no model loaded", type="server_error")
    return await run_in_threadpool(pool.get, ref)


async def _gone(request: Request) -> None:
    """Returns when the client disconnects (the body was read already: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def generate(request: Request, lm: LoadedModel, prompts: list[list[int]], req: SamplingRequest,
                   max_tokens: int) -> list[list[Choice]]:
    """Each prompt's choices, decoded by the model's batcher; 429 when its queue is full, and cancelled (499 to
    nobody) when the client disconnects first."""
    gens = [GenRequest(ids, max_tokens, req.temperature, req.top_p, req.top_k, req.n) for ids in prompts]
    futures = []
    try:
        for g in gens:
            futures.append(asyncio.wrap_future(submit(lm.batcher, g)))
    except ApiError:
        for g in gens:
            g.cancel()
        raise
    results = asyncio.gather(*futures)
    watcher = asyncio.ensure_future(_gone(request))
    try:
        await asyncio.wait({results, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not results.done():
        for g in gens:
            g.cancel()
        results.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await results
        raise ApiError(499, "the client disconnected; generation was cancelled", code="client_disconnected")
    return results.result()


def stream(lm: LoadedModel, req: SamplingRequest, prompt_ids: list[int], max_tokens: int, stops: list[str],
           kind: str, prompt_json: Any, answers: ServedAnswers, user: str) -> StreamingResponse:
    """Server-sent events; the answer is kept once the last event is sent (not when generation failed)."""
    events = EventStream(lm, req, prompt_ids, max_tokens, stops, kind)

    async def body():
        async for event in events.events():
            yield event
        if events.texts is not None:
            await run_in_threadpool(answers.keep, events.rid, lm.id, prompt_json, events.texts, user)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def decode(lm: LoadedModel, choice: Choice, stops: list[str]) -> tuple[str, str]:
    """A choice's text (cut at the first stop sequence) and its finish reason."""
    text, hit = cut_at_stop(lm.tokenizer.decode(choice.token_ids, skip_special_tokens=True), stops)
    return text, "stop" if hit else choice.finish_reason


# ---- routes -----------------------------------------------------------------------------------------------


@router.post("/chat/completions")
async def chat_completions(request: Request, req: ChatRequest, pool: PoolDep, cfg: SettingsDep, answers: AnswersDep,
                           caller: CallerDep, budget: BudgetDep):
    lm = await model_for(pool, req.model)
    max_tokens = max_tokens_for(cfg, req, req.max_completion_tokens or req.max_tokens)
    stops = stop_list(req.stop)
    messages, ids = chat_prompt(cfg, lm, req)
    charge(budget, caller, req.n * max_tokens)
    if req.stream:
        return stream(lm, req, ids, max_tokens, stops, "chat", messages, answers, req.user or caller)
    [choices] = await generate(request, lm, [ids], req, max_tokens)
    rid = "chatcmpl-" + secrets.token_hex(12)
    out, texts = [], []
    for k, c in enumerate(choices):
        text, finish = decode(lm, c, stops)
        texts.append(text)
        out.append({"index": k, "message": {"role": "assistant", "content": text}, "logprobs": None,
                    "finish_reason": finish})
    await run_in_threadpool(answers.keep, rid, lm.id, messages, texts, req.user or caller)
    return {"id": rid, "object": "chat.completion", "created": int(time.time()), "model": lm.id,
            "choices": out, "usage": usage(len(ids), choices)}


@router.post("/completions")
async def completions(request: Request, req: CompletionRequest, pool: PoolDep, cfg: SettingsDep,
                      answers: AnswersDep, caller: CallerDep, budget: BudgetDep):
    lm = await model_for(pool, req.model)
    stops = stop_list(req.stop)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts or len(prompts) * req.n > cfg.max_batch_size:
        raise ApiError(422, f"give 1 to {cfg.max_batch_size // req.n} prompts per request", "prompt")
    max_tokens = max_tokens_for(cfg, req, req.max_tokens, len(prompts))
    encoded = [lm.tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    for e in encoded:
        check_prompt(cfg, e, "prompt")
    charge(budget, caller, len(prompts) * req.n * max_tokens)
    if req.stream:
        if len(prompts) != 1:
            raise ApiError(422, "streaming takes one prompt per request", "prompt")
        return stream(lm, req, encoded[0], max_tokens, stops, "completion", prompts[0], answers, req.user or caller)
    results = await generate(request, lm, encoded, req, max_tokens)
    rid = "cmpl-" + secrets.token_hex(12)
    out, texts, all_choices = [], [], []
    for i, choices in enumerate(results):
        for k, c in enumerate(choices):
            text, finish = decode(lm, c, stops)
            texts.append(text)
            all_choices.append(c)
            out.append({"index": i * req.n + k, "text": text, "logprobs": None, "finish_reason": finish})
    await run_in_threadpool(answers.keep, rid, lm.id, prompts[0] if len(prompts) == 1 else prompts, texts,
                            req.user or caller)
    return {"id": rid, "object": "text_completion", "created": int(time.time()), "model": lm.id,
            "choices": out, "usage": usage(sum(len(e) for e in encoded), all_choices)}


@router.post("/predict")
async def predict(request: Request, req: PredictRequest, pool: PoolDep, cfg: SettingsDep, answers: AnswersDep,
                  caller: CallerDep, budget: BudgetDep):
    """The library's ``model.predict(question, context)`` over HTTP: the same prompt, greedy by default."""
    lm = await model_for(pool, req.model)
    sampling = SamplingRequest(model=req.model, temperature=req.temperature, n=1)
    max_tokens = max_tokens_for(cfg, sampling, req.max_tokens)
    prompt = qa_prompt(req.question, req.context)
    ids = encode_prompt(lm.tokenizer, prompt, cfg.chat_template)
    check_prompt(cfg, ids, "question and context")
    charge(budget, caller, max_tokens)
    [choices] = await generate(request, lm, [ids], sampling, max_tokens)
    answer = lm.tokenizer.decode(choices[0].token_ids, skip_special_tokens=True).strip()
    confidence = None
    if lm.abstention is not None:  # a trained loop/demo stage: decline where unsure, as model.predict does
        [[answer]], [[confidence]] = await run_in_threadpool(lm.abstention.apply, lm.model, lm.tokenizer, [prompt],
                                                             [[answer]])
    rid = "pred-" + secrets.token_hex(12)
    await run_in_threadpool(answers.keep, rid, lm.id, prompt.to_json(), [answer], req.user or caller)
    return {"id": rid, "object": "prediction", "model": lm.id, "answer": answer,
            "declined": confidence is not None and lm.abstention.declines(confidence),
            "confidence": confidence, "finish_reason": choices[0].finish_reason, "usage": usage(len(ids), choices)}
