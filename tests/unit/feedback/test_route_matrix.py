"""Who may use which route of the studio, as one table: every route and method of the app (API and pages) x six
callers: anonymous, a labeler who is a member of the project, a labeler who is not, the project's lead, the lead of
another project, and an admin. Each cell is the exact status the request must get.

The list of routes comes from the app itself, so a route added without a row here fails
``test_every_route_has_a_row`` (and a row whose route is gone fails it too). One app and one SQLite database
serve the whole module; each request acts on objects of its own (its own user, token, member), so the cells do
not depend on the order they run in.
"""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from feedback_helpers import generate_records, numbered

from alignloop.feedback import access, assign, auth
from alignloop.feedback.api import create_app
from alignloop.feedback.io import import_records
from alignloop.feedback.store import ApiToken, Database, Labeler, create_labeler, create_project

ROLES = ("anonymous", "member", "nonmember", "lead", "otherlead", "admin")
PASSWORD = "matrix password 1"

# (method, path): statuses for anonymous, member, nonmember, lead (of "proj"), otherlead (of "other"), admin.
# {name} is the project "proj" (or, under /api/users and /admin/users, a user of that row's own); {user} a
# member of "proj" made for that caller; {assignment_id} the member's assignment; {token_id} the caller's own token.
# Pages answer 303 where they redirect after a form; a JSON client (no text/html in Accept) gets JSON errors.
MATRIX: dict[tuple[str, str], tuple[int, int, int, int, int, int]] = {
    # public
    ("GET", "/health"):                                   (200, 200, 200, 200, 200, 200),
    ("GET", "/login"):                                    (200, 200, 200, 200, 200, 200),
    ("POST", "/login"):                                   (303, 303, 303, 303, 303, 303),  # no login cookie
    ("GET", "/static/{path}"):                            (200, 200, 200, 200, 200, 200),
    # pages
    ("POST", "/logout"):                                  (401, 303, 303, 303, 303, 303),
    ("GET", "/"):                                         (401, 200, 200, 200, 200, 200),
    ("GET", "/p/{name}"):                                 (401, 200, 404, 200, 404, 200),
    ("GET", "/p/{name}/guidelines"):                      (401, 200, 404, 200, 404, 200),
    ("GET", "/lead/{name}"):                              (401, 403, 404, 200, 404, 200),
    ("GET", "/lead/{name}/members"):                      (401, 403, 404, 200, 404, 200),
    ("POST", "/lead/{name}/members"):                     (401, 403, 404, 303, 404, 303),
    ("POST", "/lead/{name}/members/{user}/remove"):       (401, 403, 404, 303, 404, 303),
    # the admin's pages
    ("GET", "/admin/users"):                              (401, 403, 403, 403, 403, 200),
    ("GET", "/admin/users/{name}"):                       (401, 403, 403, 403, 403, 200),
    ("POST", "/admin/users/{name}/deactivate"):           (401, 403, 403, 403, 403, 303),
    ("POST", "/admin/users/{name}/reactivate"):           (401, 403, 403, 403, 403, 303),
    ("POST", "/admin/users/{name}/reset-password"):       (401, 403, 403, 403, 403, 200),
    ("POST", "/admin/users/{name}/end-sessions"):         (401, 403, 403, 403, 403, 303),
    ("POST", "/admin/users/{name}/revoke-tokens"):        (401, 403, 403, 403, 403, 303),
    ("GET", "/admin/audit"):                              (401, 403, 403, 403, 403, 200),
    # the signed-in user
    ("GET", "/api/me"):                                   (401, 200, 200, 200, 200, 200),
    ("GET", "/api/me/judgments"):                         (401, 200, 200, 200, 200, 200),
    ("GET", "/api/me/tokens"):                            (401, 200, 200, 200, 200, 200),
    ("POST", "/api/me/tokens"):                           (401, 201, 201, 201, 201, 201),
    ("DELETE", "/api/me/tokens/{token_id}"):              (401, 200, 200, 200, 200, 200),
    # projects: a non-member gets 404 (as if it did not exist), a plain member 403 where managing is needed
    ("GET", "/api/projects"):                             (401, 200, 200, 200, 200, 200),
    ("POST", "/api/projects"):                            (401, 403, 403, 201, 201, 201),
    ("GET", "/api/projects/{name}"):                      (401, 200, 404, 200, 404, 200),
    ("PATCH", "/api/projects/{name}"):                    (401, 403, 404, 200, 404, 200),
    ("PUT", "/api/projects/{name}/guidelines"):           (401, 403, 404, 200, 404, 200),
    ("POST", "/api/projects/{name}/import"):              (401, 403, 404, 200, 404, 200),
    ("GET", "/api/projects/{name}/stats"):                (401, 403, 404, 200, 404, 200),
    ("POST", "/api/projects/{name}/export"):              (401, 403, 404, 200, 404, 200),
    ("GET", "/api/projects/{name}/members"):              (401, 403, 404, 200, 404, 200),
    ("POST", "/api/projects/{name}/members"):             (401, 403, 404, 201, 404, 201),
    ("DELETE", "/api/projects/{name}/members/{user}"):    (401, 403, 404, 200, 404, 200),
    ("POST", "/api/projects/{name}/accept-warning"):      (401, 200, 404, 200, 404, 200),
    ("GET", "/api/projects/{name}/judgments"):            (401, 200, 404, 200, 404, 200),
    ("POST", "/api/projects/{name}/next"):                (401, 200, 404, 200, 404, 200),
    # someone's assignment is theirs alone: anyone else, admins included, gets 404
    ("GET", "/api/assignments/{assignment_id}"):          (401, 200, 404, 404, 404, 404),
    ("POST", "/api/assignments/{assignment_id}/heartbeat"): (401, 200, 404, 404, 404, 404),
    ("POST", "/api/assignments/{assignment_id}/judgment"): (401, 201, 404, 404, 404, 404),
    # the lead's tools (after the judgment above, so that {task_id}, the member's task, has an answer to decide on)
    ("GET", "/api/projects/{name}/tasks"):                (401, 403, 404, 200, 404, 200),
    ("GET", "/api/projects/{name}/tasks/{task_id}"):      (401, 403, 404, 200, 404, 200),
    ("PUT", "/api/projects/{name}/tasks/{task_id}/adjudication"): (401, 403, 404, 200, 404, 200),
    ("DELETE", "/api/projects/{name}/tasks/{task_id}/adjudication"): (401, 403, 404, 200, 404, 200),
    ("GET", "/api/projects/{name}/review"):               (401, 403, 404, 200, 404, 200),
    ("GET", "/api/projects/{name}/labelers/{user}/history"): (401, 403, 404, 200, 404, 200),
    ("GET", "/api/projects/{name}/activity"):             (401, 403, 404, 200, 404, 200),
    ("GET", "/lead/{name}/tasks"):                        (401, 403, 404, 200, 404, 200),
    ("GET", "/lead/{name}/tasks/{task_id}"):              (401, 403, 404, 200, 404, 200),
    ("GET", "/lead/{name}/review"):                       (401, 403, 404, 200, 404, 200),
    ("GET", "/lead/{name}/labelers/{user}"):              (401, 403, 404, 200, 404, 200),
    ("GET", "/lead/{name}/charts/{chart}.svg"):           (401, 403, 404, 200, 404, 200),
    # accounts: admins only
    ("GET", "/api/users"):                                (401, 403, 403, 403, 403, 200),
    ("POST", "/api/users"):                               (401, 403, 403, 403, 403, 201),
    ("POST", "/api/users/{name}/deactivate"):             (401, 403, 403, 403, 403, 200),
    ("POST", "/api/users/{name}/reactivate"):             (401, 403, 403, 403, 403, 200),
    ("POST", "/api/users/{name}/reset-password"):         (401, 403, 403, 403, 403, 200),
    ("POST", "/api/users/{name}/end-sessions"):           (401, 403, 403, 403, 403, 200),
    ("GET", "/api/users/{name}/tokens"):                  (401, 403, 403, 403, 403, 200),
    ("POST", "/api/users/{name}/tokens"):                 (401, 403, 403, 403, 403, 201),
    ("DELETE", "/api/users/{name}/tokens"):               (401, 403, 403, 403, 403, 200),
    ("GET", "/api/audit"):                                (401, 403, 403, 403, 403, 200),
}

