"""A judge behind an OpenAI-compatible ``/chat/completions`` endpoint (OpenAI, vLLM, llama.cpp, alignloop serve).

Each request asks for one token at temperature 0 with ``logprobs``/``top_logprobs``; P("A") and P("B") come from
the top log-probabilities. Servers that return no log-probabilities are read from the answer's first letter
(probability 1 for that letter). Requests get a timeout, retries with exponential backoff on timeouts,
connection errors, 429 and 5xx (honouring ``Retry-After``), a limit on concurrent requests, and an on-disk cache
keyed by the exact request (URL, model, messages, parameters): a re-run costs nothing. The API key is read from
an environment variable, never from a config file.

httpx is used directly rather than the ``openai`` client because retries, backoff and the cache are needed
*around* the call and must be the same for every server.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import httpx

from alignloop.core.errors import AlignloopError
from alignloop.core.files import write_text
from alignloop.judges.base import PairwiseLetterJudge


class JudgeHTTPError(AlignloopError):
    """The endpoint kept failing after every retry, or answered with a non-retryable error."""


RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class HTTPJudge(PairwiseLetterJudge):
    name = "http"

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", principles: str | None = None,
                 timeout: float = 60.0, retries: int = 4, backoff: float = 1.0, max_backoff: float = 30.0,
                 concurrency: int = 4, cache_dir: str | os.PathLike | None = None, client: httpx.Client | None = None):
        super().__init__(principles)
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.identity = f"{model}@{base_url}"
        self.api_key = os.environ.get(api_key_env, "") if api_key_env else ""
        self.timeout, self.retries, self.backoff, self.max_backoff = timeout, retries, backoff, max_backoff
        self.concurrency = max(1, concurrency)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.client = client or httpx.Client(timeout=timeout)
        self.stats = {"requests": 0, "cache_hits": 0, "retries": 0}

    # ---- one request, cached ------------------------------------------------------------------
    def body(self, request: str) -> dict[str, Any]:
        return {"model": self.model, "messages": [{"role": "user", "content": request}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": 5}

    def _cache_path(self, body: dict[str, Any]) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(json.dumps({"url": self.url, "body": body}, sort_keys=True).encode()).hexdigest()
        return self.cache_dir / key[:2] / f"{key}.json"

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        path = self._cache_path(body)
        if path is not None and path.exists():
            self.stats["cache_hits"] += 1
            return json.loads(path.read_text())
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        last = ""
        for attempt in range(self.retries + 1):
            wait = min(self.max_backoff, self.backoff * 2 ** attempt)
            try:
                self.stats["requests"] += 1
                resp = self.client.post(self.url, json=body, headers=headers, timeout=self.timeout)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if resp.status_code == 200:
                    data = resp.json()
                    if path is not None:
                        write_text(path, json.dumps(data))
                    return data
                last = f"HTTP {resp.status_code}: {resp.text[:200]}"
                if resp.status_code not in RETRY_STATUS:
                    raise JudgeHTTPError(f"judge endpoint {self.url}: {last}")
                after = resp.headers.get("retry-after")
                if after:
                    try:
                        wait = min(self.max_backoff, float(after))
                    except ValueError:
                        pass
            if attempt < self.retries:
                self.stats["retries"] += 1
                time.sleep(wait)
        raise JudgeHTTPError(f"judge endpoint {self.url} failed after {self.retries + 1} attempts: {last}")

    # ---- reading P(A), P(B) ---------------------------------------------------------------------
    @staticmethod
    def read_letters(data: dict[str, Any]) -> tuple[float, float]:
        choice = (data.get("choices") or [{}])[0]
        content = ((choice.get("logprobs") or {}).get("content") or [])
        if content:
            probs = {"A": 0.0, "B": 0.0}
            tops = content[0].get("top_logprobs") or [{"token": content[0].get("token"),
                                                        "logprob": content[0].get("logprob")}]
            for t in tops:
                tok = str(t.get("token", "")).strip()
                if tok in probs and t.get("logprob") is not None:
                    probs[tok] += math.exp(float(t["logprob"]))
            if probs["A"] + probs["B"] > 0:
                return probs["A"], probs["B"]
        text = str((choice.get("message") or {}).get("content") or "").strip().upper()
        if text.startswith("A"):
            return 1.0, 0.0
        if text.startswith("B"):
            return 0.0, 1.0
        return 0.5, 0.5  # no usable answer: counts as a tie in this order

    def letter_probs(self, request: str) -> tuple[float, float]:
        return self.read_letters(self.post(self.body(request)))

    def letter_probs_many(self, requests: Sequence[str]) -> list[tuple[float, float]]:
        if self.concurrency == 1 or len(requests) == 1:
            return [self.letter_probs(r) for r in requests]
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self.letter_probs, requests))
