"""Project access: members only, leads manage their own projects, served feedback for admins only, the
content warning accepted on the server, gold settings hidden from labelers; and the upgrade that grants it."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import generate_records, numbered
from sqlalchemy import select, text

from alignloop.feedback import access, auth
from alignloop.feedback.accounts import get_user
from alignloop.feedback.api import create_app
from alignloop.feedback.io import import_records
from alignloop.feedback.store import Conflict, Membership, create_labeler, create_project, get_project


@pytest.fixture
def app(db):
    """Projects 'team' (ann labels it, lee leads it) and 'other' (nobody's); carl is a member of nothing."""
    with db.write() as s:
        team, other = create_project(s, "team", overlap=2, gold_rate=0.2), create_project(s, "other")
        import_records(s, team, numbered(generate_records(3)))
        import_records(s, other, numbered(generate_records(3)))
        tokens = {}
        for name, role in [("admin", "admin"), ("lee", "lead"), ("ann", "labeler"), ("carl", "labeler")]:
            lab = create_labeler(s, name, role=role)
            tokens[name] = {"Authorization": f"Bearer {auth.new_token(s, lab)}"}
            if name in ("lee", "ann"):
                access.add_member(s, team, lab, "lead" if name == "lee" else "labeler", "test")
    client = TestClient(create_app(db))
    client.h, client.db = tokens, db
    return client


def test_labelers_reach_only_the_projects_they_are_members_of(app):
    ann, carl = app.h["ann"], app.h["carl"]
    assert [p["name"] for p in app.get("/api/projects", headers=ann).json()] == ["team"]
    assert app.get("/api/projects", headers=carl).json() == []
    for method, path in [("POST", "/api/projects/other/next"), ("GET", "/api/projects/other"),
                         ("GET", "/api/projects/other/judgments"), ("GET", "/p/other"), ("GET", "/p/other/guidelines"),
                         ("POST", "/api/projects/other/accept-warning")]:
        r = app.request(method, path, headers=ann)
        assert r.status_code == 404 and r.json()["detail"] == "project: no project named 'other'", (method, path)
    task = app.post("/api/projects/team/next", headers=ann).json()
    # removed from the project, she can no longer answer the task she holds
    assert app.delete("/api/projects/team/members/ann", headers=app.h["lee"]).status_code == 200
    r = app.post(f"/api/assignments/{task['assignment_id']}/judgment", json={"choice": "A"}, headers=ann)
    assert r.status_code == 404
    assert app.post("/api/projects/team/next", headers=ann).status_code == 404


def test_a_lead_manages_their_own_projects_only(app):
    lee = app.h["lee"]
    assert app.get("/api/projects/team/stats", headers=lee).status_code == 200
    assert app.get("/api/projects/other/stats", headers=lee).status_code == 404
    assert app.get("/api/projects/team/stats", headers=app.h["ann"]).status_code == 403
    r = app.post("/api/projects/team/members", json={"name": "carl"}, headers=lee)
    assert r.status_code == 201 and [m["name"] for m in app.get("/api/projects/team/members", headers=lee).json()] \
        == ["ann", "carl", "lee"]
    assert app.post("/api/projects/team/members", json={"name": "carl", "role": "lead"}, headers=lee).status_code == 403
    assert app.patch("/api/projects/team", json={"admin_only": True}, headers=lee).status_code == 403
    assert app.delete("/api/projects/team/members/lee", headers=lee).status_code == 403
    # a lead leads the projects they create
    assert app.post("/api/projects", json={"name": "mine"}, headers=lee).status_code == 201
    assert app.get("/api/projects/mine/members", headers=lee).json() == [{"name": "lee", "role": "lead",
                                                                         "active": True}]
    assert app.post("/api/projects", json={"name": "nope"}, headers=app.h["ann"]).status_code == 403


def test_gold_rate_is_hidden_from_labelers(app):
    assert "gold_rate" not in app.get("/api/projects/team", headers=app.h["ann"]).json()
    assert "gold_rate" not in app.get("/api/projects", headers=app.h["ann"]).json()[0]
    assert app.get("/api/projects/team", headers=app.h["lee"]).json()["gold_rate"] == 0.2


def test_served_feedback_projects_are_admin_only(app, tmp_path):
    from alignloop.serve.capture import add_answer_feedback

    add_answer_feedback(app.db.url, "served", "ans-1", "a real user's prompt", "an answer", "m", "u1", thumbs="up")
    with app.db.write() as s:
        served = get_project(s, "served")
        assert served.admin_only is True
        with pytest.raises(Conflict, match="admin-only"):
            access.add_member(s, served, get_user(s, "ann"), "labeler", "test")
        s.add(Membership(project_id=served.id, labeler_id=get_user(s, "ann").id, role="lead"))
    # even a membership made behind the rule's back does not open it
    assert app.get("/api/projects/served", headers=app.h["ann"]).status_code == 404
    assert app.get("/api/projects/served/stats", headers=app.h["ann"]).status_code == 404
    assert app.get("/api/projects/served", headers=app.h["admin"]).status_code == 200


def test_the_content_warning_is_accepted_on_the_server_before_the_first_task(app):
    ann, lee = app.h["ann"], app.h["lee"]
    assert app.put("/api/projects/team/guidelines", json={"text": "g", "content_warning": "Insults ahead"},
                   headers=lee).status_code == 200
    r = app.post("/api/projects/team/next", headers=ann)
    assert (r.status_code, r.json()["field"]) == (409, "content_warning")
    assert "prompt" not in r.json()  # nothing of the task before the warning is accepted
    assert app.get("/api/projects/team", headers=ann).json()["content_warning_accepted"] is False
    assert app.post("/api/projects/team/accept-warning", headers=ann).status_code == 200
    assert app.post("/api/projects/team/next", headers=ann).json()["prompt"]
    # a changed warning is asked again
    app.put("/api/projects/team/guidelines", json={"text": "g", "content_warning": "Worse insults ahead"}, headers=lee)
    assert app.post("/api/projects/team/next", headers=ann).status_code == 409


def test_the_upgrade_grants_membership_and_keeps_tokens_working(tmp_path):
    """A database at revision 0001 (the old schema): labelers with assignments become members of those projects,
    tokens get a 90-day expiry, projects with served-model feedback become admin-only."""
    from sqlalchemy import create_engine

    from alignloop.core.db import utcnow
    from alignloop.feedback.migrations import upgrade
    from alignloop.feedback.models import Database

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = create_engine(url)
    upgrade(engine, "0001")
    now = utcnow()
    rows = {
        "labelers": [(1, "bob", "human", "labeler"), (2, "root", "human", "admin"), (3, "user:u1", "user", "labeler"),
                     (4, "dan", "human", "labeler")],
        "projects": [(1, "compat"), (2, "served")],
    }
    with engine.begin() as c:
        for lid, name, kind, role in rows["labelers"]:
            c.execute(text("INSERT INTO labelers (id, name, kind, role, identity, active, created_at) "
                           "VALUES (:i, :n, :k, :r, '', 1, :t)"), {"i": lid, "n": name, "k": kind, "r": role, "t": now})
        for pid, name in rows["projects"]:
            c.execute(text("INSERT INTO projects (id, name, task_type, criteria, flags, scale, overlap, gold_rate, "
                           "\"order\", lease_minutes, guidelines, content_warning, guidelines_version, created_at) "
                           "VALUES (:i, :n, 'pairwise', '[]', '[]', 5, 2, 0, 'import', 60, '', '', 1, :t)"),
                      {"i": pid, "n": name, "t": now})
            c.execute(text("INSERT INTO prompts (id, project_id, external_id, prompt, extra) "
                           "VALUES (:i, :i, 'x', '\"p\"', '{}')"), {"i": pid})
            c.execute(text("INSERT INTO tasks (id, project_id, prompt_id, task_type, completion_ids, seq, is_gold, "
                           "created_at) VALUES (:i, :i, :i, 'pairwise', '[]', 1, 0, :t)"), {"i": pid, "t": now})
        for lid in (1, 2):  # bob and the admin hold assignments in compat
            c.execute(text("INSERT INTO assignments (task_id, labeler_id, slot, display_order, status, created_at) "
                           "VALUES (1, :l, NULL, '[]', 'done', :t)"), {"l": lid, "t": now})
        c.execute(text("INSERT INTO judgments (task_id, labeler_id, choice, skipped, guideline_version, created_at) "
                       "VALUES (2, 3, 'A', 0, 1, :t)"), {"t": now})
        c.execute(text("INSERT INTO api_tokens (labeler_id, token_hash, created_at) VALUES (1, :h, :t)"),
                  {"h": auth.hash_token("al_old"), "t": now})
    engine.dispose()
    db = Database(url)
    with db.read() as s:
        assert [(m.project_id, m.labeler_id, m.role) for m in s.scalars(select(Membership))] == [(1, 1, "labeler")]
        assert s.execute(text("SELECT name, admin_only FROM projects ORDER BY id")).all() == [("compat", 0),
                                                                                             ("served", 1)]
        lab, token = auth.token_for(s, "al_old")
        assert lab.name == "bob" and 89 <= (token.expires_at - now).days <= 90
    db.dispose()
