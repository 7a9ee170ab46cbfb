"""Request bodies of the JSON API (pydantic checks types and sizes; the queries check the rules)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, Field, field_validator

from alignloop.feedback.auth import MAX_TOKEN_DAYS, TOKEN_DAYS

MAX_DURATION_MS = 7 * 24 * 3600 * 1000  # a week: longer is a client bug (and would overflow the column)


def has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(k) or has_nul(v) for k, v in value.items())
    return isinstance(value, list) and any(has_nul(v) for v in value)


class Body(BaseModel):
    """A JSON request body. No text in it may hold the NUL character: PostgreSQL cannot store it (the request
    failed there with a 500), and SQLite would store what PostgreSQL refuses."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        if has_nul(value):
            raise ValueError("text may not contain the NUL character (\\x00)")
        return value


class JudgmentIn(Body):
    choice: Optional[str] = Field(None, max_length=20)
    strength: Optional[str] = Field(None, max_length=20)
    ranking: Optional[list[int]] = Field(None, max_length=64)
    ratings: Optional[dict[str, dict[str, int]]] = None
    flags: Optional[dict[str, dict[str, bool]]] = None
    rewrite: Optional[str] = None  # length checked by the queries so the message names the limit
    skip_reason: Optional[str] = None
    duration_ms: Optional[int] = Field(None, ge=0, le=MAX_DURATION_MS)
    idempotency_key: Optional[str] = Field(None, max_length=100)


class AdjudicationIn(Body):
    """A lead's decision, in the task's canonical terms ("A" is its first completion)."""

    choice: Optional[str] = Field(None, max_length=20)
    ranking: Optional[list[int]] = Field(None, max_length=64)
    ratings: Optional[dict[str, dict[str, int]]] = None
    note: str = ""  # length checked by review.adjudicate so the message names the limit


class ProjectPatch(Body):
    """The settings an admin may change on an existing project."""

    criteria: Optional[list[str]] = None
    flags: Optional[list[str]] = None
    scale: Optional[int] = None
    overlap: Optional[int] = None
    gold_rate: Optional[float] = None
    order: Optional[str] = None
    lease_minutes: Optional[int] = None
    admin_only: Optional[bool] = None  # admins only


class ProjectIn(ProjectPatch):
    name: str = Field(..., min_length=1, max_length=200)
    task_type: str = "pairwise"
    guidelines: str = ""
    content_warning: str = ""


class GuidelinesIn(Body):
    text: str = Field(..., max_length=200_000)
    content_warning: Optional[str] = Field(None, max_length=5_000)


class UserIn(Body):
    name: str = Field(..., min_length=1, max_length=200)
    role: str = "labeler"
    kind: str = "human"
    identity: str = ""
    password: Optional[str] = Field(None, min_length=8, max_length=200)
    token: bool = False  # issue an API token too (tokens are issued only on request)
    token_days: int = Field(TOKEN_DAYS, ge=1, le=MAX_TOKEN_DAYS)


class TokenIn(Body):
    days: int = Field(TOKEN_DAYS, ge=1, le=MAX_TOKEN_DAYS)
    name: str = Field("", max_length=100)


class PasswordIn(Body):
    password: Optional[str] = Field(None, min_length=8, max_length=200)  # default: a generated one


class MemberIn(Body):
    name: str = Field(..., min_length=1, max_length=200)
    role: str = "labeler"