# the body of each row's request (where it needs one); "{role}" is replaced by the caller's role
BODIES: dict[tuple[str, str], dict] = {
    ("POST", "/login"): {"data": {"name": "member", "password": "x", "csrf_token": "x"}},
    ("POST", "/api/me/tokens"): {"json": {"days": 1, "name": "matrix"}},
    ("POST", "/api/projects"): {"json": {"name": "new-{role}"}},
    ("PATCH", "/api/projects/{name}"): {"json": {"overlap": 2}},
    ("PUT", "/api/projects/{name}/guidelines"): {"json": {"text": "Be fair ({role})."}},
    ("POST", "/api/projects/{name}/import"): {"content": '{"prompt": "from {role}", "completions": ["a", "b"]}\n'},
    ("POST", "/api/projects/{name}/members"): {"json": {"name": "joiner-{role}"}},
    ("POST", "/lead/{name}/members"): {"data": {"member": "page-joiner-{role}"}},
    ("POST", "/api/assignments/{assignment_id}/judgment"): {"json": {"choice": "A"}},
    ("PUT", "/api/projects/{name}/tasks/{task_id}/adjudication"): {"json": {"choice": "A"}},
    ("POST", "/api/users"): {"json": {"name": "made-by-{role}"}},
    ("POST", "/api/users/{name}/tokens"): {"json": {"days": 1}},
}

