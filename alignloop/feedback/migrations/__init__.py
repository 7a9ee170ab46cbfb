"""Alembic migrations of the studio's tables, run through Alembic's Python API on first use.

To change the schema, edit the models and add a revision in ``versions/`` whose ``down_revision`` is the
current head (see ``alignloop/feedback/README.md``).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from alignloop.core import db

HERE = Path(__file__).resolve().parent


def alembic_config(url: str | None = None):
    return db.alembic_config(HERE, url)


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database at ``engine`` to ``revision`` (idempotent; a no-op when already there)."""
    db.upgrade(engine, HERE, revision)


def current(engine: Engine) -> str | None:
    return db.current_revision(engine)
