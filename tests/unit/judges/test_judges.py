"""Judges: the position-debiasing protocol (stub and tiny model), the reference and reward-model judges, and the
HTTP judge against a real OpenAI-compatible server on loopback (timeout, 429 with retry, cache hit)."""

from __future__ import annotations

import json
import math
import socket
import threading
import time

import pytest
from fastapi import Request  # module level: the app below is built under postponed annotations

from alignloop.judges.base import PairwiseLetterJudge, combine_orders
from alignloop.judges.reference import ReferenceJudge
from alignloop.judges.reward import RewardModelJudge

# ---- the two-order protocol -------------------------------------------------------------------------------

class ContentJudge(PairwiseLetterJudge):
    """Prefers whichever response contains 'good', wherever it is shown: an unbiased judge."""

    def letter_probs(self, request):
        a = request.split("[Response A]")[1].split("[Response B]")[0]
        return (0.8, 0.2) if "good" in a else (0.2, 0.8)


class FirstPositionJudge(PairwiseLetterJudge):
    """Always says A: pure position bias."""

    def letter_probs(self, request):
        return (0.7, 0.3)


def test_unbiased_judge_flips_raw_verdict_and_debiased_verdict_is_order_free():
    j = ContentJudge()
    v = j.judge("q", ["a good answer", "a bad answer"])
    assert (v.detail["raw_ab"], v.detail["raw_ba"]) == ("A", "B")   # the raw verdict flips with the order
    assert (v.winner, v.label) == (0, "A") and v.prob == pytest.approx(0.8)
    w = j.judge("q", ["a bad answer", "a good answer"])
    assert (w.winner, w.label) == (1, "B") and w.prob == pytest.approx(0.2)


def test_position_biased_judge_is_reported_inconsistent():
    v = FirstPositionJudge().judge("q", ["x", "y"])
    assert (v.detail["raw_ab"], v.detail["raw_ba"]) == ("A", "A")   # did not flip: it judged the position
    assert (v.winner, v.label) == (None, "inconsistent") and v.prob == pytest.approx(0.5)


def test_combine_orders_hand_computed():
    v = combine_orders((0.6, 0.2), (0.1, 0.3))  # P(x first)=0.75, P(x second)=0.75
    assert v.prob == pytest.approx(0.75) and v.label == "A"