# a row that undoes something: the row whose request makes it again before each caller's request
SETUP: dict[tuple[str, str], tuple[str, str]] = {
    ("DELETE", "/api/projects/{name}/tasks/{task_id}/adjudication"):
        ("PUT", "/api/projects/{name}/tasks/{task_id}/adjudication"),
}

SAFE = ("GET", "HEAD", "OPTIONS")


def app_routes(app) -> set[tuple[str, str]]:
    """(method, path) of every route the app answers, read from its route table: plain routes, the routes of
    included routers (however deep) and mounted static files (as ``/static/{path}``)."""
    out: set[tuple[str, str]] = set()

    def walk(routes, prefix: str = "") -> None:
        for r in routes:
            if hasattr(r, "effective_candidates"):  # FastAPI >= 0.130 keeps an included router as one entry
                walk(r.effective_candidates(), prefix)
            elif getattr(r, "methods", None):
                out.update((m, prefix + r.path) for m in r.methods if m != "HEAD")
            elif hasattr(r, "app") and hasattr(r, "path"):  # a Mount
                sub = getattr(r.app, "routes", None)
                if sub:
                    walk(sub, prefix + r.path)
                else:
                    out.add(("GET", prefix + r.path + "/{path}"))
            else:
                raise AssertionError(f"the matrix does not know how to read route {r!r}")

    walk(app.routes)
    return out


@pytest.fixture(scope="module")
def studio(tmp_path_factory):
    """Projects "proj" and "other"; one user per role (named after it); for each caller a spare token, a member
    of "proj" to remove and a user to add; for each /api/users row a user to act on; the member's assignment."""
    db = Database(f"sqlite:///{tmp_path_factory.mktemp('matrix') / 'labels.db'}")
    ctx: dict = {"tokens": {}, "token_ids": {}}
    with db.write() as s:
        proj, other = create_project(s, "proj", overlap=3), create_project(s, "other")
        import_records(s, proj, numbered(generate_records(3)))
        import_records(s, other, numbered(generate_records(2)))
        roles = {"member": "labeler", "nonmember": "labeler", "lead": "lead", "otherlead": "lead", "admin": "admin"}
        for name, role in roles.items():
            lab = create_labeler(s, name, role=role)
            ctx["tokens"][name] = auth.new_token(s, lab)
            auth.new_token(s, lab, name="spare")
        s.flush()
        for name in roles:
            lab = s.query(Labeler).filter_by(name=name).one()
            ctx["token_ids"][name] = max(t.id for t in s.query(ApiToken).filter_by(labeler_id=lab.id))
        members = {"member": ("proj", "labeler"), "lead": ("proj", "lead"), "otherlead": ("other", "lead")}
        for name, (project, role) in members.items():
            access.add_member(s, proj if project == "proj" else other, s.query(Labeler).filter_by(name=name).one(),
                              role, "test")
        for role in ROLES:
            for prefix in ("", "page-"):
                access.add_member(s, proj, create_labeler(s, f"{prefix}leaver-{role}"), "labeler", "test")
                create_labeler(s, f"{prefix}joiner-{role}")
        for method, path in MATRIX:
            if path.startswith(("/api/users/{name}", "/admin/users/{name}")):
                create_labeler(s, target_user(method, path))
        a = assign.next_assignment(s, proj, s.query(Labeler).filter_by(name="member").one())
        ctx["assignment_id"], ctx["task_id"] = a.id, a.task_id
    client = TestClient(create_app(db))
    client.ctx, client.db = ctx, db
    yield client
    db.dispose()


