"""The model server against its own users (issue 19), in process and without a model: inference keys never touch
jobs, jobs are off by default and need an admin key, trusted hosts, the API's docs, response headers, the
database URL printed at start, feedback identity from the key, and the limits (request size counted while it
arrives, a request's token budget, the batch queue, per-key concurrency, registry models)."""

import asyncio
import hashlib
import json

import pytest
from fastapi.testclient import TestClient

from alignloop.core.config import ConfigError
from alignloop.core.db import display_url
from alignloop.registry.store import JobRow, Registry, ServedAnswer, utcnow
from alignloop.serve.app import create_app
from alignloop.serve.config import ServeConfig
from alignloop.serve.guard import Guard, KeyRing
from alignloop.serve.jobs import JobManager

KEY, ADMIN_KEY = "inference-key", "admin-key"
AUTH, ADMIN = {"Authorization": f"Bearer {KEY}"}, {"Authorization": f"Bearer {ADMIN_KEY}"}
LOCAL = "http://127.0.0.1"


@pytest.fixture
def served(tmp_path):
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    cfg = ServeConfig(model="tiny", api_key=[KEY], admin_key=[ADMIN_KEY], db=db, jobs=True,
                      max_request_bytes=4000).validate()
    reg = Registry(db)
    jobs = JobManager(reg, tmp_path / "jobs")
    with reg.write() as s:
        s.add(ServedAnswer(id="chatcmpl-1", model_id="tiny", prompt="2+2?", answers=["5"], user="u",
                           created_at=utcnow()))
    yield TestClient(create_app(cfg, None, reg, jobs, start_background=False), base_url=LOCAL), reg
    reg.dispose()


# ---- keys and roles -------------------------------------------------------------------------------------


def test_inference_keys_cannot_touch_jobs(served):
    client, reg = served
    job = client.post("/v1/jobs", headers=ADMIN, json={"stage": "sft", "config": {"model": "tiny"},
                                                       "data": [{"prompt": "q", "completion": "a"}]}).json()
    refused = {"message": "training jobs need an admin key (the server's --admin-key); this key may run "
                          "inference and give feedback only", "type": "invalid_request_error", "param": None,
               "code": "admin_key_required"}
    for method, path in (("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", f"/v1/jobs/{job['id']}"),
                         ("get", f"/v1/jobs/{job['id']}/logs"), ("post", f"/v1/jobs/{job['id']}/cancel")):
        r = getattr(client, method)(path, headers=AUTH, **({"json": {"stage": "sft"}} if method == "post" else {}))
        assert (r.status_code, r.json()) == (403, {"error": refused}), path
    with reg.read() as s:
        assert [(j.id, j.status) for j in s.query(JobRow)] == [(job["id"], "queued")]  # not cancelled
    assert [j["id"] for j in client.get("/v1/jobs", headers=ADMIN).json()["data"]] == [job["id"]]
    # an admin key does everything an inference key does
    assert client.get("/v1/models", headers=ADMIN).status_code == 200
    assert client.get("/v1/models", headers=AUTH).status_code == 200


def test_a_keyless_server_runs_no_jobs(tmp_path):
    reg = Registry(f"sqlite:///{tmp_path / 'x.db'}")
    cfg = ServeConfig(model="tiny", db=reg.url).validate()
    client = TestClient(create_app(cfg, None, reg, JobManager(reg, tmp_path / "jobs"), start_background=False),
                        base_url=LOCAL)
    assert client.get("/v1/models").status_code == 200  # open for inference
    r = client.post("/v1/jobs", json={"stage": "sft"})
    assert (r.status_code, r.json()["error"]["code"]) == (403, "admin_key_required")
    reg.dispose()


def test_jobs_are_off_by_default_and_need_an_admin_key(monkeypatch):
    monkeypatch.delenv("ALIGNLOOP_ADMIN_KEYS", raising=False)
    assert ServeConfig().jobs is False and ServeConfig().allow_registry_models is False
    with pytest.raises(ConfigError) as e:
        ServeConfig(jobs=True, api_key=["k"]).validate()
    assert e.value.problems == ["jobs: training jobs need an admin key (--admin-key or $ALIGNLOOP_ADMIN_KEYS); "
                                "without one, leave jobs off (no --jobs)"]
    monkeypatch.setenv("ALIGNLOOP_ADMIN_KEYS", "a1, a2")
    cfg = ServeConfig(jobs=True).validate()
    assert (cfg.admin_keys(), cfg.keys()) == (["a1", "a2"], [])
    with pytest.raises(ConfigError, match="a key cannot be both an inference key and an admin key"):
        ServeConfig(api_key=["a1"]).validate()


