"""Property-based fuzzing of the model server's OpenAPI schema (schemathesis): requests generated from the schema,
valid and not, sent with an admin key (so every route is reached, jobs included) to a server with the tiny model
loaded, a registry and a job queue. No answer may be a server error (5xx): a bad request is the client's (4xx).

The schema is the app's own (``app.openapi()``, the document ``--docs`` serves), read at collection from an app
without a model; the requests go to the fixture's app with the model. Bounded (a fixed number of examples per
route, derandomized so that a run is repeatable) to take seconds."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from serve_fixtures import ADMIN_KEY, LOCAL, serve_app  # noqa: E402

from alignloop.serve.app import create_app  # noqa: E402
from alignloop.serve.config import ServeConfig  # noqa: E402

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
schema = schemathesis.openapi.from_dict(
    create_app(ServeConfig(model="tiny", docs=True), None, None, None, start_background=False).openapi())


@pytest.fixture(scope="module")
def served(tiny_pool, tmp_path_factory):
    # short prompts and answers: a generated request that reaches the model costs a few ms
    s = serve_app(tmp_path_factory.mktemp("fuzz"), tiny_pool, max_prompt_tokens=64, max_tokens_limit=2,
                  default_max_tokens=1, max_request_tokens=8)
    yield s
    s.reg.dispose()


@schema.parametrize()
@settings(max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case, served):
    case.call_and_validate(app=served.app, base_url=LOCAL, headers=ADMIN, checks=[not_a_server_error])


# ---- what the fuzzing found (each was a 500) --------------------------------------------------------------


def test_an_empty_prompt_is_a_422(served):
    """An empty completion prompt encodes to no tokens, and the model cannot start from nothing."""
    client = TestClient(served.app, base_url=LOCAL)
    for prompt in ("", ["hi", ""]):
        r = client.post("/v1/completions", headers=ADMIN, json={"prompt": prompt, "max_tokens": 2})
        assert (r.status_code, r.json()["error"]) == (422, {
            "message": "the prompt is empty (no tokens); give the prompt some text", "type": "invalid_request_error",
            "param": "prompt", "code": "empty_prompt"}), prompt


def test_a_temperature_next_to_zero_decodes_greedily(served):
    """temperature 5e-324 divided the logits into inf (NaN probabilities): now it is greedy, as 0 is."""
    from alignloop.generation.sampling import SamplingParams

    assert [SamplingParams(temperature=t).generate_kwargs()["do_sample"] for t in (0.0, 5e-324, 9e-5, 1e-4)] == [
        False, False, False, True]
    client = TestClient(served.app, base_url=LOCAL)
    answers = []
    for t in (0.0, 5e-324):
        r = client.post("/v1/chat/completions", headers=ADMIN, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "temperature": t})
        assert r.status_code == 200, r.text
        answers.append(r.json()["choices"][0]["message"]["content"])
    assert answers[0] == answers[1]


def test_predict_without_max_tokens_takes_the_servers_default(served):
    """Found by the fuzzing (not a 5xx): predict's schema said 256 tokens, a second source of the server's
    --default-max-tokens, so a plain predict was a 422 on a server with a lower --max-tokens-limit."""
    r = TestClient(served.app, base_url=LOCAL).post("/v1/predict", headers=ADMIN, json={"question": "2+2?"})
    assert (r.status_code, r.json()["usage"]["completion_tokens"]) == (200, 1)  # this server's default


def test_job_ids_and_log_offsets_out_of_the_databases_range_are_a_422(served):
    """An id past SQLite's (and PostgreSQL's) integer raised OverflowError in the driver; a huge offset, in seek."""
    client = TestClient(served.app, base_url=LOCAL)
    for method, path in (("GET", "/v1/jobs/9223372036854775808"), ("GET", "/v1/jobs/2147483648/logs"),
                         ("POST", "/v1/jobs/2147483648/cancel"), ("GET", "/v1/jobs/0"),
                         ("GET", f"/v1/jobs/{served.job_id}/logs?offset=9223372036854775808"),
                         ("GET", f"/v1/jobs/{served.job_id}/logs?offset=-1")):
        r = client.request(method, path, headers=ADMIN)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "invalid_value"), path
    assert client.get("/v1/jobs/2147483647", headers=ADMIN).status_code == 404  # the largest id: not found
    r = client.get(f"/v1/jobs/{served.job_id}/logs?offset=9007199254740992", headers=ADMIN)
    assert (r.status_code, r.json()["text"]) == (200, "")
