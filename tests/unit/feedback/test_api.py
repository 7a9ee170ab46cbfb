"""The web app through FastAPI's TestClient: roles, sessions and CSRF, labeling, bad input."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import generate_records, numbered
from sqlalchemy import func, select

from alignloop.feedback import access, auth
from alignloop.feedback.api import ROUTERS, create_app
from alignloop.feedback.io import import_records
from alignloop.feedback.store import Assignment, Judgment, Task, create_labeler, create_project

PASSWORD = "correct horse battery"


@pytest.fixture
def studio(db):
    """An app with a pairwise project, an admin, its lead (lee) and two labelers who are its members, and carl,
    who is not a member (tokens in .tokens)."""
    with db.write() as s:
        p = create_project(s, "proj", overlap=2, guidelines="# Be fair\n<script>alert(1)</script>")
        recs = generate_records(4)
        recs[0]["completions"][1] = "<script>window.pwned=1</script><img src=x onerror=alert(1)>"
        import_records(s, p, numbered(recs))
        tokens = {}
        for name, role in [("admin", "admin"), ("lee", "lead"), ("ann", "labeler"), ("bob", "labeler"),
                           ("carl", "labeler")]:
            lab = create_labeler(s, name, role=role, password=PASSWORD if name == "ann" else None)
            tokens[name] = auth.new_token(s, lab)
            if name != "admin" and name != "carl":
                access.add_member(s, p, lab, "lead" if name == "lee" else "labeler", "test")
    client = TestClient(create_app(db))
    client.tokens = tokens
    client.db = db
    return client


def bearer(client, who):
    return {"Authorization": f"Bearer {client.tokens[who]}"}


def login(client, name="ann", password=PASSWORD):
    page = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = client.post("/login", data={"name": name, "password": password, "csrf_token": token, "next": "/"},
                    follow_redirects=False)
    return r


# every route of the app, with a request that exercises it: (method, path, json body, who may use it); "manage":
# the project's lead (lee) and admins. Order matters where a route undoes another (add then remove a member).
ROUTES = [
    ("GET", "/health", None, "public"),
    ("GET", "/login", None, "public"),
    ("POST", "/login", "form", "public"),
    ("GET", "/", None, "user"),
    ("GET", "/p/{name}", None, "user"),
    ("GET", "/p/{name}/guidelines", None, "user"),
    ("GET", "/lead/{name}", None, "manage"),
    ("POST", "/logout", None, "user"),
    ("GET", "/api/me", None, "user"),
    ("GET", "/api/me/judgments", None, "user"),
    ("GET", "/api/me/tokens", None, "user"),
    ("POST", "/api/me/tokens", {"days": 1, "name": "matrix"}, "user"),
    ("DELETE", "/api/me/tokens/{token_id}", None, "user"),
    ("GET", "/api/projects", None, "user"),
    ("POST", "/api/projects", {"name": "new-{who}"}, "manage"),
    ("GET", "/api/projects/{name}", None, "user"),
    ("PATCH", "/api/projects/{name}", {"overlap": 2}, "manage"),
    ("PUT", "/api/projects/{name}/guidelines", {"text": "v2"}, "manage"),
    ("POST", "/api/projects/{name}/import", "jsonl", "manage"),
    ("GET", "/api/projects/{name}/stats", None, "manage"),
    ("POST", "/api/projects/{name}/export", None, "manage"),
    ("GET", "/api/projects/{name}/members", None, "manage"),
    ("POST", "/api/projects/{name}/members", {"name": "carl"}, "manage"),
    ("DELETE", "/api/projects/{name}/members/carl", None, "manage"),
    ("POST", "/api/projects/{name}/accept-warning", None, "user"),
    ("GET", "/api/projects/{name}/judgments", None, "user"),
    ("POST", "/api/projects/{name}/next", None, "user"),
    ("GET", "/api/assignments/{assignment_id}", None, "user"),
    ("POST", "/api/assignments/{assignment_id}/heartbeat", None, "user"),
    ("POST", "/api/assignments/{assignment_id}/judgment", {"choice": "A"}, "user"),
    # the lead's tools (after the judgment above, so that the task has an answer to decide on)
    ("GET", "/api/projects/{name}/tasks", None, "manage"),
    ("GET", "/api/projects/{name}/tasks/{task_id}", None, "manage"),
    ("PUT", "/api/projects/{name}/tasks/{task_id}/adjudication", {"choice": "A"}, "manage"),
    ("DELETE", "/api/projects/{name}/tasks/{task_id}/adjudication", None, "manage"),
    ("GET", "/api/projects/{name}/review", None, "manage"),
    ("GET", "/api/projects/{name}/labelers/ann/history", None, "manage"),
    ("GET", "/api/projects/{name}/activity", None, "manage"),
    ("GET", "/lead/{name}/tasks", None, "manage"),
    ("GET", "/lead/{name}/tasks/{task_id}", None, "manage"),
    ("GET", "/lead/{name}/review", None, "manage"),
    ("GET", "/lead/{name}/labelers/ann", None, "manage"),
    ("GET", "/lead/{name}/charts/throughput.svg", None, "manage"),
    ("GET", "/api/users", None, "admin"),
    ("POST", "/api/users", {"name": "u-{who}", "role": "labeler"}, "admin"),
    ("POST", "/api/users/bob/deactivate", None, "admin"),
    ("POST", "/api/users/bob/reactivate", None, "admin"),
    ("POST", "/api/users/bob/reset-password", None, "admin"),
    ("POST", "/api/users/bob/end-sessions", None, "admin"),
    ("GET", "/api/users/bob/tokens", None, "admin"),
    ("POST", "/api/users/bob/tokens", {"days": 1}, "admin"),
    ("DELETE", "/api/users/bob/tokens", None, "admin"),
    ("GET", "/api/audit", None, "admin"),
]


def test_route_by_role_matrix(studio):
    app = studio.app.app  # unwrap the size-limit middleware
    # the app's own routes plus those of the routers it includes (FastAPI keeps included routers as one entry)
    routes = [r for r in app.routes if hasattr(r, "methods")] + [r for rt in ROUTERS for r in rt.routes]
    paths = {(m, r.path) for r in routes for m in r.methods if m != "HEAD"}
    wanted = {(m, p.replace("/members/carl", "/members/{user}").replace("/users/bob/", "/users/{name}/")
               .replace("/labelers/ann", "/labelers/{user}").replace("/throughput.svg", "/{chart}.svg"))
              for m, p, _, _ in ROUTES}
    assert paths == wanted, "every route must be in the matrix"

    for who in ("anonymous", "ann", "lee", "admin"):
        headers = bearer(studio, who) if who != "anonymous" else {}
        aid, token_id, task_id = 1, 1, 1
        if who != "anonymous":
            got = studio.post("/api/projects/proj/next", headers=headers).json()
            aid, task_id = got["assignment_id"], got["task_id"]
        for method, template, body, access_ in ROUTES:
            path = template.format(name="proj", assignment_id=aid, token_id=token_id, task_id=task_id)
            if body == "form":
                kwargs = {"data": {"name": "ann", "password": "x", "csrf_token": "x"}}
            elif body == "jsonl":
                kwargs = {"content": '{"prompt": "p-%s", "completions": ["a", "b"]}' % who}
            elif body is not None:
                kwargs = {"json": {k: (v.format(who=who) if isinstance(v, str) else v) for k, v in body.items()}}
            else:
                kwargs = {}
            r = studio.request(method, path, headers=headers, follow_redirects=False, **kwargs)
            if template == "/api/me/tokens" and method == "POST" and r.status_code == 201:
                token_id = r.json()["id"]
            allowed = access_ == "public" or (who != "anonymous" and (
                access_ == "user" or who == "admin" or (access_ == "manage" and who == "lee")))
            if allowed:
                assert r.status_code in (200, 201, 303), (who, method, path, r.status_code, r.text)
            elif who == "anonymous":
                assert r.status_code == 401, (who, method, path, r.status_code)
            else:
                assert r.status_code == 403, (who, method, path, r.status_code)


def test_html_pages_redirect_to_login(studio):
    r = studio.get("/lead/proj", headers={"Accept": "text/html"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=/lead/proj"


def test_login_session_and_csrf(studio):
    assert login(studio, password="wrong").headers["location"].startswith("/login?error=wrong")
    r = login(studio)
    assert r.status_code == 303 and "alignloop_session" in r.cookies
    me = studio.get("/api/me").json()
    assert me["name"] == "ann" and me["csrf_token"]
    # handing out a task writes: it is a POST and, with a cookie, needs the CSRF token (a GET from another
    # site's <img> used to create assignments in the labeler's name)
    assert studio.get("/api/projects/proj/next").status_code == 405
    assert studio.post("/api/projects/proj/next").status_code == 403
    assert studio.get("/api/projects/proj/export", headers=bearer(studio, "admin")).status_code == 405
    aid = studio.post("/api/projects/proj/next", headers={"X-CSRF-Token": me["csrf_token"]}).json()["assignment_id"]
    # a cookie-authenticated write without the CSRF token is refused and changes nothing
    r = studio.post(f"/api/assignments/{aid}/judgment", json={"choice": "A"})
    assert r.status_code == 403 and "CSRF" in r.json()["detail"]
    r = studio.post(f"/api/assignments/{aid}/judgment", json={"choice": "A"},
                    headers={"X-CSRF-Token": me["csrf_token"]})
    assert r.status_code == 201
    # a login form posted without the login CSRF cookie (a cross-site form) does not sign in
    fresh = TestClient(studio.app)
    r = fresh.post("/login", data={"name": "ann", "password": PASSWORD, "csrf_token": "guess"},
                   follow_redirects=False)
    assert r.headers["location"] == "/login?error=expired" and "alignloop_session" not in r.cookies
    assert studio.get("/api/me", headers={"Authorization": "Bearer nope"}).status_code == 401
    # signing out needs the session's token too (the form field), then the cookie no longer works
    assert studio.post("/logout", data={"csrf_token": "forged"}).status_code == 403
    old_cookie = studio.cookies.get("alignloop_session")
    r = studio.post("/logout", data={"csrf_token": me["csrf_token"]}, follow_redirects=False)
    assert r.status_code == 303
    studio.cookies.clear()  # replaying the old cookie fails: the session is gone on the server
    assert studio.get("/api/me", headers={"Cookie": f"alignloop_session={old_cookie}"}).status_code == 401


def test_labeling_flow_idempotency_and_privacy(studio):
    ann, bob = bearer(studio, "ann"), bearer(studio, "bob")
    task = studio.post("/api/projects/proj/next", headers=ann).json()
    assert [c["label"] for c in task["completions"]] == ["A", "B"]
    assert all("model" not in c for c in task["completions"])  # model names never reach labelers
    aid = task["assignment_id"]
    url = f"/api/assignments/{aid}/judgment"
    # bad input: 4xx naming the field, nothing stored
    for body, field in [({"choice": "C"}, "choice"), ({"choice": "A", "strength": "huge"}, "strength"),
                        ({"ranking": [1, 2]}, "ranking"), ({"choice": "A", "rewrite": "x" * 20_001}, "rewrite"),
                        ({"skip_reason": "x" * 20_001}, "skip_reason")]:
        r = studio.post(url, json=body, headers=ann)
        assert r.status_code == 422 and field in r.text, (body, r.text)
    assert studio.post(url, content=b"{" + b" " * (1 << 20) + b"}", headers={**ann, "Content-Type":
                       "application/json"}).status_code == 413
    assert studio.post("/api/assignments/999999/judgment", json={"choice": "A"}, headers=ann).status_code == 404
    # bob cannot see or answer ann's assignment, nor read her judgments
    assert studio.get(f"/api/assignments/{aid}", headers=bob).status_code == 404
    assert studio.post(url, json={"choice": "A"}, headers=bob).status_code == 404
    with studio.db.read() as s:
        assert s.scalar(select(func.count(Judgment.id))) == 0
    # the same submission twice (a client retry) is stored once
    first = studio.post(url, json={"choice": "A", "strength": "much_better"}, headers={**ann, "Idempotency-Key": "k-1"})
    again = studio.post(url, json={"choice": "A", "strength": "much_better"}, headers={**ann, "Idempotency-Key": "k-1"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["judgment_id"] == again.json()["judgment_id"]
    # a different submission for a finished assignment is stale
    stale = studio.post(url, json={"choice": "B"}, headers={**ann, "Idempotency-Key": "k-2"})
    assert stale.status_code == 409
    # displayed A maps to the canonical completion the labeler saw first
    with studio.db.read() as s:
        j = s.scalar(select(Judgment))
        a = s.get(Assignment, aid)
        t = s.get(Task, a.task_id)
        assert (j.choice == "A") == (a.display_order[0] == t.completion_ids[0])
        assert j.display_order == a.display_order
    mine = studio.get("/api/projects/proj/judgments", headers=ann).json()
    theirs = studio.get("/api/projects/proj/judgments", headers=bob).json()
    assert len(mine) == 1 and theirs == []


def test_skip_and_progress(studio):
    ann = bearer(studio, "ann")
    task = studio.post("/api/projects/proj/next", headers=ann).json()
    assert task["progress"] == {"done": 0, "available": 4}
    r = studio.post(f"/api/assignments/{task['assignment_id']}/judgment", json={"skip_reason": "unclear"},
                    headers=ann)
    assert r.status_code == 201 and r.json()["skipped"]
    nxt = studio.post("/api/projects/proj/next", headers=ann).json()
    assert nxt["task_id"] != task["task_id"] and nxt["progress"]["done"] == 1


def test_security_headers_and_guidelines_inert(studio):
    r = studio.get("/p/proj/guidelines", headers=bearer(studio, "ann"))
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert "<script>alert(1)</script>" not in r.text and "&lt;script&gt;" in r.text
    assert "<h1>Be fair</h1>" in r.text


def test_admin_api_users_import_and_export(studio):
    adm = bearer(studio, "admin")
    r = studio.post("/api/users", json={"name": "judge", "role": "labeler", "kind": "ai", "token": True},
                    headers=adm)
    assert r.status_code == 201 and r.json()["token"].startswith("al_") and len(r.json()["password"]) >= 12
    r = studio.post("/api/users", json={"name": "judge2"}, headers=adm)  # tokens only on request
    assert r.status_code == 201 and "token" not in r.json()
    assert studio.post("/api/users", json={"name": "judge"}, headers=adm).status_code == 409
    assert studio.post("/api/users", json={"name": "x", "role": "root"}, headers=adm).status_code == 422
    bad = '{"prompt": "a", "completions": ["x", "y"]}\n{"prompt": "b", "completions": 3}\n'
    r = studio.post("/api/projects/proj/import", content=bad, headers=adm)
    assert r.status_code == 422 and r.json()["line"] == 2 and r.json()["field"] == "completions"
    with studio.db.read() as s:
        assert s.scalar(select(func.count(Task.id))) == 4  # the good first line did not stay either
    r = studio.post("/api/projects/proj/export?format=nope", headers=adm)
    assert r.status_code == 422
    assert studio.get("/api/projects/nope/stats", headers=adm).status_code == 404


def test_import_upload_errors_name_the_line(studio):
    """Uploads are read by the same reader as files (io.parse_records); the API keeps its answers."""
    adm = bearer(studio, "admin")
    r = studio.post("/api/projects/proj/import", content='{"prompt": "a", "completions": ["x", "y"]}\n{"prompt"\n',
                    headers=adm)
    assert (r.status_code, r.json()) == (422, {"detail": "line 2: not valid JSON (Expecting ':' delimiter)",
                                               "field": "body"})
    r = studio.post("/api/projects/proj/import", content='[{"prompt": "a",]', headers=adm)
    assert (r.status_code, r.json()["detail"]) == (422, "line 1: not valid JSON (Expecting property name enclosed "
                                                        "in double quotes)")
    for empty in ("\n\n", "[]"):  # an empty array used to reach the importer ("upload: no records found")
        r = studio.post("/api/projects/proj/import", content=empty, headers=adm)
        assert (r.status_code, r.json()) == (422, {"detail": "no records in the request body", "field": "body"})


def test_bounds_sizes_encodings_and_cache_headers(studio):
    ann, adm = bearer(studio, "ann"), bearer(studio, "admin")
    aid = studio.post("/api/projects/proj/next", headers=ann).json()["assignment_id"]
    url = f"/api/assignments/{aid}/judgment"
    r = studio.post(url, json={"choice": "A", "duration_ms": 10**20}, headers=ann)  # was a 500 (integer overflow)
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "duration_ms"]
    # a chunked body (no Content-Length) over the limit is a 413 too, not a 400 or a 500
    chunks = iter([b'{"choice": "A", "rewrite": "', b"x" * (1 << 20), b'"}'])
    r = studio.post(url, content=chunks, headers={**ann, "Content-Type": "application/json"})
    assert (r.status_code, r.json()) == (413, {"detail": f"request body is larger than {1 << 20} bytes"})
    chunks = iter([b'{"prompt": "a", "completions": ["x", "y"]}\n'] * ((64 << 20) // 40 + 2))
    r = studio.post("/api/projects/proj/import", content=chunks, headers=adm)
    assert r.status_code == 413
    # an upload that is not UTF-8 is refused naming the line, not imported with U+FFFD in it
    body = '{"prompt": "a", "completions": ["x", "y"]}\n{"prompt": "caf'.encode() + b"\xe9" + \
        b'", "completions": ["x", "y"]}\n'
    r = studio.post("/api/projects/proj/import", content=body, headers=adm)
    assert (r.status_code, r.json()) == (422, {"detail": "line 2: not valid UTF-8 (byte 0xe9 at column 16)",
                                               "field": "body"})
    # answers with labels, tokens or users' prompts are never cached; HSTS for browsers on HTTPS
    for r in (studio.get("/api/me", headers=ann), studio.post("/api/projects/proj/export", headers=adm)):
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["strict-transport-security"] == "max-age=31536000"
    assert "cache-control" not in studio.get("/static/app.css").headers
