"""Alembic migrations of the registry tables (runs, models, jobs, served_answers).

They share the alignloop database with the feedback studio but form their own chain, recorded in their own
version table (``alignloop_registry_version``), so the two chains upgrade independently of each other.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from alignloop.core import db

HERE = Path(__file__).resolve().parent
VERSION_TABLE = "alignloop_registry_version"


def upgrade(engine: Engine, revision: str = "head") -> None:
    db.upgrade(engine, HERE, revision)
