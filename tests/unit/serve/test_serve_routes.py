"""The serve app's routes in process, without a model: API keys, size limits, error bodies, feedback on stored
answers (thumbs, correction, choice between two answers, personal data masked) and the job routes (admin key).
Status codes and messages are literal: they are the HTTP contract the SDK and OpenAI clients rely on."""

import hashlib
import json

import pytest
from fastapi.testclient import TestClient

import alignloop.serve.capture as capture
from alignloop.registry.store import Registry, ServedAnswer, utcnow
from alignloop.serve.app import create_app
from alignloop.serve.config import ServeConfig
from alignloop.serve.jobs import JobManager

KEY = "route-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN_KEY = "route-admin-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
KEY_LABELER = "user:key-" + hashlib.sha256(KEY.encode()).hexdigest()[:10]  # who votes: the key, not a name
LOCAL = "http://127.0.0.1"  # a trusted host (TestClient's default, testserver, is not)


@pytest.fixture
def app_parts(tmp_path):
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    cfg = ServeConfig(model="tiny", api_key=[KEY], admin_key=[ADMIN_KEY], db=db, max_request_bytes=2000,
                      max_upload_bytes=50_000, jobs=True).validate()
    reg = Registry(db)
    jobs = JobManager(reg, tmp_path / "jobs")
    app = create_app(cfg, None, reg, jobs, start_background=False)
    with reg.write() as s:
        for rid, prompt, answers in (("chatcmpl-1", [{"role": "user", "content": "2+2? mail bob@example.com"}], ["5"]),
                                     ("chatcmpl-2", [{"role": "user", "content": "2+2? mail bob@example.com"}],
                                      ["4", "four"]),
                                     ("cmpl-3", "Another prompt", ["x"])):
            s.add(ServedAnswer(id=rid, model_id="tiny", prompt=prompt, answers=answers, user="u", created_at=utcnow()))
    yield TestClient(app, base_url=LOCAL), db, tmp_path
    reg.dispose()


