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
