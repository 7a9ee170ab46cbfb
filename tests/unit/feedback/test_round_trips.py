"""What one labeling round costs the database: statements, transactions and connection checks per request (on
PostgreSQL each is a round trip, and the CPU of a request goes mostly to them), and the idle-connection check."""

from __future__ import annotations

import collections

import pytest
from fastapi.testclient import TestClient
from feedback_fixtures import PG_BASE, pg_unavailable
from feedback_helpers import generate_records, numbered
from sqlalchemy import event, text

from alignloop.core import db as core_db
from alignloop.feedback import access, auth
from alignloop.feedback.api import create_app
from alignloop.feedback.io import import_records
from alignloop.feedback.store import Database, create_labeler, create_project

# measured with this change, a project without gold tasks (SQLite counts its BEGINs as statements; PostgreSQL sends
# BEGIN and COMMIT apart). Before it: next task 23 statements on PostgreSQL (31 on SQLite), submit 17 (18), and the
# sign-in check of each request a transaction of its own: with BEGIN, COMMIT and pool_pre_ping's check for each
# transaction, 52 round trips a round on PostgreSQL, now 26.
MAX_STATEMENTS = {"postgresql": {"next": 12, "submit": 10}, "sqlite": {"next": 16, "submit": 10}}


class Counts:
    """Statements and transactions (BEGIN sent) on an engine, by the request being made."""

    def __init__(self, engine):  # noqa: ANN001
        self.now = "other"
        self.seen: dict = collections.defaultdict(collections.Counter)
        event.listen(engine, "before_cursor_execute", lambda *a: self._add("statements"))
        event.listen(engine, "begin", self._begin)

    def _begin(self, conn) -> None:  # noqa: ANN001
        if not getattr(conn.connection.dbapi_connection, "autocommit", False):  # autocommit sends no BEGIN
            self._add("transactions")

    def _add(self, what: str) -> None:
        self.seen[self.now][what] += 1


def _project_with_labeler(db, tasks: int, **settings) -> str:  # noqa: ANN001, ANN003
    """The project ``proj`` of ``tasks`` tasks with the labeler ``ann`` a member; returns her API token."""
    with db.write() as s:
        p = create_project(s, "proj", **settings)
        import_records(s, p, numbered(generate_records(tasks)))
        ann = create_labeler(s, "ann")
        access.add_member(s, p, ann, "labeler", "test")
        return auth.new_token(s, ann)


def test_a_labeling_round_has_a_bounded_number_of_statements(db):
    token = _project_with_labeler(db, 40, overlap=3)
    client, counts = TestClient(create_app(db)), Counts(db.engine)
    bearer = {"Authorization": f"Bearer {token}"}
    worst: dict = collections.defaultdict(collections.Counter)
    for k in range(12):
        counts.seen.clear()
        counts.now = "next"
        task = client.post("/api/projects/proj/next", headers=bearer).json()
        counts.now = "submit"
        r = client.post(f"/api/assignments/{task['assignment_id']}/judgment", json={"choice": "AB"[k % 2]},
                        headers={**bearer, "Idempotency-Key": f"k{k}"})
        assert r.status_code == 201, r.text
        counts.now = "other"
        if k >= 2:  # (the first rounds make the labeler's rows)
            for what, c in counts.seen.items():
                for key, n in c.items():
                    worst[what][key] = max(worst[what][key], n)
    dialect = db.engine.dialect.name
    for what in ("next", "submit"):
        assert worst[what]["statements"] <= MAX_STATEMENTS[dialect][what], (what, dict(worst[what]))
        if dialect == "postgresql":
            # one transaction each: the sign-in check runs on an autocommit connection (no BEGIN, no COMMIT)
            assert worst[what]["transactions"] == 1, (what, dict(worst[what]))


@pytest.fixture
def pg_db():
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    d = Database(PG_BASE, migrate=False)
    yield d
    d.dispose()


