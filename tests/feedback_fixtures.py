"""Fixtures: every store test runs on SQLite and on PostgreSQL (a fresh schema per test)."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

PG_BASE = os.environ.get("ALIGNLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
_pg_state: dict[str, str | None] = {}


def pg_unavailable() -> str | None:
    """None when the test PostgreSQL server answers, else why not (cached)."""
    if "reason" not in _pg_state:
        try:
            import psycopg

            plain = PG_BASE.replace("postgresql+psycopg://", "postgresql://")
            with psycopg.connect(plain, connect_timeout=3) as conn:
                conn.execute("select 1")
            _pg_state["reason"] = None
        except Exception as exc:  # noqa: BLE001
            _pg_state["reason"] = f"PostgreSQL not reachable at {PG_BASE} ({exc.__class__.__name__}: {exc})"
    return _pg_state["reason"]


def _pg_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_BASE.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'labels.db'}"
        return
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"fbtest_{uuid.uuid4().hex[:12]}"
    _pg_exec(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_BASE}?options=-csearch_path%3D{schema}"
    finally:
        _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture
def db(db_url):
    from alignloop.feedback.store import Database

    d = Database(db_url)
    yield d
    d.dispose()


@pytest.fixture
def artifacts() -> Path:
    root = Path(__file__).resolve().parents[1] / "test-artifacts"
    root.mkdir(exist_ok=True)
    return root
