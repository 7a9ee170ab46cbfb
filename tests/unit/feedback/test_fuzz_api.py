"""Property-based fuzzing of the studio's OpenAPI schema (schemathesis): every operation, requests generated from
its parameters and bodies, sent by an admin (so access checks let them through to the code behind), must never
get a 5xx. The number of examples per operation is bounded so the whole run stays within seconds; the seed is
fixed so a failure reproduces. What it found is pinned by regression tests in test_api.py (ids beyond any row,
NUL characters).

Deeper runs by hand: ``ALIGNLOOP_FUZZ_EXAMPLES=100`` (examples per operation), ``ALIGNLOOP_FUZZ_RANDOM=1`` (a new
seed each run), ``ALIGNLOOP_FUZZ_DB=postgres`` (the test PostgreSQL server instead of SQLite)."""

from __future__ import annotations

import os
import uuid

import pytest

schemathesis = pytest.importorskip("schemathesis")
from argon2 import PasswordHasher  # noqa: E402
from feedback_fixtures import PG_BASE, _pg_exec, pg_unavailable  # noqa: E402
from feedback_helpers import generate_records, numbered  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from sqlalchemy import select  # noqa: E402

from alignloop.feedback import access, assign, auth  # noqa: E402
from alignloop.feedback.api import create_app  # noqa: E402
from alignloop.feedback.io import import_records  # noqa: E402
from alignloop.feedback.store import Database, Labeler, create_labeler, create_project  # noqa: E402

EXAMPLES = int(os.environ.get("ALIGNLOOP_FUZZ_EXAMPLES", "10"))  # per operation (~40 operations)
PROJECTS = ("proj", "ranks")


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """A pairwise and a ranking project with tasks and a labeler's judgment, an admin with a token. Passwords are
    hashed with argon2's cheapest settings here: the fuzzer creates users and resets passwords by the hundred."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))
        yield from _studio(tmp_path_factory)


def _studio(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'labels.db'}"
    schema_name = None
    if os.environ.get("ALIGNLOOP_FUZZ_DB") == "postgres":  # by hand: the same run on PostgreSQL
        if pg_unavailable():
            pytest.skip(pg_unavailable())
        schema_name = f"fuzz_{uuid.uuid4().hex[:12]}"
        _pg_exec(f'CREATE SCHEMA "{schema_name}"')
        url = f"{PG_BASE}?options=-csearch_path%3D{schema_name}"
    db = Database(url)
    with db.write() as s:
        proj = create_project(s, "proj", overlap=2, content_warning="Rude words.")
        import_records(s, proj, numbered(generate_records(4)))
        ranks = create_project(s, "ranks", task_type="ranking", overlap=1)
        import_records(s, ranks, numbered(generate_records(3, k=3)))
        admin = create_labeler(s, "admin", role="admin")
        ann = create_labeler(s, "ann")
        access.add_member(s, proj, ann, "labeler", "test")
        assign.next_assignment(s, proj, ann)
        token = auth.new_token(s, admin, days=1)
    app = create_app(db)
    app.db, app.admin_token = db, token
    yield app
    db.dispose()
    if schema_name:
        _pg_exec(f'DROP SCHEMA "{schema_name}" CASCADE')


def openapi_document() -> dict:
    """The app's OpenAPI document (made at import, for the parametrisation: no database is opened for it)."""
    return create_app(Database("sqlite://", migrate=False)).app.openapi()


schema = schemathesis.openapi.from_dict(openapi_document())


def admin_headers(studio) -> dict:
    """The admin's bearer token; a fresh one if a generated request revoked it (DELETE /api/me/tokens/1 is as
    likely as any other request, and every later request would stop at 401)."""
    with studio.db.read() as s:
        alive = auth.token_for(s, studio.admin_token) is not None
    if not alive:
        with studio.db.write() as s:
            studio.admin_token = auth.new_token(s, s.scalar(select(Labeler).where(Labeler.name == "admin")), days=1)
    return {"Authorization": f"Bearer {studio.admin_token}"}


@schema.parametrize()
@schema.given(real=st.sampled_from((None,) + PROJECTS))
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not os.environ.get("ALIGNLOOP_FUZZ_RANDOM"), database=None,
          suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_5xx(case, real, studio):
    # two times in three a project or user that exists, so the generated bodies reach the code past the lookup
    params = case.path_parameters or {}
    if real and "name" in params:
        params["name"] = "ann" if "/users/" in case.path else real
    if real and "user" in params:
        params["user"] = "ann"
    response = case.call(app=studio, headers=admin_headers(studio))
    assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.status_code} {response.text}"
