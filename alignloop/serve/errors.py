"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """A request the server refuses; the routes raise it and the app answers with ``error_response``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        super().__init__(message)


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": type, "param": param, "code": code}}, status_code=status)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param, exc.code, exc.type)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """Every problem of a request body in one message (``field: what is wrong``), the first field as ``param``."""
    problems = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        problems.append(f"{loc or 'body'}: {e.get('msg')}")
    first = exc.errors()[0].get("loc", ()) if exc.errors() else ()
    param = ".".join(str(x) for x in first if x != "body") or None
    return error_response(422, "; ".join(problems), param, "invalid_value")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
