"""``alignloop.Client`` follows the server's scoped keys: jobs and lineage go with the admin key, everything else
with the inference key, and a job asked for with an inference key fails with what to do about it. Against the
app in process (its HTTP client swapped for a test client of the same app), without a model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from serve_fixtures import ADMIN_KEY, ANSWER, KEY, LOCAL, REGISTERED, serve_app

import alignloop
from alignloop.client import AdminKeyRequired, ClientError

ROWS = [{"prompt": "What is 1 plus 1?", "completion": "2"}]
REFUSAL = ("training jobs need an admin key (the server's --admin-key); this key may run inference and give "
           "feedback only")


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.delenv("ALIGNLOOP_API_KEY", raising=False)
    monkeypatch.delenv("ALIGNLOOP_ADMIN_KEY", raising=False)
    s = serve_app(tmp_path, None)
    yield s
    s.reg.dispose()


def client_of(served, **keys) -> alignloop.Client:
    """A Client whose requests go to the app in process (same headers as its own HTTP client)."""
    c = alignloop.Client(LOCAL, **keys)
    c.http = TestClient(served.app, base_url=LOCAL, headers=dict(c.http.headers))
    return c


def test_train_with_an_inference_key_says_an_admin_key_is_needed(served):
    with pytest.raises(AdminKeyRequired) as e:
        client_of(served, api_key=KEY).train(ROWS, initial_model_id="tiny", wait=False)
    assert isinstance(e.value, ClientError) and e.value.status == 403
    assert str(e.value) == (f"HTTP 403: {REFUSAL}. This client has no admin key: pass alignloop.Client(..., "
                            "admin_key=...) or set $ALIGNLOOP_ADMIN_KEY")
    with pytest.raises(AdminKeyRequired) as e:  # an inference key given as the admin key
        client_of(served, api_key=KEY, admin_key=KEY).jobs()
    assert str(e.value) == (f"HTTP 403: {REFUSAL}. The key given as admin_key is not one of the server's admin "
                            "keys (it took it for an inference key, or it has none)")
    with pytest.raises(AdminKeyRequired, match="a model's lineage needs an admin key"):
        client_of(served, api_key=KEY).lineage(REGISTERED)
    with served.reg.read() as s:  # nothing was queued
        from alignloop.registry.store import JobRow

        assert [j.id for j in s.query(JobRow)] == [served.job_id]


def test_jobs_and_lineage_go_with_the_admin_key_the_rest_with_the_inference_key(served, monkeypatch):
    c = client_of(served, api_key=KEY, admin_key=ADMIN_KEY)
    job = c.train(ROWS, initial_model_id="tiny", model_name="qa-v2", max_steps=1, wait=False)
    assert (job.status()["status"], job.status()["model_name"]) == ("queued", "qa-v2")
    assert [j["id"] for j in c.jobs()] == [job.id, served.job_id]
    assert c.lineage(REGISTERED)["model_id"] == REGISTERED
    assert c.feedback(ANSWER, thumbs="up")["created"] is True
    # the vote is the inference key's: the admin key went with the jobs only
    import hashlib

    from alignloop.feedback import store as studio

    with studio.open_db(served.reg.url).read() as s:
        [voter] = [s.get(studio.Labeler, j.labeler_id).name for j in s.query(studio.Judgment)]
    assert voter == "user:key-" + hashlib.sha256(KEY.encode()).hexdigest()[:10]
    # an admin key alone (argument or environment) is sent with everything
    monkeypatch.setenv("ALIGNLOOP_ADMIN_KEY", ADMIN_KEY)
    only_admin = client_of(served)
    assert only_admin.train(ROWS, initial_model_id="tiny", wait=False).status()["status"] == "queued"
    assert only_admin.models() == []  # (no model loaded in this app)
