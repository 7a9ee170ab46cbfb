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