def test_local_judge_debiasing_on_tiny(tiny_path):
    from alignloop.judges.local import LocalJudge, letter_ids
    from alignloop.models.load import load_causal_lm

    model, tok = load_causal_lm(str(tiny_path))
    j = LocalJudge((model, tok))
    assert letter_ids(tok) == (tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B"))
    # identical completions: the content is the same in both orders, so the raw verdict must NOT flip and the
    # debiased probability is exactly one half
    same = j.judge("What is 2+2?", ["4", "4"])
    assert same.detail["raw_ab"] == same.detail["raw_ba"]
    assert same.prob == pytest.approx(0.5, abs=1e-6) and same.winner is None
    # distinct completions: the verdict of (y, x) mirrors that of (x, y) exactly, whatever the random model prefers
    for x, y in [("4", "five"), ("The answer is 4.", "I cannot help with that.")]:
        v, w = j.judge("What is 2+2?", [x, y]), j.judge("What is 2+2?", [y, x])
        assert v.prob == pytest.approx(1 - w.prob, abs=1e-6)
        assert v.detail["raw_ab"] == w.detail["raw_ba"] and v.detail["raw_ba"] == w.detail["raw_ab"]
        mirror = {"A": "B", "B": "A", "tie": "tie", "inconsistent": "inconsistent"}
        assert w.label == mirror[v.label]
        # decisive exactly when the raw verdict flipped with the order
        assert v.decisive == (v.detail["raw_ab"] != v.detail["raw_ba"])


# ---- reference and reward-model judges ----------------------------------------------------------------------

def test_reference_judge_prefers_correct_then_refusal():
    j = ReferenceJudge()
    assert j.judge("q", ["It was $1,577 million.", "It was 2,000."], "$1577.00").winner == 0
    assert j.judge("q", ["It was 2,000.", "Not found in the context."], "$1577.00").winner == 1
    v = j.judge("q", ["1,000", "2,000"], "$1577.00")
    assert (v.winner, v.label, v.detail["grades"]) == (None, "tie", ["hallucination", "hallucination"])
    with pytest.raises(ValueError):
        j.judge("q", ["a", "b"])


class LengthScorer:
    def score(self, prompts, completions):
        return [float(len(c)) for c in completions]


def test_reward_model_judge_sigmoid_of_difference():
    j = RewardModelJudge(LengthScorer(), margin=0.5)
    v = j.judge("q", ["abc", "a"])
    assert (v.winner, v.label) == (0, "A") and v.prob == pytest.approx(1 / (1 + math.exp(-2)))
    assert j.judge("q", ["ab", "cd"]).label == "tie"


# ---- HTTP judge against a real server ----------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def judge_server():
    """A small FastAPI app speaking the OpenAI chat-completions protocol on loopback. Model names steer it:
    'good' prefers the response containing 'good'; 'busy' answers 429 to every first request of a body;
    'slow' stalls the first request of a body past the client's timeout."""
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI()
    seen: dict[str, int] = {}
    calls = {"n": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        import asyncio

        body = await request.json()
        calls["n"] += 1
        text = body["messages"][-1]["content"]
        key = body["model"] + text
        seen[key] = seen.get(key, 0) + 1
        if body["model"] == "busy" and seen[key] == 1:
            return JSONResponse({"error": "rate limited"}, status_code=429, headers={"Retry-After": "0"})
        if body["model"] == "slow" and seen[key] == 1:
            await asyncio.sleep(1.0)
        a = text.split("[Response A]")[1].split("[Response B]")[0]
        pa = 0.9 if "good" in a else 0.1
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "length",
                             "message": {"role": "assistant", "content": "A" if pa > 0.5 else "B"},
                             "logprobs": {"content": [{
                                 "token": "A" if pa > 0.5 else "B", "logprob": math.log(max(pa, 1 - pa)),
                                 "top_logprobs": [{"token": "A", "logprob": math.log(pa)},
                                                  {"token": "B", "logprob": math.log(1 - pa)}]}]}}]}

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}/v1", calls
    server.should_exit = True
    thread.join(timeout=5)


def test_http_judge_reads_logprobs_and_caches(judge_server, tmp_path, monkeypatch):
    from alignloop.judges.http import HTTPJudge

    url, calls = judge_server
    monkeypatch.setenv("JUDGE_KEY", "secret")
    j = HTTPJudge(url, "good", api_key_env="JUDGE_KEY", cache_dir=tmp_path / "cache", backoff=0.0, concurrency=2)
    v = j.judge("q", ["a bad answer", "a good answer"])
    assert (v.winner, v.label) == (1, "B") and v.prob == pytest.approx(0.1)
    before = calls["n"]
    j2 = HTTPJudge(url, "good", api_key_env="JUDGE_KEY", cache_dir=tmp_path / "cache", backoff=0.0)
    again = j2.judge("q", ["a bad answer", "a good answer"])
    assert calls["n"] == before                       # a re-run costs nothing: both orders came from the cache
    assert j2.stats == {"requests": 0, "cache_hits": 2, "retries": 0}
    assert again.to_json() == v.to_json()


def test_http_judge_retries_429(judge_server, tmp_path):
    from alignloop.judges.http import HTTPJudge

    url, _ = judge_server
    j = HTTPJudge(url, "busy", backoff=0.0, concurrency=1)
    v = j.judge("q", ["a good answer", "meh"])
    assert v.label == "A" and j.stats["retries"] == 2 and j.stats["requests"] == 4   # one 429 per order


def test_http_judge_timeout_then_retry_and_final_failure(judge_server, tmp_path):
    from alignloop.judges.http import HTTPJudge, JudgeHTTPError

    url, _ = judge_server
    j = HTTPJudge(url, "slow", timeout=0.2, backoff=0.0, concurrency=1)
    assert j.judge("q2", ["good", "bad"]).label == "A"
    assert j.stats["retries"] == 2                    # each order's first request timed out, the retry answered
    dead = HTTPJudge(f"http://127.0.0.1:{_free_port()}/v1", "m", timeout=0.2, retries=1, backoff=0.0)
    with pytest.raises(JudgeHTTPError, match="after 2 attempts"):
        dead.judge("q", ["a", "b"])