@pytest.mark.postgres
def test_a_connection_is_checked_only_after_sitting_idle_and_a_dead_one_is_replaced(pg_db, monkeypatch):
    """``pool_pre_ping`` cost a round trip every transaction; now a connection used within ``PING_AFTER_IDLE``
    goes out unchecked, an idle one is checked, and one the server closed meanwhile is replaced, not handed out."""
    pings = []
    real_ping = pg_db.engine.dialect.do_ping
    monkeypatch.setattr(pg_db.engine.dialect, "do_ping", lambda conn: pings.append(1) or real_ping(conn))

    def backend_pid() -> int:
        with pg_db.read() as s:
            return s.scalar(text("SELECT pg_backend_pid()"))

    first = backend_pid()
    assert backend_pid() == first and pings == []  # the same connection, just used: not checked
    monkeypatch.setattr(core_db, "PING_AFTER_IDLE", 0.0)  # every connection now counts as idle
    assert backend_pid() == first and len(pings) == 1
    import psycopg

    with psycopg.connect(PG_BASE.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (first,))  # the server ends it (a restart, a timeout)
    assert backend_pid() != first  # the check found it dead: a new connection, and no error


def test_a_task_another_labeler_is_taking_is_passed_over_in_the_same_statement(db):
    """PostgreSQL: while one labeler's transaction holds the head of the queue (it is taking a place there), the
    next labeler gets the following task from one locking statement (SKIP LOCKED over the candidates, in the
    queue's order), not from a savepoint, a locking read and a rollback per busy task (under load two tries in
    three failed that way)."""
    from alignloop.feedback import assign
    from alignloop.feedback.models import Project, Task

    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: nothing is ever being taken by another transaction")
    with db.write() as s:
        p = create_project(s, "proj", overlap=2)
        import_records(s, p, numbered(generate_records(6)))
        ann, bob = create_labeler(s, "ann"), create_labeler(s, "bob")
    locking = []
    event.listen(db.engine, "before_cursor_execute",
                 lambda _c, _cur, sql, *_a: locking.append(sql) if "FOR UPDATE" in sql else None)
    with db.write() as s1:
        first = assign.next_assignment(s1, s1.get(Project, p.id), s1.get(type(ann), ann.id))
        with db.write() as s2:
            locking.clear()
            second = assign.next_assignment(s2, s2.get(Project, p.id), s2.get(type(bob), bob.id))
            seqs = [s2.get(Task, a.task_id).seq for a in (first, second)]
            assert seqs == [1, 2]  # the head is busy: the next task in import order (seq counts from 1)
            assert len(locking) == 1 and "SKIP LOCKED" in locking[0], locking


def test_when_the_tasks_nearest_completion_are_busy_the_labeler_gets_a_task_further_down(db):
    """PostgreSQL: the only unseen task with a place already taken (the best lane) is being taken by another
    labeler at that moment; the labeler gets the next task of the queue from the same statement. The search once
    offered only the best lane's tasks: every try skipped the busy one, the last tries waited for it (here: the lock
    timeout), and four labelers on two server processes were told "nothing left" in about 1 run in 8."""
    from alignloop.feedback import assign
    from alignloop.feedback.models import Labeler, Project, Task

    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time: nothing is ever being taken by another transaction")
    with db.write() as s:
        p = create_project(s, "proj", overlap=2)
        import_records(s, p, numbered(generate_records(6)))
        ann, bob, cat = (create_labeler(s, n) for n in ("ann", "bob", "cat"))
    with db.write() as s:
        assign.next_assignment(s, s.get(Project, p.id), s.get(Labeler, ann.id))  # task 1 has one place taken
    with db.write() as s1:
        busy = assign.next_assignment(s1, s1.get(Project, p.id), s1.get(Labeler, bob.id))  # bob takes task 1's last
        with db.write() as s2:
            s2.execute(text("SET LOCAL lock_timeout = '2s'"))  # (a wait for bob's transaction would never end here)
            got = assign.next_assignment(s2, s2.get(Project, p.id), s2.get(Labeler, cat.id))
            assert [s2.get(Task, a.task_id).seq for a in (busy, got)] == [1, 2]