def test_keys_are_compared_by_digest_with_their_role():
    ring = KeyRing(["i1"], ["a1"])
    assert [ring.role(k) for k in ("i1", "a1", "a1 ", "", "I1")] == ["inference", "admin", None, None, None]
    assert "i1" not in repr(ring.roles) and not KeyRing([], [])


def test_an_inference_key_reads_only_the_models_it_may_use(tmp_path):
    """The registry record (folder, run, the run's config and data) and the lineage are an admin's; an inference
    key sees the models it may use, as OpenAI model objects."""
    from alignloop.registry.store import ModelRow, RunRow

    db = f"sqlite:///{tmp_path / 'serve.db'}"
    reg = Registry(db)
    with reg.write() as s:
        s.add(RunRow(id="run-1", stage="sft", status="completed", config={"db": "postgresql://u:s3cret@db/x"},
                     data_hashes={"data": {"path": "/srv/private/labels.jsonl", "sha256": "ab"}}))
        s.add(ModelRow(id="m-0123abcd", name="qa-v1", path="/srv/models/qa-v1", stage="sft", run_id="run-1",
                       created_at=utcnow()))

    def client(**options):
        cfg = ServeConfig(model="tiny", api_key=[KEY], admin_key=[ADMIN_KEY], db=db, **options).validate()
        return TestClient(create_app(cfg, None, reg, None, start_background=False), base_url=LOCAL)

    closed, opened = client(), client(allow_registry_models=True)
    # without --allow-registry-models an inference key may not use it, so it does not see it
    r = closed.get("/v1/models/m-0123abcd", headers=AUTH)
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")
    # with it, the model object and nothing of the record
    r = opened.get("/v1/models/qa-v1", headers=AUTH)
    assert r.status_code == 200 and set(r.json()) == {"id", "object", "created", "owned_by", "name", "loaded",
                                                       "stage", "parent_id"}
    assert "s3cret" not in r.text and "/srv/" not in r.text
    assert opened.get("/v1/models", headers=AUTH).json()["data"] == [r.json()]
    # an admin key reads the record, either way
    for c in (closed, opened):
        r = c.get("/v1/models/m-0123abcd", headers=ADMIN)
        assert (r.status_code, r.json()["registry"]["path"], r.json()["registry"]["run"]["id"]) == (
            200, "/srv/models/qa-v1", "run-1")
    # the lineage: admin key only
    for c in (closed, opened):
        r = c.get("/v1/models/m-0123abcd/lineage", headers=AUTH)
        assert (r.status_code, r.json()["error"]) == (403, {
            "message": "a model's lineage needs an admin key (the server's --admin-key); this key may run inference "
                       "and give feedback only", "type": "invalid_request_error", "param": None,
            "code": "admin_key_required"})
        r = c.get("/v1/models/m-0123abcd/lineage", headers=ADMIN)
        assert (r.status_code, r.json()["chain"][0]["data"][0]["path"]) == (200, "/srv/private/labels.jsonl")
    reg.dispose()


def test_a_served_models_object_holds_no_registry_record_for_an_inference_key(tiny_pool, tmp_path):
    from serve_fixtures import ADMIN_KEY as SERVED_ADMIN
    from serve_fixtures import KEY as SERVED_KEY
    from serve_fixtures import serve_app

    s = serve_app(tmp_path, tiny_pool)
    client = TestClient(s.app, base_url=LOCAL)
    mine = client.get("/v1/models/tiny", headers={"Authorization": f"Bearer {SERVED_KEY}"}).json()
    admin = client.get("/v1/models/tiny", headers={"Authorization": f"Bearer {SERVED_ADMIN}"}).json()
    s.reg.dispose()
    assert (set(mine), mine["loaded"]) == ({"id", "object", "created", "owned_by", "name", "loaded"}, True)
    assert admin == {**mine, "registry": None}  # "tiny" is an alias, not a registered model


# ---- hosts, docs, headers, start line --------------------------------------------------------------------