# ---- the one factory ----------------------------------------------------------------------------------------

def test_factory_passes_key_variable_cache_and_principles_to_the_http_judge(tmp_path, monkeypatch):
    from alignloop.judges.factory import build_judge

    monkeypatch.setenv("MY_JUDGE_KEY", "secret")
    rules = tmp_path / "rules.txt"
    rules.write_text("Prefer the shorter answer.")
    j = build_judge("http", "m", "http://127.0.0.1:9/v1", api_key_env="MY_JUDGE_KEY", principles=str(rules),
                    cache_dir=tmp_path / "c", timeout=5.0, retries=1, concurrency=2)
    assert (j.api_key, j.principles, j.cache_dir) == ("secret", "Prefer the shorter answer.", tmp_path / "c")
    assert (j.timeout, j.retries, j.concurrency, j.identity) == (5.0, 1, 2, "m@http://127.0.0.1:9/v1")
    assert isinstance(build_judge("reference"), ReferenceJudge)
    with pytest.raises(ValueError, match="unknown judge 'oracle'"):
        build_judge("oracle")


def test_eval_loop_and_judge_command_build_the_same_http_judge(tmp_path, monkeypatch):
    """``alignloop eval``'s win-rate judge comes from the one factory: its HTTP judge reads OPENAI_API_KEY, keeps
    the HHH principles and caches in the alignloop home, as ``alignloop judge`` and the loop do (eval's own factory
    built it without a cache)."""
    from alignloop.core.paths import alignloop_home
    from alignloop.judges.base import HHH_PRINCIPLES
    from alignloop.judges.commands import judge_for
    from alignloop.judges.config import JudgeConfig
    from alignloop.pipelines.config import LoopConfig
    from alignloop.pipelines.evaluation import make_judge
    from alignloop.pipelines.loop_online import make_judge as loop_judge

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    url = "http://127.0.0.1:9/v1"
    judges = [make_judge("http", "m", url),
              judge_for(JudgeConfig(judge="http", model="m", base_url=url)),
              loop_judge(LoopConfig(judge="http", judge_model="m", judge_base_url=url))]
    for j in judges:
        assert (j.api_key, j.principles, j.cache_dir, j.url) == \
            ("k", HHH_PRINCIPLES, alignloop_home() / "cache" / "judge", url + "/chat/completions")


def test_judge_writes_ai_judgments_into_the_feedback_store(tmp_path):
    """Runs once the feedback studio (issue 6) is in the build."""
    store = pytest.importorskip("alignloop.feedback.store")
    from alignloop.feedback import io as fio
    from alignloop.judges.commands import judge_project

    rows = [{"id": "q1", "prompt": "Revenue?", "completions": ["It was 2,000.", "1,577"], "answer": "$1577.00"},
            {"id": "q2", "prompt": "Revenue?", "completions": ["1,577", "Not found"], "answer": "$1577.00"},
            {"id": "q3", "prompt": "Revenue?", "completions": ["5", "6"], "answer": "$1577.00"}]
    data = tmp_path / "gen.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    url = store.sqlite_url(str(tmp_path / "labels.db"))
    db = store.open_db(url)
    fio.import_file(db, "fin", data)
    assert judge_project(ReferenceJudge(), url, "fin") == {"judged": 3, "already": 0}
    assert judge_project(ReferenceJudge(), url, "fin") == {"judged": 0, "already": 3}   # never twice
    with db.read() as s:
        js = store.judgments_for(s, store.get_project(s, "fin"))
        assert [j.choice for j in js] == ["B", "A", "tie"]
        lab = s.get(store.Labeler, js[0].labeler_id)
        assert (lab.name, lab.kind) == ("reference", "ai") and "qa" in lab.identity
    # a human labels two of the same items; label stats compares the judge with them
    from alignloop.feedback import stats as fstats

    with db.write() as s:
        tasks = sorted({j.task_id for j in store.judgments_for(s, store.get_project(s, "fin"))})
        store.add_judgment(s, tasks[0], "ann", "B", kind="human")
        store.add_judgment(s, tasks[1], "ann", "B", kind="human")
    with db.read() as s:
        jvh = fstats.project_stats(s, store.get_project(s, "fin"))["judge_vs_human"]
    assert (jvh["items"], jvh["percent_agreement"]) == (2, 0.5)


