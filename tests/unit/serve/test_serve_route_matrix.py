"""Who may call what on the model server: every route and method of the app's route table, for every role, with
the exact status (docs/security.md, "Roles").

The routes come from the app itself (``app.routes``), so a route added later without a rule here fails
``test_every_route_has_a_rule``; each rule sends a request that succeeds for a caller allowed to make it, so a
refusal in the matrix is the role's doing, not a bad request's. Methods a path does not serve answer 405 to a
caller who may reach the path, and the same refusal as the served method to one who may not (the key and the
role are checked before routing).

Roles: ``anonymous`` (no key), ``wrong key``, ``inference`` (an ``--api-key``), ``admin`` (an ``--admin-key``) on a
server with keys and jobs on; ``keyless`` (no key) on a server started without any key (and so without jobs)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from serve_fixtures import ADMIN_KEY, ANSWER, KEY, LOCAL, REGISTERED, serve_app

ROLES = ("anonymous", "wrong key", "inference", "admin", "keyless")
HEADERS = {"anonymous": {}, "wrong key": {"Authorization": "Bearer not-a-key"},
           "inference": {"Authorization": f"Bearer {KEY}"}, "admin": {"Authorization": f"Bearer {ADMIN_KEY}"},
           "keyless": {}}
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
#: the error code that comes with each refusal (401, 403)
CODES = {("anonymous", 401): "missing_api_key", ("wrong key", 401): "invalid_api_key",
         ("inference", 403): "admin_key_required", ("keyless", 403): "admin_key_required"}


def statuses(anonymous: int, wrong: int, inference: int, admin: int, keyless: int) -> dict[str, int]:
    return dict(zip(ROLES, (anonymous, wrong, inference, admin, keyless)))


EVERYONE = statuses(200, 200, 200, 200, 200)  # no key needed
ANY_KEY = statuses(401, 401, 200, 200, 200)  # any valid key, or none on a keyless server
ADMIN_ONLY = statuses(401, 401, 403, 200, 403)
JOB = {"stage": "sft", "config": {"model": "tiny", "max_steps": 1},
       "data": [{"prompt": "What is 1 plus 1?", "completion": "2"}]}


@dataclass
class Rule:
    path: str  # the request's path, with its parameters filled in ({job} is the seeded job's id)
    expect: dict[str, int]
    body: Any = None


#: (method, route path as in the route table) -> the request and each role's status
RULES: dict[tuple[str, str], Rule] = {
    ("GET", "/health"): Rule("/health", EVERYONE),
    # the API's own documentation (only with --docs; without it these routes are not in the table)
    ("GET", "/openapi.json"): Rule("/openapi.json", ANY_KEY),
    ("HEAD", "/openapi.json"): Rule("/openapi.json", ANY_KEY),
    ("GET", "/docs"): Rule("/docs", ANY_KEY),
    ("HEAD", "/docs"): Rule("/docs", ANY_KEY),
    ("GET", "/docs/oauth2-redirect"): Rule("/docs/oauth2-redirect", ANY_KEY),
    ("HEAD", "/docs/oauth2-redirect"): Rule("/docs/oauth2-redirect", ANY_KEY),
    ("GET", "/redoc"): Rule("/redoc", ANY_KEY),
    ("HEAD", "/redoc"): Rule("/redoc", ANY_KEY),
    # models
    ("GET", "/v1/models"): Rule("/v1/models", ANY_KEY),
    ("GET", "/v1/models/{model_id:path}"): Rule("/v1/models/tiny", ANY_KEY),
    ("GET", "/v1/models/{model_id:path}/lineage"): Rule(f"/v1/models/{REGISTERED}/lineage", ADMIN_ONLY),
    # inference (the tiny model answers two tokens)
    ("POST", "/v1/chat/completions"): Rule("/v1/chat/completions", ANY_KEY,
                                           {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}),
    ("POST", "/v1/completions"): Rule("/v1/completions", ANY_KEY, {"prompt": "hi", "max_tokens": 2}),
    ("POST", "/v1/predict"): Rule("/v1/predict", ANY_KEY, {"question": "2+2?", "max_tokens": 2}),
    ("POST", "/v1/feedback"): Rule("/v1/feedback", statuses(401, 401, 201, 201, 201),
                                   {"response_id": ANSWER, "thumbs": "up"}),
    # training jobs: admin key only
    ("POST", "/v1/jobs"): Rule("/v1/jobs", statuses(401, 401, 403, 201, 403), JOB),
    ("GET", "/v1/jobs"): Rule("/v1/jobs", ADMIN_ONLY),
    ("GET", "/v1/jobs/{job_id}"): Rule("/v1/jobs/{job}", ADMIN_ONLY),
    ("GET", "/v1/jobs/{job_id}/logs"): Rule("/v1/jobs/{job}/logs", ADMIN_ONLY),
    ("POST", "/v1/jobs/{job_id}/cancel"): Rule("/v1/jobs/{job}/cancel", ADMIN_ONLY, {}),
}
DOCS = {k for k in RULES if k[1] in ("/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc")}


def route_table(app: Any) -> set[tuple[str, str]]:
    """Every (method, path) the app routes, routers included."""
    return {(m, rc.path) for rc in iter_route_contexts(app.routes) for m in (rc.methods or ())}


@pytest.fixture(scope="module")
def servers(tiny_pool, tmp_path_factory):
    """One server per role: each role's requests change state (a vote, a job), so none sees another's."""
    made = {role: serve_app(tmp_path_factory.mktemp(role.replace(" ", "-")), tiny_pool, keys=role != "keyless")
            for role in ROLES}
    yield made
    for s in made.values():
        s.reg.dispose()


def _call(client: TestClient, method: str, path: str, headers: dict, body: Any):
    kw: dict[str, Any] = {"headers": headers}
    if body is not None:
        kw["json"] = body
    return client.request(method, path, **kw)


def test_every_route_has_a_rule(servers):
    table = route_table(servers["admin"].app)
    assert sorted(table - set(RULES)) == [], "add a rule to RULES for each new route (who may call it?)"
    assert sorted(set(RULES) - table) == []  # no rule for a route that is gone
    assert route_table(servers["keyless"].app) == table
    from alignloop.serve.app import create_app

    no_docs = create_app(servers["admin"].app.state.server.cfg.replace(docs=False), None, None, None,
                         start_background=False)
    assert route_table(no_docs) == table - DOCS


def test_a_route_without_a_rule_is_caught(servers):
    """The check above is not vacuous: a route the table has never heard of shows up."""
    from alignloop.serve.app import create_app

    app = create_app(servers["admin"].app.state.server.cfg, None, None, None, start_background=False)
    app.add_api_route("/v1/new-thing", lambda: {}, methods=["GET", "DELETE"])
    assert sorted(route_table(app) - set(RULES)) == [("DELETE", "/v1/new-thing"), ("GET", "/v1/new-thing")]


@pytest.mark.parametrize("role", ROLES)
def test_each_role_gets_the_status_its_rule_says(servers, role):
    served = servers[role]
    client = TestClient(served.app, base_url=LOCAL)
    got, want = {}, {}
    for (method, route), rule in RULES.items():
        path = rule.path.replace("{job}", str(served.job_id or 1))
        r = _call(client, method, path, HEADERS[role], rule.body)
        got[method, route], want[method, route] = r.status_code, rule.expect[role]
        code = CODES.get((role, r.status_code))
        if code and method != "HEAD":
            assert r.json()["error"]["code"] == code, (method, route)
    assert got == want


@pytest.mark.parametrize("role", ROLES)
def test_methods_a_path_does_not_serve(servers, role):
    """405 to a caller who may reach the path; the served method's refusal (401, 403) to one who may not."""
    served = servers[role]
    client = TestClient(served.app, base_url=LOCAL)
    served_methods: dict[str, set[str]] = {}
    refusal: dict[str, int] = {}
    for (method, _), rule in RULES.items():
        path = rule.path.replace("{job}", str(served.job_id or 1))
        served_methods.setdefault(path, set()).add(method)
        if rule.expect[role] in (401, 403):
            refusal[path] = rule.expect[role]
    got, want = {}, {}
    for path, methods in served_methods.items():
        for method in sorted(set(METHODS) - methods):
            if path == "/health":
                want[method, path] = 405
            else:
                want[method, path] = refusal.get(path, 405)
            got[method, path] = client.request(method, path, headers=HEADERS[role]).status_code
    assert got == want