def test_only_trusted_hosts_are_answered(tmp_path):
    """A keyless server on localhost must not answer a page whose domain now resolves to 127.0.0.1."""
    cfg = ServeConfig(model="tiny", db=f"sqlite:///{tmp_path / 'x.db'}", trusted_host=["llm.example.org"]).validate()
    app = create_app(cfg, None, None, None, start_background=False)
    for host, status in (("http://localhost:8000", 200), ("http://127.0.0.1", 200), ("http://llm.example.org", 200),
                         ("http://attacker.example", 400), ("http://testserver", 400)):
        assert TestClient(app, base_url=host).get("/v1/models").status_code == status, host
    anyone = ServeConfig(model="tiny", db=cfg.db, trusted_host=["*"]).validate()
    assert TestClient(create_app(anyone, None, None, None, start_background=False),
                      base_url="http://attacker.example").get("/health").status_code == 200


def test_ipv6_loopback_and_ipv6_names_are_trusted_as_a_host_header_writes_them(tmp_path):
    """A Host header writes an IPv6 address in brackets ([::1]:8000); a trusted name given as ::1 or in its long
    form used to match nothing, so a client of http://[::1]:8000 got 400."""
    db = f"sqlite:///{tmp_path / 'x.db'}"
    assert ServeConfig().trusted_hosts() == ["localhost", "127.0.0.1", "[::1]"]
    cfg = ServeConfig(model="tiny", db=db, host="::1", trusted_host=["FE80:0:0:0:0:0:0:1", "[2001:db8::7]",
                                                                    "LLM.example.org"]).validate()
    assert cfg.trusted_hosts() == ["localhost", "127.0.0.1", "[::1]", "[fe80::1]", "[2001:db8::7]",
                                   "llm.example.org"]
    assert ServeConfig(host="::").trusted_hosts() == ["localhost", "127.0.0.1", "[::1]"]  # every interface: none
    app = create_app(cfg, None, None, None, start_background=False)
    for url, status in (("http://[::1]:8000", 200), ("http://[::1]", 200), ("http://[fe80::1]:8000", 200),
                        ("http://[2001:db8::7]", 200), ("http://llm.example.org", 200), ("http://[::2]:8000", 400),
                        ("http://[fe80::2]", 400)):
        assert TestClient(app, base_url=url).get("/v1/models").status_code == status, url
    from types import SimpleNamespace

    from alignloop.serve.app import start_line

    srv = SimpleNamespace(pool=SimpleNamespace(default=SimpleNamespace(id="tiny")), jobs=None, db_url=db)
    assert start_line(cfg, srv).startswith("serving tiny on http://[::1]:8000/v1 (jobs off;")  # a URL one can open
    with pytest.raises(ConfigError, match="trusted_host: 'llm.\\*.org' is not a host name"):
        ServeConfig(trusted_host=["llm.*.org"]).validate()  # (it stopped the server with an AssertionError)


def test_docs_are_off_unless_asked_and_then_need_a_key(tmp_path):
    cfg = ServeConfig(model="tiny", api_key=[KEY], db=f"sqlite:///{tmp_path / 'x.db'}").validate()
    client = TestClient(create_app(cfg, None, None, None, start_background=False), base_url=LOCAL)
    assert [client.get(p, headers=AUTH).status_code for p in ("/docs", "/openapi.json", "/redoc")] == [404] * 3
    on = ServeConfig(model="tiny", api_key=[KEY], db=cfg.db, docs=True).validate()
    client = TestClient(create_app(on, None, None, None, start_background=False), base_url=LOCAL)
    assert [client.get(p).status_code for p in ("/docs", "/openapi.json")] == [401, 401]
    assert client.get("/openapi.json", headers=AUTH).json()["info"]["title"] == "alignloop serve"


def test_responses_are_not_cached_and_https_gets_hsts(served):
    client, _ = served
    for r in (client.get("/v1/models", headers=AUTH), client.get("/v1/models"), client.get("/health")):
        assert (r.headers["cache-control"], r.headers["x-content-type-options"]) == ("no-store", "nosniff")
        assert "strict-transport-security" not in r.headers
    https = TestClient(client.app, base_url="https://127.0.0.1")
    assert https.get("/v1/models", headers=AUTH).headers["strict-transport-security"] == "max-age=31536000"