def test_commands_build_judge_still_takes_a_judge_config_as_before_0_2(monkeypatch):
    """``alignloop.judges.commands.build_judge(cfg)`` was the 0.1 spelling; it now also takes the factory's
    ``(kind, model, base_url)``. Both give the judge the factory builds."""
    from alignloop.judges.commands import build_judge as commands_build_judge
    from alignloop.judges.config import JudgeConfig

    monkeypatch.setenv("OPENAI_API_KEY", "k")
    url = "http://127.0.0.1:9/v1"
    old = commands_build_judge(JudgeConfig(judge="http", model="m", base_url=url))
    new = commands_build_judge("http", "m", url)
    assert (old.api_key, old.url, old.cache_dir) == (new.api_key, new.url, new.cache_dir) == \
        ("k", url + "/chat/completions", new.cache_dir)


def test_a_declining_candidate_is_judged_so_labels_teach_declining_over_inventing(tmp_path, monkeypatch):
    """``sample_and_judge(..., decline=TEXT)``: the declining answer joins the sampled ones and the gold, and the
    reference judge's order (correct > declining > inventing) reaches the preferences even when no sample
    declines (issue 18: the demo's sampled candidates never declined, so no label taught it)."""
    from alignloop.data.readers import qa_prompt
    from alignloop.data.records import PromptRecord
    from alignloop.judges import labeling
    from alignloop.judges.reference import ReferenceJudge

    monkeypatch.setattr(labeling, "answer", lambda model, prompts, *a, **k: [["$1.11"] for _ in prompts])
    rec = PromptRecord(qa_prompt("What was 3M's FY2018 capital expenditure?", "Net sales were $32,765 million."),
                       meta={"id": "q1", "answer": "$1,577 million"})
    decline = "The context does not give the capital expenditure."
    summary = labeling.sample_and_judge(None, [rec], tmp_path, ReferenceJudge(), num_candidates=1, decline=decline)
    rows = [json.loads(x) for x in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert rows[0]["completions"] == ["$1.11", "$1,577 million", decline]
    prefs = [json.loads(x) for x in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in prefs] == [
        ("$1,577 million", "$1.11"), (decline, "$1.11"), ("$1,577 million", decline)]
    assert summary["pairs"] == 3


def test_the_gold_joins_the_candidates_only_where_the_add_gold_test_says(tmp_path, monkeypatch):
    """``add_gold`` as a test of the record (the demo's ``judge_gold: in_context``): where the context lacks the
    answer the gold stays out, so the only label is "declining beats inventing"; where it holds it, the gold joins
    as before."""
    from alignloop.data.readers import qa_prompt
    from alignloop.data.records import PromptRecord
    from alignloop.judges import labeling
    from alignloop.judges.reference import ReferenceJudge

    monkeypatch.setattr(labeling, "answer", lambda model, prompts, *a, **k: [["$1.11"] for _ in prompts])
    q = "What was 3M's FY2018 capital expenditure?"
    lacking = PromptRecord(qa_prompt(q, "Net sales were $32,765 million."),
                           meta={"id": "q1", "answer": "$1,577 million", "context_class": "missing"})
    holding = PromptRecord(qa_prompt(q, "Capital expenditure was $1,577 million."),
                           meta={"id": "q2", "answer": "$1,577 million", "context_class": "in_context"})
    decline = "The context does not give the capital expenditure."
    labeling.sample_and_judge(None, [lacking, holding], tmp_path, ReferenceJudge(), num_candidates=1,
                              decline=decline, add_gold=lambda rec: rec.meta["context_class"] == "in_context")
    rows = [json.loads(x) for x in (tmp_path / "candidates.jsonl").read_text().splitlines()]
    assert [r["completions"] for r in rows] == [["$1.11", decline], ["$1.11", "$1,577 million", decline]]
    prefs = [json.loads(x) for x in (tmp_path / "preferences.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in prefs] == [
        (decline, "$1.11"), ("$1,577 million", "$1.11"), (decline, "$1.11"), ("$1,577 million", decline)]
