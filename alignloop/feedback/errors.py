"""Errors the studio's queries raise on bad input: the web API answers them with a 4xx, the CLI with a message."""

from __future__ import annotations


class StoreError(ValueError):
    """Bad input. ``status`` is the HTTP status the API answers with; ``field`` names what to fix."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class Invalid(StoreError):
    status = 422


class Forbidden(StoreError):
    status = 403


class Throttled(StoreError):
    """Too many failed sign-ins for this account or client address; ``retry_after`` seconds to wait."""

    status = 429

    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"too many failed sign-ins; try again in {retry_after} s")
