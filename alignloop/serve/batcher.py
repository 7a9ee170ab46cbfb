"""Request batching: each loaded model has a batcher thread. A request's rows wait in a queue; the batcher takes
the first, collects whatever else arrives within ``--batch-wait-ms`` (up to ``--max-batch-size`` rows) and decodes
them together with one ``generate`` call (``sample_ids``: left padding, KV cache), so concurrent requests share
every forward pass. A streamer hooked into ``generate`` hands each row its new token at every step, which is how
streaming works inside a batch. Rows with different sampling settings (temperature, top_p, top_k) go in separate
``generate`` calls; a per-request ``seed`` is not honoured inside a shared batch.

The queue is bounded (``max_queue`` requests; ``submit`` raises ``Busy`` beyond it, which the routes answer with
429), and a request can be cancelled (its client went away): a cancelled request still waiting is dropped, and a
row being decoded is finished at the next step (the stopping criterion checks it), so at most one more forward
pass is spent on it.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

from alignloop.data.templates import stop_token_ids
from alignloop.generation.sampling import GREEDY_BELOW, SamplingParams, sample_ids
from alignloop.serve.errors import ApiError


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
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    def cancel(self) -> None:
        """Stop decoding this request (its client went away); safe from any thread."""
        self._cancelled.set()

    def cancelled(self) -> bool:
        return self._cancelled.is_set() or self.future.cancelled()

    def key(self) -> tuple:
        greedy = self.temperature < GREEDY_BELOW
        return ("greedy",) if greedy else (round(self.temperature, 6), round(self.top_p, 6), self.top_k)


@dataclass
class Choice:
    token_ids: list[int]  # answer tokens without the stop token
    finish_reason: str  # "stop" | "length" | "cancelled" (the client went away)


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
            if t in self.stop or req.cancelled():
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
        done = [d or req.cancelled() for d, (req, _) in zip(self.streamer.done, self.streamer.rows)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class Busy(RuntimeError):
    """The batcher's queue is full (``max_queue`` requests wait already)."""


class Batcher:
    """Collects concurrent requests for a few ms and decodes them together (one ``generate`` per batch)."""

    def __init__(self, model: Any, tokenizer: Any, max_batch_size: int = 16, wait_ms: float = 10.0,
                 start: bool = True, max_queue: int = 0):
        self.model, self.tok = model, tokenizer
        self.max_batch_size, self.wait_s = max_batch_size, wait_ms / 1000.0
        self.max_queue = max_queue  # 0: unbounded
        self.stop_ids = stop_token_ids(tokenizer)
        self.queue: "queue.Queue[GenRequest | None]" = queue.Queue()
        self._waiting = 0
        self._lock = threading.Lock()
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
        """Queue a request; ``Busy`` when ``max_queue`` requests wait already."""
        with self._lock:
            if self.max_queue and self._waiting >= self.max_queue:
                raise Busy(f"{self._waiting} requests are waiting for this model (the server's --max-queue)")
            self._waiting += 1
        self.queue.put(req)
        return req.future

    def _taken(self) -> None:
        with self._lock:
            self._waiting -= 1

    def _collect(self) -> list[GenRequest] | None:
        first = self.queue.get()
        if first is None:
            return None
        self._taken()
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
            self._taken()
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
        """Decode a batch; requests with the same sampling settings share one ``generate`` call. Requests
        cancelled while they waited are dropped."""
        for r in batch:
            if r.cancelled():
                r.future.cancel()
        batch = [r for r in batch if not r.future.cancelled()]
        if not batch:
            return
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
        for i, ((r, k), (ids, _ended)) in enumerate(zip(rows, out)):
            ids = list(ids)
            stopped = bool(ids) and ids[-1] in self.stop_ids and len(ids) - 1 <= r.max_new_tokens
            if stopped:
                ids = ids[:-1]
            limit = streamer.count[i] if r.cancelled() else r.max_new_tokens  # a cancelled row: what was streamed
            ids = [t for t in ids[:limit] if t != self.tok.pad_token_id]
            results[id(r)][k] = Choice(ids, "cancelled" if r.cancelled() else "stop" if stopped else "length")
            self.stats["new_tokens"] += len(ids)
        for r in reqs:
            if not r.future.done():  # a request's future may have been cancelled meanwhile
                r.future.set_result(results[id(r)])


def submit(batcher: Batcher, req: GenRequest) -> concurrent.futures.Future:
    """``batcher.submit`` for a route: a full queue is a 429 (retry later)."""
    try:
        return batcher.submit(req)
    except Busy as exc:
        raise ApiError(429, f"the server is busy: {exc}; retry in a moment", code="server_busy",
                       type="server_error") from None