def target_user(method: str, path: str) -> str:
    """The user a /api/users/{name}/... row acts on: its own, so deactivating one never blocks another row."""
    return "t-" + re.sub(r"[^a-z]+", "-", f"{method} {path}".lower()).strip("-")


def request_for(studio, method: str, template: str, role: str) -> dict:
    ctx = studio.ctx
    name = target_user(method, template) if template.startswith(("/api/users/{name}", "/admin/users/{name}")) \
        else "proj"
    leaver = f"page-leaver-{role}" if template.startswith("/lead/") else f"leaver-{role}"
    path = template.format(name=name, user=leaver, assignment_id=ctx["assignment_id"],
                           token_id=ctx["token_ids"].get(role, 1), path="app.css", task_id=ctx["task_id"],
                           chart="throughput")
    kwargs = {}
    for kind, body in BODIES.get((method, template), {}).items():
        if kind == "content":
            kwargs[kind] = body.replace("{role}", role)
        else:
            kwargs[kind] = {k: v.replace("{role}", role) if isinstance(v, str) else v for k, v in body.items()}
    headers = {"Authorization": f"Bearer {ctx['tokens'][role]}"} if role != "anonymous" else {}
    return {"method": method, "url": path, "headers": headers, "follow_redirects": False, **kwargs}


def test_every_route_has_a_row(studio):
    routes = app_routes(studio.app.app)  # (unwrap the size-limit middleware)
    assert routes - set(MATRIX) == set(), "routes without a row in MATRIX: say who may use them"
    assert set(MATRIX) - routes == set(), "rows in MATRIX for routes the app no longer has"
    assert set(BODIES) <= set(MATRIX)


@pytest.mark.parametrize("method,path", list(MATRIX), ids=[f"{m} {p}" for m, p in MATRIX])
def test_route_by_role(studio, method, path):
    def call(role: str) -> int:
        if (method, path) in SETUP:  # what the row undoes is made again first (as the admin), for every caller
            req = request_for(studio, *SETUP[(method, path)], "admin")
            assert studio.request(**req).status_code < 300
        return studio.request(**request_for(studio, method, path, role)).status_code

    got = tuple(call(role) for role in ROLES)
    assert dict(zip(ROLES, got)) == dict(zip(ROLES, MATRIX[(method, path)]))


def test_a_session_cookie_without_the_csrf_token_changes_nothing(studio):
    """Every state-changing route refuses a signed-in browser whose request lacks the session's CSRF token (an
    admin's session, so that a 403 comes from the missing token, not from the role)."""
    with studio.db.write() as s:
        s.query(Labeler).filter_by(name="admin").one().password_hash = auth.hash_password(PASSWORD)
    browser = TestClient(studio.app)
    page = browser.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    r = browser.post("/login", data={"name": "admin", "password": PASSWORD, "csrf_token": token},
                     follow_redirects=False)
    assert r.status_code == 303 and "alignloop_session" in browser.cookies
    unsafe = sorted((m, p) for m, p in app_routes(studio.app.app) if m not in SAFE and p != "/login")
    assert len(unsafe) >= 20
    for method, path in unsafe:
        req = request_for(studio, method, path, "admin")
        del req["headers"]["Authorization"]
        r = browser.request(**req)
        assert r.status_code == 403, (method, path, r.status_code, r.text)
    assert browser.get("/api/me").status_code == 200  # still signed in: the refusals were about the token
