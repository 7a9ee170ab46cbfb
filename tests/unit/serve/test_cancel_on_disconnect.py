"""A client that goes away stops its generation: the batcher finishes a cancelled row at the next step (at most
one more forward pass), drops a cancelled request that still waits, and both the plain and the streaming routes
cancel their requests when the client disconnects."""

import asyncio
from types import SimpleNamespace

import pytest

from alignloop.serve.batcher import Batcher, GenRequest
from alignloop.serve.errors import ApiError
from alignloop.serve.schemas import ChatRequest, SamplingRequest


@pytest.fixture(scope="module")
def tiny(tiny_path):
    from alignloop.models.load import load_causal_lm

    model, tok = load_causal_lm("tiny")
    return model.eval(), tok


def _counting(model):
    calls = [0]
    handle = model.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    return calls, handle


def test_a_cancelled_row_stops_within_one_decode_step(tiny):
    model, tok = tiny
    prompt = tok("The quick brown fox jumps over the lazy dog and", add_special_tokens=True)["input_ids"]
    calls, handle = _counting(model)
    try:
        b = Batcher(model, tok, max_batch_size=4, wait_ms=0, start=False)
        alone = GenRequest(prompt, max_new_tokens=24, temperature=0.0)
        b.submit(alone)
        b.run_batch(b._collect())
        [full] = alone.future.result()
        assert (len(full.token_ids), full.finish_reason, calls[0]) == (24, "length", 24)  # runs to the end alone

        calls[0] = 0
        seen, at_cancel = [], []

        def on_token(k, t):
            seen.append(t)
            if len(seen) == 3:  # the client disconnects after the third token
                req.cancel()
                at_cancel.append(calls[0])

        req = GenRequest(prompt, max_new_tokens=24, temperature=0.0, on_token=on_token)
        b.submit(req)
        b.run_batch(b._collect())
        [part] = req.future.result()
    finally:
        handle.remove()
    assert seen == full.token_ids[:3] and (part.token_ids, part.finish_reason) == (full.token_ids[:3], "cancelled")
    assert at_cancel == [3] and calls[0] - at_cancel[0] <= 1  # at most one forward pass after the disconnect


def test_a_cancelled_request_that_waits_is_dropped(tiny):
    model, tok = tiny
    calls, handle = _counting(model)
    try:
        b = Batcher(model, tok, max_batch_size=4, wait_ms=0, start=False)
        gone, kept = GenRequest([1, 2, 3], 4, temperature=0.0), GenRequest([1, 2, 3], 2, temperature=0.0)
        b.submit(gone)
        b.submit(kept)
        gone.cancel()
        b.run_batch(b._collect())
    finally:
        handle.remove()
    assert gone.future.cancelled() and len(kept.future.result()) == 1
    assert (b.stats["batches"], b.stats["rows"], calls[0]) == (1, 1, 2)  # only `kept` was decoded


def _fake_model(submitted):
    return SimpleNamespace(id="tiny", tokenizer=None,
                           batcher=SimpleNamespace(submit=lambda g: submitted.append(g) or g.future))


def test_the_plain_route_cancels_when_the_client_disconnects():
    """The client is gone at once; the (fake) batcher would answer five turns of the event loop later."""
    from alignloop.serve.batcher import Choice
    from alignloop.serve.routes.openai import generate

    submitted = []

    def submit(g):
        loop = asyncio.get_running_loop()

        def step(n):
            if n:
                loop.call_soon(step, n - 1)
            elif not g.future.done():
                g.future.set_result([Choice([5, 6], "length")])

        submitted.append(g)
        loop.call_soon(step, 5)
        return g.future

    async def receive():
        return {"type": "http.disconnect"}

    async def main():
        lm = SimpleNamespace(id="tiny", tokenizer=None, batcher=SimpleNamespace(submit=submit))
        await generate(SimpleNamespace(receive=receive), lm, [[1], [2]], SamplingRequest(), 8)

    with pytest.raises(ApiError) as e:
        asyncio.run(main())
    assert (e.value.status, e.value.code) == (499, "client_disconnected")
    assert [g.cancelled() for g in submitted] == [True, True]


