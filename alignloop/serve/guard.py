"""What every request passes before a route sees it (an ASGI middleware, so nothing is parsed first):

* the key (``Authorization: Bearer KEY`` or ``X-API-Key``), compared in constant time, which decides the
  caller's role: ``admin`` (admin key), ``inference`` (API key) or ``open`` (a server started with no key at all);
  every path but ``/health`` needs one when any key is configured, so a wrong key gets 401 whatever else is
  wrong with the request (an unknown path, an oversized or malformed body);
* the role: training jobs (``/v1/jobs``) and a model's lineage (``/v1/models/{id}/lineage``) need an admin key
  (403 otherwise, before an upload is read);
* the body size, counted as the bytes arrive and stopped at the limit (413), so neither a false
  ``Content-Length`` nor a chunked upload without one makes the server read more than the limit;
* how many generation requests one caller has running at once (429 above ``--max-concurrent-per-key``; the
  routes also charge each request's tokens to its caller's ``TokenBudget``, ``--key-tokens-per-minute``);
* response headers: ``Cache-Control: no-store`` (answers and keys never sit in a cache),
  ``X-Content-Type-Options: nosniff``, and ``Strict-Transport-Security`` when the request came over HTTPS.

Routes read the caller from ``request.state``: ``role`` and ``api_key_hash`` (see ``deps.CallerDep``).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import time
from collections import Counter, deque
from typing import Any, Awaitable, Callable

from alignloop.serve.errors import error_response

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

ADMIN, INFERENCE, OPEN = "admin", "inference", "open"
#: paths that need no key (load balancers, the SDK's start-up wait)
PUBLIC = ("/health",)
#: training jobs: only an admin key may use them, and they take the larger uploads (--max-upload-bytes)
ADMIN_PREFIX = "/v1/jobs"
#: a model's lineage (its chain of runs, data files, exports and labels): only an admin key may read it
LINEAGE = re.compile(r"/v1/models/.*/lineage")
#: paths whose requests occupy the model (counted per caller)
GENERATION = ("/v1/chat/completions", "/v1/completions", "/v1/predict")
HSTS = "max-age=31536000"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    """The accepted keys by their SHA-256 (the keys themselves are not kept), each with its role."""

    def __init__(self, inference: list[str], admin: list[str]):
        self.roles = {digest(k): INFERENCE for k in inference}
        self.roles.update({digest(k): ADMIN for k in admin})

    def __bool__(self) -> bool:
        return bool(self.roles)

    def role(self, key: str) -> str | None:
        """The role of ``key``, or None. Every accepted digest is compared (in constant time each)."""
        d = digest(key)
        found = None
        for h, role in self.roles.items():
            if hmac.compare_digest(d, h):
                found = role
        return found


class TokenBudget:
    """New tokens each caller may ask for in any 60 seconds, charged when a request is admitted (prompts x n x
    max_tokens: what it may cost, known before decoding). ``per_minute`` 0: no budget."""

    WINDOW = 60.0

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic):
        self.per_minute, self.clock = per_minute, clock
        self.spent: dict[str, deque] = {}
        self.lock = threading.Lock()

    def charge(self, who: str, tokens: int) -> float | None:
        """None when ``who`` may spend ``tokens`` now (they are charged), else the seconds until it may."""
        if not self.per_minute:
            return None
        now = self.clock()
        with self.lock:
            spent = self.spent.setdefault(who, deque())
            while spent and spent[0][0] <= now - self.WINDOW:
                spent.popleft()
            used = sum(n for _, n in spent)
            if used + tokens <= self.per_minute:
                spent.append((now, tokens))
                return None
            room, wait = self.per_minute - tokens, 0.0  # drop the oldest charges until this one fits
            for t, n in spent:
                used -= n
                wait = t + self.WINDOW - now
                if used <= room:
                    break
            return max(wait, 0.0) if tokens <= self.per_minute else float("inf")


def admin_only(path: str) -> str | None:
    """What the refusal says when ``path`` needs an admin key ("training jobs need"), or None when any key may use
    it. docs/security.md's roles table says the same; tests/unit/serve/test_serve_route_matrix.py holds both to it."""
    if path.startswith(ADMIN_PREFIX):
        return "training jobs need"
    if LINEAGE.fullmatch(path):
        return "a model's lineage needs"
    return None


