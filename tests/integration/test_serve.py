"""alignloop serve on the tiny model: the official openai client (chat, streaming, completions, bad key),
request limits with clear 4xx errors, batching (several requests, one generate), and served-answer storage."""

import os
import socket
import threading
import time

import httpx
import pytest

openai = pytest.importorskip("openai")

KEY = "test-key-1"


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import uvicorn

    from alignloop.serve.app import build
    from alignloop.serve.config import ServeConfig

    tmp = tmp_path_factory.mktemp("serve")
    old = os.environ.get("ALIGNLOOP_HOME")
    os.environ["ALIGNLOOP_HOME"] = str(tmp / "home")
    cfg = ServeConfig(model="tiny", api_key=[KEY], db=f"sqlite:///{tmp / 'serve.db'}", jobs=False,
                      max_prompt_tokens=64, max_tokens_limit=32, default_max_tokens=8, max_request_bytes=4000,
                      batch_wait_ms=5).validate()
    app, srv = build(cfg)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=uv.run, daemon=True)
    t.start()
    while not uv.started:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1", srv
    uv.should_exit = True
    t.join(timeout=10)
    srv.pool.close()
    if old is None:
        os.environ.pop("ALIGNLOOP_HOME", None)
    else:
        os.environ["ALIGNLOOP_HOME"] = old


def _client(url, key=KEY):
    return openai.OpenAI(base_url=url, api_key=key, max_retries=0)


def _greedy_ids(srv, messages, n_tokens):
    """The reference: the same prompt decoded alone with transformers' greedy generate."""
    import torch

    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_prompt

    lm = srv.pool.default
    ids = encode_prompt(lm.tokenizer, Prompt(messages), True)
    with torch.no_grad():
        out = lm.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                max_new_tokens=n_tokens, do_sample=False, pad_token_id=lm.tokenizer.pad_token_id,
                                eos_token_id=[2])
    return out[0, len(ids):].tolist()


def test_chat_stream_and_completions_with_openai_client(server):
    url, srv = server
    c = _client(url)
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    r = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0)
    expected = _greedy_ids(srv, msgs, 6)
    tok = srv.pool.default.tokenizer
    assert r.choices[0].message.content == tok.decode(expected, skip_special_tokens=True)
    assert r.object == "chat.completion" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    assert r.choices[0].finish_reason == ("stop" if 2 in expected else "length")
    assert r.usage.completion_tokens == len([t for t in expected if t != 2])

    stream = c.chat.completions.create(model="tiny", messages=msgs, max_tokens=6, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == r.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == r.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens and len({ch.id for ch in chunks}) == 1

    comp = c.completions.create(model="tiny", prompt="Hello", max_tokens=4, temperature=0)
    assert comp.object == "text_completion" and comp.usage.completion_tokens <= 4
    assert [m.id for m in c.models.list().data] == ["tiny"]


def test_bad_or_missing_key_is_a_clear_401(server):
    url, _ = server
    with pytest.raises(openai.AuthenticationError) as e:
        _client(url, "wrong").chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 401 and "incorrect API key" in str(e.value)
    r = httpx.get(f"{url}/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_api_key"


def test_limits_give_clear_4xx(server):
    url, _ = server
    c = _client(url)
    with pytest.raises(openai.UnprocessableEntityError, match="at most 32"):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=33)
    with pytest.raises(openai.UnprocessableEntityError,
                       match=r"the prompt is \d+ tokens; this server accepts at most 64"):
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "word " * 80}], max_tokens=2)
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x" * 5000}], max_tokens=2)
    assert e.value.status_code == 413 and "limit for /v1/chat/completions is 4000 bytes" in str(e.value)
    with pytest.raises(openai.NotFoundError, match="model 'gpt-4' is not served here"):
        c.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    r = httpx.post(f"{url}/chat/completions", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "tiny", "messages": [], "temperature": 3})
    assert r.status_code == 422
    msg = r.json()["error"]["message"]
    assert "messages: List should have at least 1 item" in msg
    assert "temperature: Input should be less than or equal to 2" in msg


def test_served_answers_are_stored_masked(server):
    url, srv = server
    from alignloop.registry.store import ServedAnswer

    r = _client(url).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "mail a@b.io"}],
                                             max_tokens=2, temperature=0, user="alice")
    with srv.reg.read() as s:
        row = s.get(ServedAnswer, r.id)
        assert row.prompt == [{"role": "user", "content": "mail [EMAIL]"}] and row.user == "alice"
        assert row.answers == [r.choices[0].message.content] and row.model_id == "tiny"


def test_batcher_runs_concurrent_requests_in_one_generate(server):
    """Requests queued together are decoded in one generate call and get the same tokens as alone (greedy)."""
    _, srv = server
    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_prompt
    from alignloop.serve.app import Batcher, GenRequest

    lm = srv.pool.default
    b = Batcher(lm.model, lm.tokenizer, max_batch_size=8, wait_ms=0, start=False)
    questions = ["Hi", "What is the capital of France?", "Name three colours."]
    msgs = [[{"role": "user", "content": q}] for q in questions]
    reqs = [GenRequest(encode_prompt(lm.tokenizer, Prompt(m), True), max_new_tokens=n, temperature=0.0)
            for m, n in zip(msgs, (3, 5, 4))]
    streamed = {i: [] for i in range(3)}
    for i, r in enumerate(reqs):
        r.on_token = lambda k, t, i=i: streamed[i].append(t)
        b.submit(r)
    batch = b._collect()
    assert len(batch) == 3
    b.run_batch(batch)
    assert (b.stats["batches"], b.stats["generate_calls"], b.stats["largest_batch"]) == (1, 1, 3)
    for i, r in enumerate(reqs):
        [choice] = r.future.result()
        alone = [t for t in _greedy_ids(srv, msgs[i], r.max_new_tokens)]
        cut = alone[:alone.index(2)] if 2 in alone else alone
        assert choice.token_ids == cut and streamed[i] == cut
        assert choice.finish_reason == ("stop" if 2 in alone else "length")


def test_request_token_cap_and_key_budget_on_the_model(tmp_path):
    """prompts x n x max_tokens over --max-request-tokens is a 422; a key past --key-tokens-per-minute gets 429,
    another key does not."""
    from fastapi.testclient import TestClient

    from alignloop.serve.app import build
    from alignloop.serve.config import ServeConfig

    cfg = ServeConfig(model="tiny", api_key=["k1", "k2"], db=f"sqlite:///{tmp_path / 'b.db'}", max_request_tokens=16,
                      key_tokens_per_minute=12, batch_wait_ms=0).validate()
    app, srv = build(cfg)
    client = TestClient(app, base_url="http://127.0.0.1")
    k1, k2 = {"Authorization": "Bearer k1"}, {"Authorization": "Bearer k2"}
    try:
        r = client.post("/v1/completions", headers=k1, json={"prompt": ["a", "b", "c"], "max_tokens": 6})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "request_too_large")
        assert "up to 18 new tokens (3 prompt(s) x n=1 x max_tokens=6)" in r.json()["error"]["message"]
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "temperature": 0}
        assert client.post("/v1/chat/completions", headers=k1, json=body).status_code == 200
        r = client.post("/v1/chat/completions", headers=k1, json=body)  # 8 + 8 > 12 within the minute
        assert (r.status_code, r.json()["error"]["code"]) == (429, "token_budget")
        assert client.post("/v1/chat/completions", headers=k2, json=body).status_code == 200
    finally:
        srv.pool.close()
