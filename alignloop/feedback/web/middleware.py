"""Body size limit, request targets without NUL characters, and security headers, as pure ASGI middleware so
that it also covers streamed bodies.

A body over the limit is answered 413 whether its size was declared (Content-Length) or found while reading a
chunked body: then the 413 goes out at once and the app is told the client left, and whatever it answers
after that is dropped. API answers and downloads carry ``Cache-Control: no-store`` (they hold labels, tokens
and users' prompts); every answer carries HSTS, which browsers heed only over HTTPS.

A path or query string with a NUL character (``%00``) is answered 422 before any route sees it: PostgreSQL
cannot take the character even in a lookup, so ``GET /api/projects/a%00b`` was a 500 there."""

from __future__ import annotations

import json

MAX_BODY = 1 << 20  # 1 MiB for ordinary requests
MAX_IMPORT_BODY = 64 << 20  # imports through the API
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
SECURITY_HEADERS = [(b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY"),
                    (b"strict-transport-security", b"max-age=31536000")]
NO_STORE = [(b"cache-control", b"no-store")]


class Limits:
    def __init__(self, app):  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        where = "path" if "\x00" in scope["path"] else "query" if _nul_in_query(scope.get("query_string", b"")) \
            else None
        if where:
            return await _answer(send, 422, {"detail": f"the {where} may not contain the NUL character (%00)",
                                             "field": where})
        limit = MAX_IMPORT_BODY if scope["path"].endswith("/import") else MAX_BODY
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, limit)
        seen = 0
        answered = False  # a 413 went out for a body that grew too large while being read
        extra = SECURITY_HEADERS + ([] if scope["path"].startswith("/static/") else NO_STORE)

        async def counted_receive():
            nonlocal seen, answered
            if answered:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    answered = True
                    await _too_large(send, limit)
                    return {"type": "http.disconnect"}
            return message

        async def secured_send(message):  # noqa: ANN001
            if answered:
                return
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + extra
            await send(message)

        try:
            await self.app(scope, counted_receive, secured_send)
        except Exception:
            if not answered:  # the app failed on its own
                raise


def _nul_in_query(query: bytes) -> bool:
    return b"\x00" in query or b"%00" in query


async def _too_large(send, limit: int) -> None:  # noqa: ANN001
    await _answer(send, 413, {"detail": f"request body is larger than {limit} bytes"})


async def _answer(send, status: int, payload: dict) -> None:  # noqa: ANN001
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *SECURITY_HEADERS, *NO_STORE]})
    await send({"type": "http.response.body", "body": body})