def test_keys_sizes_and_error_shapes(app_parts):
    client, _, _ = app_parts
    assert client.get("/health").json() == {"status": "ok", "model": None}
    r = client.get("/v1/models")
    assert r.status_code == 401 and r.json() == {"error": {
        "message": "no API key: send 'Authorization: Bearer YOUR_KEY'", "type": "invalid_request_error",
        "param": None, "code": "missing_api_key"}}
    r = client.get("/v1/models", headers={"Authorization": "Bearer nope"})
    assert (r.status_code, r.json()["error"]["code"]) == (401, "invalid_api_key")
    assert client.get("/v1/models", headers={"x-api-key": KEY}).json() == {"object": "list", "data": []}
    assert client.get("/v1/nothing").status_code == 401 and client.get("/v1/nothing", headers=AUTH).status_code == 404

    r = client.post("/v1/chat/completions", headers=AUTH, content=b"{" + b" " * 3000 + b"}")
    assert r.status_code == 413 and r.json()["error"]["message"] == (
        "request body is 3002 bytes; the limit for /v1/chat/completions is 2000 bytes (--max-request-bytes)")
    r = client.post("/v1/jobs", headers=ADMIN, content=b"{" + b" " * 60_000 + b"}")
    assert r.status_code == 413 and "(--max-upload-bytes)" in r.json()["error"]["message"]

    r = client.post("/v1/chat/completions", headers=AUTH, json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and r.json()["error"] == {"message": "no model loaded", "type": "server_error",
                                                          "param": None, "code": None}
    r = client.post("/v1/chat/completions", headers=AUTH, json={"messages": [], "top_p": 0})
    assert r.status_code == 422 and r.json()["error"] == {
        "message": "top_p: Input should be greater than 0; messages: List should have at least 1 item after "
                   "validation, not 0", "type": "invalid_request_error", "param": "top_p", "code": "invalid_value"}
    r = client.get("/v1/models/m-missing", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["message"] == "no model 'm-missing'"


def test_feedback_on_stored_answers(app_parts):
    client, db, tmp = app_parts

    def post(body):
        return client.post("/v1/feedback", headers=AUTH, json=body)

    r = post({"response_id": "chatcmpl-9", "thumbs": "up"})
    assert r.status_code == 404 and r.json()["error"] == {
        "message": "no served answer 'chatcmpl-9' (answers are kept only with --store-answers)",
        "type": "invalid_request_error", "param": "response_id", "code": "answer_not_found"}
    r = post({"response_id": "chatcmpl-1", "comment": "meh"})
    assert (r.status_code, r.json()["error"]["param"]) == (422, "thumbs")
    r = post({"response_id": "chatcmpl-1", "thumbs": "up", "choice_index": 1})
    assert r.status_code == 422 and r.json()["error"]["message"] == (
        "answer chatcmpl-1 has 1 choice(s); choice_index 1 is out of range")
    assert post({"thumbs": "up"}).json()["error"]["message"] == (
        "give response_id (with thumbs and/or correction) or compare (with choice)")

    r = post({"response_id": "chatcmpl-1", "thumbs": "down", "correction": "4, call 555-123-4567",
              "comment": "wrong, see jo@x.org", "user": "ana"})
    assert r.status_code == 201
    body = r.json()
    assert (body["object"], body["project"], body["created"]) == ("feedback", "served", True)
    r = post({"response_id": "chatcmpl-1", "thumbs": "up", "user": "ana"})
    assert r.status_code == 409  # one verdict per user and answer
    r = post({"response_id": "chatcmpl-2", "choice_index": 1, "correction": "four (4)"})
    assert (r.status_code, r.json()["project"]) == (201, "served-rewrite")

    assert post({"compare": ["chatcmpl-1", "chatcmpl-2#1"]}).json()["error"]["param"] == "choice"
    r = post({"compare": ["chatcmpl-1", "cmpl-3"], "choice": "A"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "the two answers were given to different prompts"
    r = post({"compare": ["chatcmpl-1", "chatcmpl-2#2"], "choice": "A"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "chatcmpl-2#2: no choice 2"
    r = post({"compare": ["chatcmpl-1", "chatcmpl-2#1"], "choice": "B"})
    assert (r.status_code, r.json()["project"]) == (201, "served-pairwise")

    raw = tmp / "raw.jsonl"
    capture.export(db, "served", "raw", str(raw))
    [j] = [json.loads(x) for x in raw.read_text().splitlines()]
    assert (j["labeler"], j["labeler_kind"], j["choice"]) == (KEY_LABELER, "user", "bad")
    assert j["prompt"] == [{"role": "user", "content": "2+2? mail bob@example.com"}]  # stored as served
    sft = tmp / "sft.jsonl"
    capture.export(db, "served", "sft", str(sft))
    [row] = [json.loads(x) for x in sft.read_text().splitlines()]
    assert row["completion"] == [{"role": "assistant", "content": "4, call [PHONE]"}]
    pairs = tmp / "pairs.jsonl"
    capture.export(db, "served-pairwise", "raw", str(pairs))
    [p] = [json.loads(x) for x in pairs.read_text().splitlines()]
    assert p["choice"] == "B" and p["labeler"] == KEY_LABELER


def test_job_routes(app_parts):
    client, _, _ = app_parts
    r = client.post("/v1/jobs", headers=ADMIN, json={"stage": "juggle"})
    assert r.status_code == 422 and r.json()["error"]["message"] == (
        "invalid job: stage: 'juggle' is not a training stage; one of dpo, grpo, ppo, reward train, rloo, sft")
    r = client.post("/v1/jobs", headers=ADMIN, json={"stage": "eval"})
    assert r.status_code == 422 and r.json()["error"]["message"] == "invalid job: stage: 'eval' is not a training stage"
    r = client.post("/v1/jobs", headers=ADMIN, json={"stage": "sft", "config": {"model": "tiny", "max_steps": 0}})
    assert r.status_code == 422 and "max_steps: must be > 0" in r.json()["error"]["message"]

    r = client.post("/v1/jobs", headers=ADMIN, json={"stage": "reward", "config": {"model": "tiny"},
                                                    "data": [{"prompt": "p", "chosen": "a", "rejected": "b"}]})
    assert r.status_code == 201
    job = r.json()
    assert (job["object"], job["stage"], job["status"]) == ("training_job", "reward train", "queued")
    assert client.get("/v1/jobs", headers=ADMIN).json()["data"] == [job]
    assert client.get(f"/v1/jobs/{job['id']}/logs", headers=ADMIN).json() == {"job_id": job["id"], "text": "",
                                                                             "next_offset": 0}
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=ADMIN)
    assert (r.json()["status"], r.json()["error"]) == ("cancelled", "cancelled before it started")
    for path in ("/v1/jobs/999", "/v1/jobs/999/logs"):
        r = client.get(path, headers=ADMIN)
        assert r.status_code == 404 and r.json()["error"] == {"message": "no job 999", "type": "invalid_request_error",
                                                              "param": "job_id", "code": "job_not_found"}
    assert client.post("/v1/jobs/999/cancel", headers=ADMIN).status_code == 404
    assert client.get("/v1/jobs/abc", headers=ADMIN).status_code == 422


def test_without_jobs_or_registry(tmp_path):
    cfg = ServeConfig(model="tiny", db=f"sqlite:///{tmp_path / 'x.db'}", admin_key=["a"]).validate()
    client = TestClient(create_app(cfg, None, None, None, start_background=False), base_url=LOCAL)
    r = client.get("/v1/jobs", headers={"Authorization": "Bearer a"})
    assert r.status_code == 503 and r.json()["error"]["message"] == (
        "this server does not run jobs (start it with --jobs and an admin key)")
    # the path is checked before the missing job queue
    assert client.get("/v1/jobs/abc", headers={"Authorization": "Bearer a"}).status_code == 422
    r = client.post("/v1/feedback", json={"response_id": "x", "thumbs": "up"}, headers={"Authorization": "Bearer a"})
    assert r.status_code == 503 and r.json()["error"]["message"] == "feedback needs the database"
    r = client.get("/v1/models/m-1/lineage", headers={"Authorization": "Bearer a"})
    assert r.json()["error"]["message"] == "no registry"
