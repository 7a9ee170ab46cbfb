"""From token ids to OpenAI text: stop sequences, incremental detokenisation, and server-sent events for
``stream: true`` (the batcher hands each row its new token at every step; they become ``data:`` chunks here)."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from typing import Any, AsyncIterator

from alignloop.serve.batcher import Choice, GenRequest, submit
from alignloop.serve.errors import ApiError
from alignloop.serve.pool import LoadedModel
from alignloop.serve.schemas import SamplingRequest


def stop_list(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    if len(stops) > 4:
        raise ApiError(422, "at most 4 stop sequences", "stop")
    return [s for s in stops if s]


def cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    if not hits:
        return text, False
    return text[:min(hits)], True


def usage(prompt_tokens: int, choices: list[Choice]) -> dict:
    c = sum(len(x.token_ids) for x in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": c, "total_tokens": prompt_tokens + c}


class Decoder:
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
        text, hit = cut_at_stop(text, self.stops)
        if hit:
            self.stopped = True
        visible = text[:len(text) - self._held_back(text)] if not hit else text
        delta = visible[len(self.sent):] if visible.startswith(self.sent) else ""
        self.sent = visible if visible.startswith(self.sent) else self.sent
        return delta

    def _held_back(self, text: str) -> int:
        """Length of the tail that could be the start of a stop sequence (not sent until it is decided)."""
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(text)), 0, -1):
                if text.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        return hold

    def final_text(self, ids: list[int]) -> tuple[str, bool]:
        text = self.tok.decode(ids, skip_special_tokens=True)
        return cut_at_stop(text, self.stops)


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body)}\n\n"


class EventStream:
    """One streamed request. Submitting it queues the rows on the model's batcher at once; ``events()`` then
    yields the ``data:`` chunks as tokens arrive, and sets ``texts`` (the final answers) when it ends well."""

    def __init__(self, lm: LoadedModel, req: SamplingRequest, prompt_ids: list[int], max_tokens: int,
                 stops: list[str], kind: str):
        self.lm, self.n, self.kind, self.prompt_tokens = lm, req.n, kind, len(prompt_ids)
        self.include_usage = req.stream_options is not None and req.stream_options.include_usage
        self.rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
        self.created = int(time.time())
        self.obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
        self.decoders = [Decoder(lm.tokenizer, stops) for _ in range(req.n)]
        self.texts: list[str] | None = None
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

        def on_token(k: int, t: int) -> None:  # called from the batcher thread
            loop.call_soon_threadsafe(self.queue.put_nowait, ("token", k, t))

        self.gen = GenRequest(prompt_ids, max_tokens, req.temperature, req.top_p, req.top_k, req.n, on_token)
        self.future = submit(lm.batcher, self.gen)
        self.future.add_done_callback(lambda f: loop.call_soon_threadsafe(self.queue.put_nowait, ("done", None, None)))

    def chunk(self, k: int, delta: str | None, finish: str | None, role: bool = False) -> str:
        if self.kind == "chat":
            d: dict = {}
            if role:
                d["role"] = "assistant"
            if delta:
                d["content"] = delta
            choice = {"index": k, "delta": d, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": k, "text": delta or "", "logprobs": None, "finish_reason": finish}
        return _sse({"id": self.rid, "object": self.obj, "created": self.created, "model": self.lm.id,
                     "choices": [choice]})

    async def events(self) -> AsyncIterator[str]:
        """The events; when the client goes away first (the generator is cancelled or closed), the
        generation is cancelled too."""
        try:
            async for event in self._events():
                yield event
        finally:
            if not self.future.done():
                self.gen.cancel()

    async def _events(self) -> AsyncIterator[str]:
        if self.kind == "chat":
            for k in range(self.n):
                yield self.chunk(k, "", None, role=True)
        while True:
            ev, k, t = await self.queue.get()
            if ev != "token":
                break
            delta = self.decoders[k].add(t)
            if delta:
                yield self.chunk(k, delta, None)
        try:
            choices = self.future.result()
        except Exception as exc:
            yield _sse({"error": {"message": f"generation failed: {exc}", "type": "server_error"}})
            return
        texts = []
        for k, c in enumerate(choices):
            full, hit = self.decoders[k].final_text(c.token_ids)
            sent = self.decoders[k].sent
            rest = full[len(sent):] if full.startswith(sent) else ""
            if rest:
                yield self.chunk(k, rest, None)
            texts.append(full)
            yield self.chunk(k, None, "stop" if hit else c.finish_reason)
        if self.include_usage:
            yield _sse({"id": self.rid, "object": self.obj, "created": self.created, "model": self.lm.id,
                        "choices": [], "usage": usage(self.prompt_tokens, choices)})
        yield "data: [DONE]\n\n"
        self.texts = texts