def test_the_stream_cancels_when_the_client_goes_away():
    from alignloop.serve.streaming import EventStream

    submitted = []

    async def main():
        es = EventStream(_fake_model(submitted), ChatRequest(messages=[{"role": "user", "content": "hi"}]),
                         [1, 2], 8, [], "chat")
        events = es.events()
        first = await events.__anext__()  # the role chunk; then the client disconnects
        await events.aclose()
        return first

    assert '"role": "assistant"' in asyncio.run(main())
    assert [g.cancelled() for g in submitted] == [True]


# ---- through the app, with the model: the route, the stream and the batcher together ------------------------


def _disconnecting_call(app, path: str, body: dict, headers: dict[str, str], decoding) -> list[int]:
    """Send ``body`` straight to the ASGI app (as uvicorn does: ASGI spec 2.3), and disconnect once the model is
    decoding (``decoding``, a threading.Event, is set). The statuses of the responses started."""
    import json as _json

    raw = _json.dumps(body).encode()
    started, sent_body = [], [False]

    async def receive():
        if not sent_body[0]:
            sent_body[0] = True
            return {"type": "http.request", "body": raw, "more_body": False}
        await asyncio.to_thread(decoding.wait, 20)
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            started.append(message["status"])

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 8000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         *((k.lower().encode(), v.encode()) for k, v in headers.items())]}
    asyncio.run(app(scope, receive, send))
    return started


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_that_goes_away_costs_at_most_one_more_decode_step(tiny_pool, tmp_path, monkeypatch, stream):
    """The review's finding: a closed stream still decoded to the end. Through the app with the tiny model: the
    client disconnects during the second forward pass, which waits until the request is cancelled (so the test
    needs no clock); no more than one forward pass may follow the cancel."""
    import threading

    from serve_fixtures import KEY, serve_app

    import alignloop.serve.routes.openai as routes
    import alignloop.serve.streaming as streaming
    from alignloop.serve.batcher import submit

    served = serve_app(tmp_path, tiny_pool, max_tokens_limit=16, max_request_tokens=64)
    submitted = []

    def recording_submit(batcher, g):
        submitted.append(g)
        return submit(batcher, g)

    monkeypatch.setattr(streaming, "submit", recording_submit)
    monkeypatch.setattr(routes, "submit", recording_submit)
    calls, at_cancel, decoding = [0], [], threading.Event()

    def hook(*_):
        calls[0] += 1
        if calls[0] == 2:  # the client goes away during the second step, which waits until that cancels the request
            decoding.set()
            at_cancel.append(submitted[0]._cancelled.wait(timeout=20))
            at_cancel.append(calls[0])

    batcher, batch_done = tiny_pool.default.batcher, threading.Event()
    run_batch = batcher.run_batch

    def run_and_tell(batch):
        run_batch(batch)
        batch_done.set()

    monkeypatch.setattr(batcher, "run_batch", run_and_tell)
    handle = tiny_pool.default.model.register_forward_hook(hook)
    try:
        started = _disconnecting_call(served.app, "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "Count to twenty."}], "max_tokens": 16, "temperature": 0,
            "stream": stream}, {"Authorization": f"Bearer {KEY}"}, decoding)
        assert batch_done.wait(timeout=20)  # the batcher is done with the request
    finally:
        handle.remove()
        served.reg.dispose()
    [g] = submitted
    assert at_cancel[0] is True and g.cancelled(), "the request was not cancelled when its client went away"
    assert calls[0] - at_cancel[1] <= 1  # at most one forward pass after the cancel
    assert calls[0] == 2  # of the 16 tokens it asked for, the client saw at most one
    assert started == ([200] if stream else [499])  # the plain answer (499) goes to nobody
