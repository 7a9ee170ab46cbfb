"""The admin's pages (users, tokens, sessions, the audit log) and the lead's members page, as a browser uses them:
signed in with a session cookie, forms posted with the session's CSRF token, pages asked for as text/html."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import generate_records, numbered
from sqlalchemy import select

from alignloop.feedback import access, auth
from alignloop.feedback.api import create_app
from alignloop.feedback.io import import_records
from alignloop.feedback.store import Labeler, Membership, create_labeler, create_project

PASSWORD = "page password 1"
HTML = {"Accept": "text/html"}
XSS = "<img src=x onerror=alert(1)>"


@pytest.fixture
def studio(db):
    """Projects "team" (lee leads it, ann labels it) and "other" (olga leads it); carl is a member of nothing;
    bob has no password; a user whose name is markup."""
    with db.write() as s:
        team, other = create_project(s, "team"), create_project(s, "other")
        import_records(s, team, numbered(generate_records(2)))
        tokens = {}
        for name, role in [("admin", "admin"), ("lee", "lead"), ("olga", "lead"), ("ann", "labeler"),
                           ("carl", "labeler"), ("bob", "labeler"), (XSS, "labeler")]:
            lab = create_labeler(s, name, role=role, password=PASSWORD if name in ("admin", "lee", "olga", "ann")
                                 else None)
            tokens[name] = auth.new_token(s, lab, name="first")
        for project, name, role in [(team, "lee", "lead"), (team, "ann", "labeler"), (other, "olga", "lead"),
                                    (team, XSS, "labeler")]:
            access.add_member(s, project, s.scalar(select(Labeler).where(Labeler.name == name)), role, "test")
    app = create_app(db)
    app.db, app.tokens = db, tokens
    return app


def sign_in(app, name: str, password: str = PASSWORD, client: TestClient | None = None) -> str:
    """Where the sign-in form sends a browser ("/" when it worked)."""
    client = client or TestClient(app, headers=HTML)
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"name": name, "password": password, "csrf_token": token}, follow_redirects=False)
    return r.headers["location"]


def browser(app, name: str | None = None, password: str = PASSWORD) -> TestClient:
    """A client that asks for pages as a browser does, signed in as ``name`` (cookie session)."""
    client = TestClient(app, headers=HTML)
    if name is not None:
        assert sign_in(app, name, password, client) == "/", name
    return client


def csrf(client: TestClient) -> str:
    return client.get("/api/me").json()["csrf_token"]


def post_form(client: TestClient, path: str, **fields) -> object:
    return client.post(path, data={"csrf_token": csrf(client), **fields}, follow_redirects=False)


def bearer(app, who: str) -> dict:
    return {"Authorization": f"Bearer {app.tokens[who]}"}


def test_an_admin_offboards_from_the_pages(studio):
    admin, ann = browser(studio, "admin"), browser(studio, "ann")
    assert ann.get("/api/me").status_code == 200
    page = admin.get("/admin/users")
    assert page.status_code == 200
    assert re.findall(r'<tr data-user="([^"]+)">', page.text) == ["&lt;img src=x onerror=alert(1)&gt;", "admin", "ann",
                                                                  "bob", "carl", "lee", "olga"]
    row = re.search(r'<tr data-user="ann">(.*?)</tr>', page.text, re.S).group(1)
    assert re.findall(r"<td>([^<]*)</td>", row) == ["ann", "labeler", "human", "active", "1", "1"]

    r = post_form(admin, "/admin/users/ann/deactivate")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users/ann?done=deactivated")
    page = admin.get(r.headers["location"])
    assert "Deactivated: every session ended and every token revoked." in page.text
    assert '<span class="error">deactivated</span>' in page.text and 'id="reactivate"' in page.text
    assert ann.get("/api/me").status_code == 401 and ann.get("/", follow_redirects=False).status_code == 303
    assert TestClient(studio).get("/api/me", headers=bearer(studio, "ann")).status_code == 401
    assert sign_in(studio, "ann").startswith("/login?error=wrong")

    r = post_form(admin, "/admin/users/ann/reactivate")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users/ann?done=reactivated")
    ann = browser(studio, "ann")
    r = post_form(admin, "/admin/users/ann/reset-password")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    new = re.search(r'<code id="new-password" class="pre">([^<]+)</code>', r.text).group(1)
    assert "1 session(s) ended" in r.text and ann.get("/api/me").status_code == 401
    ann = browser(studio, "ann", new)
    r = post_form(admin, "/admin/users/ann/end-sessions")
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users/ann?done=sessions-ended")
    assert ann.get("/api/me").status_code == 401

    log = admin.get("/admin/audit?target=ann").text
    actions = re.findall(r"<td>admin</td><td>([a-z._]+)</td><td>ann</td>", log)
    assert actions == ["sessions.end", "user.reset_password", "user.reactivate", "user.deactivate", "tokens.revoke",
                       "sessions.end"]  # newest first
    assert "<td>lee</td>" not in log  # only entries about ann


def test_tokens_are_listed_and_revoked_one_or_all(studio):
    with studio.db.write() as s:
        bob = s.scalar(select(Labeler).where(Labeler.name == "bob"))
        second = auth.new_token(s, bob, days=3, name="ci")
    admin = browser(studio, "admin")
    page = admin.get("/admin/users/bob").text
    ids = [int(i) for i in re.findall(r'<tr data-token="(\d+)">', page)]
    assert len(ids) == 2 and "<td>ci</td>" in page and "no password" in page
    r = post_form(admin, "/admin/users/bob/revoke-tokens", token_id=str(ids[1]))
    assert (r.status_code, r.headers["location"]) == (303, "/admin/users/bob?done=tokens-revoked")
    api = TestClient(studio)
    assert api.get("/api/me", headers={"Authorization": f"Bearer {second}"}).status_code == 401
    assert api.get("/api/me", headers=bearer(studio, "bob")).status_code == 200
    assert [int(i) for i in re.findall(r'<tr data-token="(\d+)">', admin.get("/admin/users/bob").text)] == ids[:1]
    assert post_form(admin, "/admin/users/bob/revoke-tokens").status_code == 303  # every one
    assert api.get("/api/me", headers=bearer(studio, "bob")).status_code == 401
    assert "No tokens." in admin.get("/admin/users/bob").text


def test_forms_need_the_sessions_csrf_token(studio):
    admin = browser(studio, "admin")
    for fields in ({}, {"csrf_token": "forged"}):
        r = admin.post("/admin/users/ann/deactivate", data=fields, follow_redirects=False)
        assert r.status_code == 403 and "missing or wrong CSRF token" in r.text and "<!doctype html>" in r.text
        r = admin.post("/lead/team/members", data={"member": "carl", **fields}, follow_redirects=False)
        assert r.status_code == 403
    with studio.db.read() as s:
        assert s.scalar(select(Labeler.active).where(Labeler.name == "ann")) is True
        assert s.scalar(select(Membership.id).join(Labeler, Labeler.id == Membership.labeler_id)
                        .where(Labeler.name == "carl")) is None


def test_browsers_get_pages_for_errors(studio):
    admin, ann = browser(studio, "admin"), browser(studio, "ann")
    r = post_form(admin, "/admin/users/admin/deactivate")  # not oneself: the API's rule and message
    assert r.status_code == 409 and "you cannot deactivate yourself; ask another admin" in r.text
    assert 'id="problem"' in r.text and r.headers["content-type"].startswith("text/html")
    assert 'id="deactivate"' not in admin.get("/admin/users/admin").text  # nor is it offered
    r = admin.get("/admin/users/nobody")
    assert r.status_code == 404 and "no user named &#39;nobody&#39;" in r.text
    r = ann.get("/admin/users")
    assert r.status_code == 403 and "this needs the admin role" in r.text
    anonymous = browser(studio)
    r = anonymous.get("/admin/users", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login?next=/admin/users")
    r = anonymous.post("/admin/users/ann/deactivate", data={"csrf_token": "x"}, follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (303, "/login")
    # the JSON API keeps answering JSON
    r = TestClient(studio).get("/api/users", headers={**HTML, **bearer(studio, "ann")})
    assert (r.status_code, r.json()) == (403, {"detail": "this needs the admin role"})


def test_a_lead_manages_the_members_of_their_own_project(studio):
    lee = browser(studio, "lee")
    page = lee.get("/lead/team/members")
    assert page.status_code == 200
    assert re.findall(r'<tr data-member="([^"]+)">', page.text) == ["&lt;img src=x onerror=alert(1)&gt;", "ann", "lee"]
    assert 'name="role" value="labeler"' in page.text and "<select" not in page.text  # a lead adds labelers only
    r = post_form(lee, "/lead/team/members", member="carl")
    assert (r.status_code, r.headers["location"]) == (303, "/lead/team/members?done=added")
    assert "Member added." in lee.get(r.headers["location"]).text
    carl = TestClient(studio, headers=bearer(studio, "carl"))
    assert [p["name"] for p in carl.get("/api/projects").json()] == ["team"]
    r = post_form(lee, "/lead/team/members", member="bob", role="lead")
    assert r.status_code == 403 and "only an admin makes someone a lead" in r.text
    r = post_form(lee, "/lead/team/members", member="nobody")
    assert r.status_code == 404 and "no user named" in r.text
    r = post_form(lee, "/lead/team/members/carl/remove")
    assert (r.status_code, r.headers["location"]) == (303, "/lead/team/members?done=removed")
    assert carl.get("/api/projects").json() == []
    r = post_form(lee, "/lead/team/members/lee/remove")
    assert r.status_code == 403 and "only an admin removes a lead" in r.text
    # a lead of another project, and a labeler of this one, do not reach it
    olga, ann = browser(studio, "olga"), browser(studio, "ann")
    assert olga.get("/lead/team/members").status_code == 404
    assert post_form(olga, "/lead/team/members", member="carl").status_code == 404
    assert ann.get("/lead/team/members").status_code == 403
    # an admin may make someone a lead here
    admin = browser(studio, "admin")
    assert "<select name=\"role\">" in admin.get("/lead/team/members").text
    assert post_form(admin, "/lead/team/members", member="carl", role="lead").status_code == 303
    assert {"name": "carl", "role": "lead", "active": True} in TestClient(studio).get(
        "/api/projects/team/members", headers=bearer(studio, "admin")).json()


def test_names_are_shown_as_text_and_linked_as_one_path_segment(studio):
    admin = browser(studio, "admin")
    with studio.db.write() as s:
        create_labeler(s, "a/b?c#d")
    pages = [admin.get("/admin/users").text, admin.get("/lead/team/members").text,
             admin.get("/admin/audit").text]
    for text in pages:
        assert XSS not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    assert 'href="/admin/users/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"' in pages[0]
    assert 'href="/admin/users/a%2Fb%3Fc%23d"' in pages[0]
    assert admin.get("/admin/users/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E").status_code == 200