def test_database_passwords_are_not_printed():
    assert display_url("postgresql+psycopg://team:s3cret@db.internal:5432/alignloop") == (
        "postgresql+psycopg://team:***@db.internal:5432/alignloop")
    assert display_url("sqlite:////srv/alignloop.db") == "sqlite:////srv/alignloop.db"
    assert display_url("not a url :: s3cret") == "(a database URL SQLAlchemy cannot parse)"

    from types import SimpleNamespace

    from alignloop.serve.app import start_line

    cfg = ServeConfig(host="0.0.0.0", port=9000)
    srv = SimpleNamespace(pool=SimpleNamespace(default=SimpleNamespace(id="m-1")), jobs=None,
                          db_url="postgresql+psycopg://team:s3cret@db/alignloop")
    assert start_line(cfg, srv) == ("serving m-1 on http://0.0.0.0:9000/v1 (jobs off; database "
                                    "postgresql+psycopg://team:***@db/alignloop)")


# ---- feedback identity -----------------------------------------------------------------------------------


def test_one_vote_per_key_per_answer_whatever_user_it_names(served):
    client, reg = served
    r = client.post("/v1/feedback", headers=AUTH, json={"response_id": "chatcmpl-1", "thumbs": "down",
                                                        "user": "ana"})
    assert r.status_code == 201
    r = client.post("/v1/feedback", headers=AUTH, json={"response_id": "chatcmpl-1", "thumbs": "down",
                                                        "user": "invented-user-2"})
    assert (r.status_code, r.json()["error"]["message"]) == (409, "task_id: this labeler already judged this task")
    assert client.post("/v1/feedback", headers=ADMIN, json={"response_id": "chatcmpl-1", "thumbs": "up",
                                                            "user": "ana"}).status_code == 201  # another key

    from alignloop.feedback import store as studio

    with studio.open_db(reg.url).read() as s:
        votes = sorted((s.get(studio.Labeler, j.labeler_id).name, j.choice) for j in s.query(studio.Judgment))
        [prompt] = s.query(studio.Prompt).all()
        names = [(n["labeler"], n["user"]) for n in prompt.extra["user_names"]]
    key_of = {k: "user:key-" + hashlib.sha256(k.encode()).hexdigest()[:10] for k in (KEY, ADMIN_KEY)}
    assert votes == sorted([(key_of[KEY], "bad"), (key_of[ADMIN_KEY], "good")])
    assert names == [(key_of[KEY], "ana"), (key_of[ADMIN_KEY], "ana")]  # the name is metadata


# ---- limits ----------------------------------------------------------------------------------------------


def _asgi_post(app, path: str, chunks: list[bytes], headers: dict[str, str]) -> tuple[int, int]:
    """POST a chunked body (no Content-Length) straight to an ASGI app; (status, chunks the app pulled)."""
    pulled, out = [0], {}

    async def receive():
        if pulled[0] < len(chunks):
            pulled[0] += 1
            return {"type": "http.request", "body": chunks[pulled[0] - 1], "more_body": pulled[0] < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), *((k.encode(), v.encode()) for k, v in headers.items())],
             "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000)}
    asyncio.run(app(scope, receive, send))
    return out["status"], pulled[0]