def test_only_statements_that_load_objects_go_through_the_orm_layer(db):
    """A round's plain look-ups and updates run on the session's connection (``core.db.run``): through the ORM's
    compile step one cost twice the CPU. What is left there loads mapped objects: the sign-in check's token and
    labeler, the project (next), the assignment with its task and project, and the inserted judgment (submit)."""
    from sqlalchemy.orm import Session as OrmSession

    token = _project_with_labeler(db, 20, overlap=2)
    client, bearer = TestClient(create_app(db)), {"Authorization": f"Bearer {token}"}
    through_orm: dict = collections.defaultdict(list)
    now = ["other"]

    def seen(state) -> None:  # noqa: ANN001
        if state.statement._propagate_attrs.get("compile_state_plugin") == "orm":
            through_orm[now[0]].append(type(state.statement).__name__)

    event.listen(OrmSession, "do_orm_execute", seen)
    try:
        for k in range(3):
            through_orm.clear()
            now[0] = "next"
            task = client.post("/api/projects/proj/next", headers=bearer).json()
            now[0] = "submit"
            r = client.post(f"/api/assignments/{task['assignment_id']}/judgment", json={"choice": "A"},
                            headers={**bearer, "Idempotency-Key": f"k{k}"})
            assert r.status_code == 201, r.text
    finally:
        event.remove(OrmSession, "do_orm_execute", seen)
    # token + labeler; the project (SQLite: once more, by the search in a read transaction before the write)
    projects = 2 if db.is_sqlite else 1
    assert through_orm["next"] == ["Select"] * (1 + projects), dict(through_orm)
    assert sorted(through_orm["submit"]) == ["AnnotatedInsert", "Select", "Select"], dict(through_orm)


def _counts(db) -> dict:  # noqa: ANN001
    with db.read() as s:
        return {t: s.scalar(text(f"SELECT count(*) FROM {t}")) for t in (
            "assignments", "judgments", "labeler_progress", "login_throttle", "audit_log", "api_tokens")}


def test_a_server_process_warms_up_before_its_first_request_and_changes_nothing(db):
    """As it starts, a server process runs the labeling round's reads on ``threads`` connections at once (its pool
    then holds that many, each warm) and sends itself one unsigned request per labeling route: a cold process
    took 100 to 250 ms for its first next task, and a freshly started server under 50 judgments a second had
    p99s of 330 ms. Nothing is written: no assignment, no counter row, no sign-in failure counted."""
    import asyncio

    token = _project_with_labeler(db, 10, overlap=2, gold_rate=0.2, order="uncertainty")
    before, sent = _counts(db), []
    event.listen(db.engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: sent.append(sql))
    app = create_app(db, threads=3).app

    async def served() -> int:
        async with app.router.lifespan_context(app):
            return db.engine.pool.checkedin()

    pooled = asyncio.run(served())
    if not db.is_sqlite:
        assert pooled == 3
    lanes = [sql for sql in sent if "AS lane" in sql]  # the search's statement (one select per lane)
    # regular and gold tasks (the project's gold rate), each from the queue's start and from a cursor, per connection
    assert len(lanes) == 4 * (1 if db.is_sqlite else 3), len(lanes)
    assert any("api_tokens" in sql for sql in sent)  # the unsigned requests reached the sign-in check
    assert _counts(db) == before
    task = TestClient(create_app(db)).post("/api/projects/proj/next", headers={"Authorization": f"Bearer {token}"})
    assert task.status_code == 200 and task.json()["done"] is False


def test_a_server_that_cannot_warm_up_still_starts_and_says_why(db, monkeypatch, caplog):
    import asyncio

    from alignloop.core.db import DatabaseError
    from alignloop.feedback.web import assignments

    def fail(*_a) -> None:  # noqa: ANN002
        raise DatabaseError("database down for a moment")

    monkeypatch.setattr(assignments, "warm_up", fail)
    app = create_app(db).app

    async def served() -> bool:
        async with app.router.lifespan_context(app):
            return True

    assert asyncio.run(served())
    assert "warm-up skipped: DatabaseError: database down for a moment" in caplog.text
