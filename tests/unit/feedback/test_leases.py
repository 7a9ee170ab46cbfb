"""Leases that respect people: the page's heartbeat keeps a slow but present labeler's task, a late answer on an
expired lease is kept while the task still needs votes (409 and nothing stored when it does not). Time is the
app's injectable clock, moved on by the test: no sleeps."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import generate_records, numbered
from sqlalchemy import func, select

from alignloop.feedback import access, assign, auth
from alignloop.feedback.api import create_app
from alignloop.feedback.io import import_records
from alignloop.feedback.store import (
    Assignment,
    Conflict,
    Judgment,
    Labeler,
    Task,
    TaskTally,
    add_judgment,
    create_labeler,
    create_project,
    get_project,
    utcnow,
)

LEASE = 60  # minutes


class Clock:
    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += dt.timedelta(minutes=minutes)


def studio(db, overlap: int, task_type: str = "pairwise"):
    """One task, labelers ann and bob (API tokens), and the app on a clock the test moves."""
    with db.write() as s:
        p = create_project(s, "p", overlap=overlap, task_type=task_type, lease_minutes=LEASE)
        import_records(s, p, numbered(generate_records(1, k=1 if task_type == "rewrite" else 2)))
        tokens = {}
        for name in ("ann", "bob"):
            lab = create_labeler(s, name)
            access.add_member(s, p, lab, "labeler", "test")
            tokens[name] = {"Authorization": f"Bearer {auth.new_token(s, lab)}"}
    client = TestClient(create_app(db))
    client.clock = client.app.app.state.clock = Clock()
    client.tokens, client.db = tokens, db
    return client


def next_task(app, who: str) -> dict:
    r = app.post("/api/projects/p/next", headers=app.tokens[who])
    assert r.status_code == 200, r.text
    return r.json()


def beat(app, who: str, aid: int):
    return app.post(f"/api/assignments/{aid}/heartbeat", headers=app.tokens[who])


def answer(app, who: str, aid: int, **body):
    return app.post(f"/api/assignments/{aid}/judgment", json=body or {"choice": "A"}, headers=app.tokens[who])


def status_of(app, aid: int) -> tuple[str, int | None]:
    with app.db.read() as s:
        a = s.get(Assignment, aid)
        return a.status, a.slot


def test_heartbeat_keeps_the_task_of_a_slow_labeler(db):
    app = studio(db, overlap=1)
    t0 = app.clock.now
    ann = next_task(app, "ann")
    assert (ann["lease_minutes"], ann["heartbeat_seconds"]) == (LEASE, 60)
    app.clock.advance(50)  # reading a long answer; the page beats
    r = beat(app, "ann", ann["assignment_id"])
    assert r.status_code == 200
    assert r.json() == {"assignment_id": ann["assignment_id"], "status": "open",
                        "lease_until": (t0 + dt.timedelta(minutes=110)).isoformat() + "Z"}
    app.clock.advance(50)  # 100 minutes after she took it: without the beat her lease would have run out
    assert next_task(app, "bob")["done"] is True  # the only place is still hers
    assert status_of(app, ann["assignment_id"]) == ("open", 0)
    app.clock.advance(11)  # 61 minutes without a beat: she walked away
    bob = next_task(app, "bob")
    assert bob["task_id"] == ann["task_id"] and status_of(app, ann["assignment_id"]) == ("expired", None)
    r = beat(app, "ann", ann["assignment_id"])
    assert (r.status_code, r.json()["field"]) == (409, "assignment_id")
    assert "expired" in r.json()["detail"]


def test_asking_for_the_task_again_counts_as_presence(db):
    app = studio(db, overlap=1)
    ann = next_task(app, "ann")
    app.clock.advance(50)
    assert next_task(app, "ann")["assignment_id"] == ann["assignment_id"]  # a reload
    app.clock.advance(50)
    assert next_task(app, "bob")["done"] is True


def test_a_late_answer_is_kept_while_the_task_needs_votes(db):
    app = studio(db, overlap=2)
    ann = next_task(app, "ann")
    app.clock.advance(LEASE + 1)
    bob = next_task(app, "bob")  # releases ann's place and takes one
    assert bob["task_id"] == ann["task_id"] and status_of(app, ann["assignment_id"]) == ("expired", None)
    r = answer(app, "ann", ann["assignment_id"], choice="B")
    assert r.status_code == 201, r.text
    assert status_of(app, ann["assignment_id"]) == ("done", 1)  # she took the free place again
    assert answer(app, "bob", bob["assignment_id"]).status_code == 201
    with db.read() as s:
        assert s.scalar(select(func.count(Judgment.id))) == 2
        assert s.get(TaskTally, ann["task_id"]).judgments == 2
    assert answer(app, "ann", ann["assignment_id"], choice="B").status_code == 409  # done is done


def test_a_late_answer_is_refused_when_the_task_has_its_votes(db):
    app = studio(db, overlap=1, task_type="rewrite")
    ann = next_task(app, "ann")
    app.clock.advance(LEASE + 1)
    bob = next_task(app, "bob")
    assert bob["task_id"] == ann["task_id"]
    r = answer(app, "ann", ann["assignment_id"], rewrite="my careful answer")
    assert (r.status_code, r.json()["field"]) == (409, "assignment_id")
    assert "not stored" in r.json()["detail"]
    with db.read() as s:
        assert s.scalar(select(func.count(Judgment.id))) == 0
    assert status_of(app, ann["assignment_id"]) == ("expired", None)
    assert answer(app, "bob", bob["assignment_id"], rewrite="bob's answer").status_code == 201
    # a late skip needs no place: it is kept (it says why she left the task)
    r = answer(app, "ann", ann["assignment_id"], skip_reason="took too long, sorry")
    assert r.status_code == 201 and r.json()["skipped"] is True
    assert status_of(app, ann["assignment_id"]) == ("skipped", None)


def test_the_heartbeat_is_the_labelers_own(db):
    app = studio(db, overlap=2)
    ann = next_task(app, "ann")
    assert beat(app, "bob", ann["assignment_id"]).status_code == 404  # someone else's looks like none
    assert app.post(f"/api/assignments/{ann['assignment_id']}/heartbeat").status_code == 401
    assert answer(app, "ann", ann["assignment_id"]).status_code == 201
    r = beat(app, "ann", ann["assignment_id"])
    assert (r.status_code, r.json()["detail"]) == (409, "assignment_id: this assignment is done")


def test_lease_rules_in_the_python_api(db):
    with db.write() as s:
        p = create_project(s, "q", overlap=1, lease_minutes=10)
        import_records(s, p, numbered(generate_records(1)))
        ann, bob = create_labeler(s, "ann"), create_labeler(s, "bob")
        t0 = utcnow()
        a = assign.next_assignment(s, p, ann, now=t0)
        assert assign.heartbeat(s, a, p, now=t0 + dt.timedelta(minutes=9)) == t0 + dt.timedelta(minutes=19)
        assert assign.release_expired(s, p, now=t0 + dt.timedelta(minutes=18)) == 0
        assert assign.next_assignment(s, p, bob, now=t0 + dt.timedelta(minutes=18)) is None
        assert assign.release_expired(s, p, now=t0 + dt.timedelta(minutes=20)) == 1
        b = assign.next_assignment(s, p, bob, now=t0 + dt.timedelta(minutes=20))
        assert b.task_id == a.task_id
        with pytest.raises(Conflict, match="all its votes"):
            assign.reopen_expired(s, a, s.get(Task, a.task_id), p)
        add_judgment(s, b.task_id, s.get(Labeler, bob.id), "A", assignment=b)
    with db.read() as s:
        assert s.get(Assignment, a.id).status == "expired"
        assert get_project(s, "q").lease_minutes == 10
