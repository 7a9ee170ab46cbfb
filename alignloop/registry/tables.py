"""The registry's tables: runs, models, jobs and served answers (their own Alembic chain, ``migrations/``)."""

from __future__ import annotations

import datetime as dt
import secrets
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Integer, MetaData, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from alignloop.core.db import NAMING_CONVENTION, utcnow


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


class RegistryBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RunRow(RegistryBase):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    stage: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12), default="running")  # running | completed | failed
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    output: Mapped[str] = mapped_column(Text, default="")
    data_hashes: Mapped[dict] = mapped_column(JSON, default=dict)  # {field: {"path", "sha256"}}
    judgment_ids: Mapped[list] = mapped_column(JSON, default=list)
    parent_model_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    base_model: Mapped[str] = mapped_column(String(400), default="")  # the --model as given
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    model_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    job_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)


class ModelRow(RegistryBase):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    path: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    parent_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    base_model: Mapped[str] = mapped_column(String(400), default="")
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class JobRow(RegistryBase):
    """A training job queued through the server; the database is the queue."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    model_name: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    # queued|running|completed|failed|cancelled
    status: Mapped[str] = mapped_column(String(12), default="queued", index=True)
    folder: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    model_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)  # "host:pid" of the server running it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)


class ServedAnswer(RegistryBase):
    """An answer the server gave, kept (with personal data masked) so feedback can refer to it by id."""

    __tablename__ = "served_answers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(400))
    prompt: Mapped[Any] = mapped_column(JSON)  # a string (completions) or a list of messages (chat)
    answers: Mapped[list] = mapped_column(JSON)  # one per choice (n)
    user: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