def presented_key(headers: dict[str, str]) -> str:
    auth = headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "").strip()


class Guard:
    """The ASGI middleware; ``server`` is the app's ``deps.Server`` (config and key ring)."""

    def __init__(self, app: Callable, server: Any):
        self.app, self.srv = app, server
        self.running: Counter[str] = Counter()
        self.lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(scope, send)
        path = scope["path"]
        if path in PUBLIC:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refused, role, key_hash = self._who(headers)
        what = admin_only(path)
        if refused is None and what and role != ADMIN:
            refused = error_response(403, f"{what} an admin key (the server's --admin-key); this key may run "
                                     "inference and give feedback only", code="admin_key_required")
        body = None
        if refused is None:
            refused, body = await self._read_body(scope, receive, path, headers)
        if refused is not None:
            await refused(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["role"], state["api_key_hash"] = role, key_hash
        receive = _replay(body, receive) if body is not None else receive
        if path not in GENERATION or not self.srv.cfg.max_concurrent_per_key:
            await self.app(scope, receive, send)
            return
        await self._counted(scope, receive, send, key_hash or _client(scope))

    def _who(self, headers: dict[str, str]) -> tuple[Any, str, str | None]:
        """``(refusal or None, role, key digest)``."""
        keys: KeyRing = self.srv.keys
        if not keys:
            return None, OPEN, None
        key = presented_key(headers)
        if not key:
            return error_response(401, "no API key: send 'Authorization: Bearer YOUR_KEY'",
                                  code="missing_api_key"), "", None
        role = keys.role(key)
        if role is None:
            return error_response(401, "incorrect API key provided", code="invalid_api_key"), "", None
        return None, role, digest(key)

    async def _read_body(self, scope: Scope, receive: Receive, path: str,
                         headers: dict[str, str]) -> tuple[Any, bytes | None]:
        """The whole body, read chunk by chunk and refused (413) as soon as it passes the limit."""
        cfg = self.srv.cfg
        jobs = path.startswith(ADMIN_PREFIX)
        limit = cfg.max_upload_bytes if jobs else cfg.max_request_bytes
        flag = "--max-upload-bytes" if jobs else "--max-request-bytes"
        size = headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limit:
            return error_response(413, f"request body is {int(size)} bytes; the limit for {path} is {limit} bytes "
                                  f"({flag})", code="request_too_large"), None
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return None, None
        chunks, total, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":  # the client went away: nobody reads the answer
                return error_response(400, "the client disconnected before sending the whole body"), None
            chunk = msg.get("body", b"")
            total += len(chunk)
            if total > limit:
                return error_response(413, f"request body is over the {limit}-byte limit for {path} ({flag})",
                                      code="request_too_large"), None
            chunks.append(chunk)
            more = msg.get("more_body", False)
        return None, b"".join(chunks)

    async def _counted(self, scope: Scope, receive: Receive, send: Send, who: str) -> None:
        limit = self.srv.cfg.max_concurrent_per_key
        with self.lock:
            busy = self.running[who] >= limit
            if not busy:
                self.running[who] += 1
        if busy:
            refused = error_response(429, f"this key already has {limit} requests running (the server's "
                                     "--max-concurrent-per-key); wait for one to finish", code="too_many_requests")
            await refused(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            with self.lock:
                self.running[who] -= 1
                if not self.running[who]:
                    del self.running[who]

    @staticmethod
    def _with_headers(scope: Scope, send: Send) -> Send:
        https = scope.get("scheme") == "https"

        async def wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                drop = {b"cache-control", b"x-content-type-options", b"strict-transport-security"}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in drop]
                headers += [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
                if https:
                    headers.append((b"strict-transport-security", HSTS.encode()))
                message = {**message, "headers": headers}
            await send(message)

        return wrapped


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the body read already, then the real messages (the disconnect)."""
    sent = False

    async def replay() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return f"addr-{client[0]}" if client else "anonymous"