def test_a_chunked_body_is_stopped_at_the_limit(served):
    """200 chunks of 1,000 bytes against a 4,000-byte limit: the server reads 5 chunks, then answers 413."""
    client, _ = served
    status, pulled = _asgi_post(client.app, "/v1/chat/completions", [b" " * 1000] * 200,
                                {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert (status, pulled) == (413, 5)
    status, pulled = _asgi_post(client.app, "/v1/feedback", [b'{"response_id": ', b'"chatcmpl-1", "thumbs": "up"}'],
                                {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert (status, pulled) == (201, 2)  # under the limit the body reaches the route whole


def test_a_request_may_ask_for_a_bounded_number_of_tokens():
    from alignloop.serve.errors import ApiError
    from alignloop.serve.routes.openai import max_tokens_for
    from alignloop.serve.schemas import CompletionRequest

    cfg = ServeConfig(max_request_tokens=1000, max_tokens_limit=500, max_n=4)
    assert max_tokens_for(cfg, CompletionRequest(prompt="x", n=2), 250, prompts=2) == 250  # 2 x 2 x 250 = 1000
    with pytest.raises(ApiError) as e:
        max_tokens_for(cfg, CompletionRequest(prompt="x", n=2), 251, prompts=2)
    assert (e.value.status, e.value.code, e.value.message) == (
        422, "request_too_large", "this request asks for up to 1004 new tokens (2 prompt(s) x n=2 x max_tokens=251); "
        "this server allows 1000 per request (--max-request-tokens): lower max_tokens or n, or send fewer prompts")


def test_a_full_queue_answers_429(tiny_path):
    from alignloop.models.load import load_tokenizer
    from alignloop.serve.batcher import Batcher, GenRequest, submit
    from alignloop.serve.errors import ApiError

    b = Batcher(None, load_tokenizer("tiny"), max_batch_size=4, wait_ms=0, start=False, max_queue=2)
    submit(b, GenRequest([1], 4))
    submit(b, GenRequest([1], 4))
    with pytest.raises(ApiError) as e:
        submit(b, GenRequest([1], 4))
    assert (e.value.status, e.value.code, e.value.message) == (
        429, "server_busy", "the server is busy: 2 requests are waiting for this model (the server's --max-queue); "
        "retry in a moment")
    assert len(b._collect()) == 2  # taken for a batch: room again
    submit(b, GenRequest([1], 4))


def test_one_key_may_run_a_bounded_number_of_generations(tmp_path):
    """With --max-concurrent-per-key 1, a second request of the same key while the first runs gets 429; another
    key does not."""
    cfg = ServeConfig(model="tiny", api_key=[KEY, "other"], db=f"sqlite:///{tmp_path / 'x.db'}",
                      max_concurrent_per_key=1).validate()
    release, started, statuses = asyncio.Event(), asyncio.Event(), []

    async def slow_app(scope, receive, send):
        started.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    from types import SimpleNamespace

    guard = Guard(slow_app, SimpleNamespace(cfg=cfg, keys=KeyRing(cfg.keys(), [])))

    async def call(key):
        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append((key, message["status"]))

        scope = {"type": "http", "method": "POST", "path": "/v1/predict", "scheme": "http", "query_string": b"",
                 "headers": [(b"authorization", f"Bearer {key}".encode())], "client": ("127.0.0.1", 1)}
        await guard(scope, receive, send)

    async def main():
        first = asyncio.ensure_future(call(KEY))
        await started.wait()
        second, other = asyncio.ensure_future(call(KEY)), asyncio.ensure_future(call("other"))
        await asyncio.sleep(0)  # one turn of the loop: no clock involved
        refused_at_once = second.done()
        release.set()
        await asyncio.gather(first, second, other)
        await call(KEY)  # the first finished: room again
        return refused_at_once

    assert asyncio.run(main()) is True
    assert statuses == [(KEY, 429), (KEY, 200), ("other", 200), (KEY, 200)]
    assert not guard.running


def test_registered_models_are_served_only_when_allowed():
    from types import SimpleNamespace

    from alignloop.serve.pool import ModelPool

    reg = SimpleNamespace(find_model=lambda ref: SimpleNamespace(id="m-1", name=ref) if ref == "qa-v1" else None)
    pool = ModelPool.__new__(ModelPool)  # no model loaded: only the rule is under test
    pool.reg = reg
    pool.cfg = ServeConfig()
    assert pool._registered("qa-v1") is None
    pool.cfg = ServeConfig(allow_registry_models=True)
    assert pool._registered("qa-v1").id == "m-1"


def test_each_key_has_a_token_budget_per_minute():
    from alignloop.serve.errors import ApiError
    from alignloop.serve.guard import TokenBudget
    from alignloop.serve.routes.openai import charge

    now = [1000.0]
    budget = TokenBudget(100, clock=lambda: now[0])
    assert budget.charge("key-a", 40) is None
    now[0] = 1005.0
    assert budget.charge("key-a", 50) is None
    assert budget.charge("key-b", 100) is None  # another key has its own budget
    now[0] = 1010.0
    assert budget.charge("key-a", 20) == 50.0  # room once the 40 of t=1000 are a minute old
    now[0] = 1060.0
    assert budget.charge("key-a", 20) is None  # the 50 of t=1005 and these 20 are the last minute's
    assert budget.charge("key-a", 101) == float("inf")  # never fits
    assert TokenBudget(0).charge("key-a", 10**9) is None  # no budget

    with pytest.raises(ApiError) as e:
        charge(budget, "key-a", 40)
    assert (e.value.status, e.value.code, e.value.message) == (
        429, "token_budget", "this key has asked for its 100 new tokens of the last minute "
        "(--key-tokens-per-minute); retry in 5 s")  # when the 50 of t=1005 leave the window
    with pytest.raises(ApiError, match="asks for up to 101 new tokens, more than a key's 100 per minute"):
        charge(budget, "key-a", 101)


# ---- the same limits through the app, with the model ---------------------------------------------------------


def test_an_inference_key_uploads_nothing_to_the_job_queue(served):
    """403 before the body is read: an inference key cannot make the server take 64 MB (or any byte) of a job."""
    client, _ = served
    status, pulled = _asgi_post(client.app, "/v1/jobs", [b" " * 1000] * 200,
                                {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert (status, pulled) == (403, 0)
    assert list((client.app.state.server.jobs.folder).glob("*")) == []  # and nothing was written


def test_sixteen_prompts_of_1024_tokens_are_refused_before_decoding(tiny_pool, tmp_path, monkeypatch):
    """The review's request: 16 prompts x 1,024 new tokens in one /v1/completions call. It fits the batch and the
    per-request max_tokens, but not the request's total (--max-request-tokens 4096): 422, and nothing reaches the
    model's batcher (which here would answer at once rather than decode for minutes, should it get there)."""
    from serve_fixtures import KEY as SERVED_KEY
    from serve_fixtures import serve_app

    import alignloop.serve.routes.openai as routes
    from alignloop.serve.batcher import Choice

    submitted = []

    def instant(batcher, g):
        submitted.append(g)
        g.future.set_result([Choice([1], "length")] * g.n)
        return g.future

    monkeypatch.setattr(routes, "submit", instant)
    s = serve_app(tmp_path, tiny_pool, max_tokens_limit=1024, max_request_tokens=4096)
    r = TestClient(s.app, base_url=LOCAL).post("/v1/completions", headers={"Authorization": f"Bearer {SERVED_KEY}"},
                                               json={"prompt": ["Tell me a long story."] * 16, "max_tokens": 1024})
    s.reg.dispose()
    assert (r.status_code, r.json()["error"]["code"], r.json()["error"]["message"]) == (
        422, "request_too_large", "this request asks for up to 16384 new tokens (16 prompt(s) x n=1 x "
        "max_tokens=1024); this server allows 4096 per request (--max-request-tokens): lower max_tokens or n, or "
        "send fewer prompts")
    assert submitted == []


def test_a_full_batch_queue_answers_429_through_the_app(tiny_pool, tmp_path, monkeypatch):
    """--max-queue reaches the model's batcher, and a request beyond it is a 429 at once (never a wait)."""
    import alignloop.serve.pool as pool_module
    from alignloop.serve.batcher import GenRequest
    from alignloop.serve.pool import ModelPool

    model, tok = tiny_pool.default.model, tiny_pool.default.tokenizer
    monkeypatch.setattr(pool_module, "load_causal_lm", lambda path, dtype=None: (model, tok))  # no second load
    cfg = ServeConfig(model="tiny", api_key=[KEY], db=f"sqlite:///{tmp_path / 'x.db'}", max_queue=1).validate()
    pool = ModelPool(cfg, None)
    assert pool.default.batcher.max_queue == 1
    pool.close()  # the batcher stops: what is queued now waits
    waiting = GenRequest([1, 2, 3], 2)
    pool.default.batcher.submit(waiting)
    app = create_app(cfg, pool, None, None, start_background=False)
    # the client goes away once it has sent the request: had the request been queued, it would be cancelled
    # (499) rather than wait for a batcher that no longer runs
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    status, _ = _asgi_post(app, "/v1/chat/completions", [body],
                           {"authorization": f"Bearer {KEY}", "content-type": "application/json"})
    assert status == 429
    r = TestClient(app, base_url=LOCAL).post("/v1/chat/completions", headers=AUTH, json=json.loads(body))
    assert (r.status_code, r.json()["error"]["code"]) == (429, "server_busy")
    assert pool.default.batcher.queue.qsize() == 1 and not waiting.future.done()
