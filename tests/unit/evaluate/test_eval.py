"""alignloop eval / judge on tiny: per-item CSVs, side-by-side comparison, judge command output (the demo:
tests/unit/pipelines/test_demo.py)."""

from __future__ import annotations

import csv
import json

import pytest

from alignloop.data.records import Prompt, PromptRecord
from alignloop.evaluate.config import EvalConfig
from alignloop.evaluate.metrics import win_rate
from alignloop.evaluate.qa_run import heldout_ids, qa_items, score_qa
from alignloop.judges.base import Verdict


def _rec(i, answer):
    return PromptRecord(Prompt([{"role": "user", "content": f"Context: revenue 1,577\nQuestion {i}"}]),
                        meta={"id": str(i), "answer": answer, "question": f"q{i}"})


def test_score_qa_rows_and_summary():
    recs = [_rec(0, "$1577.00"), _rec(1, "$1577.00"), _rec(2, "$1577.00")]
    rows, s = score_qa(recs, ["It was 1,577.", "Not found.", "It was 9,999."])
    assert [r["grade"] for r in rows] == ["correct", "refusal", "incorrect"]
    assert [r["fine_grade"] for r in rows] == ["correct", "refusal", "hallucination"]   # 9,999 is not in the context
    assert [r["points"] for r in rows] == [1.0, 0.5, -1.0]
    assert (s["n"], s["correct"], s["refusal"], s["incorrect"], s["llmware_points"]) == (3, 1, 1, 1, 0.5)


def test_eval_command_module_keeps_its_library_names():
    """The ``eval`` command (``alignloop.pipelines.evaluation``, formerly ``alignloop.evaluate.commands``) still
    exports the names other code imported from it (they moved to the evaluate library modules and core.files)."""
    from alignloop.core import files
    from alignloop.evaluate import metrics, qa_run, tables
    from alignloop.pipelines import evaluation as commands

    for name in ("heldout_ids", "qa_items", "answer", "score_qa", "context_of", "question_of"):
        assert getattr(commands, name) is getattr(qa_run, name)
    assert commands.write_csv is tables.write_csv and commands.write_json is files.write_json
    assert commands.refusal_rates is metrics.refusal_rates and commands.win_rate is metrics.win_rate


def test_bootstrap_ci_is_numpys_percentile_bootstrap_with_2000_resamples():
    """The one bootstrap interval (the eval/demo one; the DPO eval's pure-Python copy gave (0.4, 0.7333) here):
    2,000 resamples from numpy's default_rng(seed), linear-interpolated 2.5%/97.5% quantiles, a tuple."""
    from alignloop.evaluate.metrics import bootstrap_ci

    hits = [1.0 if (i * 5) % 7 < 4 else 0.0 for i in range(30)]  # 17 of 30, like the demo's held-out questions
    assert bootstrap_ci(hits) == pytest.approx((0.36666666666666664, 0.7333333333333333), abs=1e-12)
    spread = [(i * 7) % 10 / 10 for i in range(23)]
    assert bootstrap_ci(spread) == pytest.approx((0.32173913043478264, 0.5522826086956516), abs=1e-12)
    assert bootstrap_ci(spread, seed=0, n_resamples=1000) == pytest.approx((0.32173913043478264, 0.5521739130434782),
                                                                           abs=1e-12)
    assert isinstance(bootstrap_ci(hits), tuple) and bootstrap_ci([]) != bootstrap_ci([])  # (nan, nan)
    recs = [_rec(i, "$1577.00") for i in range(30)]
    _, summary = score_qa(recs, ["It was 1,577." if h else "Not found." for h in hits])
    assert summary["correct_rate_ci95"] == pytest.approx([0.36666666666666664, 0.7333333333333333], abs=1e-12)


def test_expected_calibration_error_by_hand():
    from alignloop.evaluate.metrics import expected_calibration_error

    # confidences 0.9, 0.9, 0.6, 0.6, 0.7, 0.8 in bins [0.9,0.95), [0.6,0.65), [0.7,0.75), [0.8,0.85):
    # 2/6 * |1 - 0.9| + 2/6 * |1 - 0.6| + 1/6 * |0 - 0.7| + 1/6 * |0 - 0.8|
    ece = expected_calibration_error([0.9, 0.1, 0.6, 0.4, 0.7, 0.2], [1, 1, 1, 1, 0, 0])
    assert ece == pytest.approx(2 / 6 * 0.1 + 2 / 6 * 0.4 + 0.7 / 6 + 0.8 / 6)
    assert expected_calibration_error([0.9, 0.9], [1, 1]) == pytest.approx(0.1)


def test_win_rate_counts_ties_half():
    vs = [Verdict(0, "A"), Verdict(1, "B"), Verdict(None, "inconsistent"), Verdict(0, "A")]
    assert win_rate(vs) == {"n": 4, "wins": 2, "losses": 1, "ties": 1, "win_rate": 0.625}


def test_financebench_split_is_fixed():
    items = qa_items("data/financebench/questions.jsonl")
    test = heldout_ids([r.meta["id"] for r in items])
    assert len(items) == 100 and len(test) == 30 and heldout_ids([r.meta["id"] for r in items][::-1]) == test
    assert len(qa_items("data/financebench/questions.jsonl", "test")) == 30


def test_judge_command_reference(tmp_path):
    from alignloop.judges.commands import run
    from alignloop.judges.config import JudgeConfig

    rows = [{"id": "q1", "prompt": "What was revenue?", "answer": "$1577.00",
             "completions": ["1,577", "Not found", "2,000"]}]
    data = tmp_path / "cands.jsonl"
    data.write_text(json.dumps(rows[0]) + "\n")
    out = tmp_path / "prefs.jsonl"
    run(JudgeConfig(data=str(data), output=str(out), judge="reference").validate())
    prefs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in prefs] == [("1,577", "Not found"), ("1,577", "2,000"),
                                                              ("Not found", "2,000")]
    judgments = [json.loads(line) for line in (tmp_path / "prefs.judgments.jsonl").read_text().splitlines()]
    assert [j["label"] for j in judgments] == ["A", "A", "A"] and judgments[0]["judge"] == "reference"


def test_judge_config_problems():
    from alignloop.core.config import ConfigError
    from alignloop.judges.config import JudgeConfig

    with pytest.raises(ConfigError) as e:
        JudgeConfig(judge="http", project="p").validate()
    assert "base_url/model" in str(e.value) and "db:" in str(e.value)


def test_eval_command_side_by_side_on_tiny(tiny_path, tmp_path):
    from alignloop.pipelines.evaluation import run

    out = tmp_path / "eval"
    run(EvalConfig(model=str(tiny_path), compare=str(tiny_path), tasks=["qa"], split="test", limit=2,
                   max_new_tokens=3, output=str(out)).validate())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["qa"]["model"]["n"] == 2 and summary["qa"]["model"] == summary["qa"]["compare"]
    with open(out / "qa_items.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {"id", "gold", "model_answer", "model_grade", "compare_grade"} <= set(rows[0])
    # issue 18: what each held-out question's context holds, and the summary's counts per class (3M's dividend
    # trend quotes the context; Activision's fixed asset turnover must be computed)
    assert [(r["id"], r["context_class"]) for r in rows] == [("financebench_id_01858", "in_context"),
                                                             ("financebench_id_02987", "arithmetic")]
    by_class = summary["qa"]["model"]["by_class"]
    assert [by_class[c]["n"] for c in ("in_context", "arithmetic", "missing")] == [1, 1, 0]
    assert summary["qa"]["model"]["habits"]["n"] == 2
    with open(out / "predictions_model.csv") as fh:
        assert next(csv.reader(fh)) == ["id", "answer"]


def test_sequence_logprobs_hand_computed(tiny_path):
    import torch

    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_answer, encode_prompt
    from alignloop.models.load import load_causal_lm
    from alignloop.pipelines.evaluation import sequence_logprobs

    model, tok = load_causal_lm(str(tiny_path))
    p = Prompt([{"role": "user", "content": "hi"}])
    pi, ai = encode_prompt(tok, p), encode_answer(tok, "yo")
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([pi + ai])).logits[0].float(), -1)
    expected = sum(float(logp[len(pi) - 1 + k, t]) for k, t in enumerate(ai))
    assert sequence_logprobs(model, tok, [p], ["yo"])[0] == pytest.approx(expected, abs=1e-4)


def test_sequence_logprobs_is_the_rl_forward_batched_and_cut(tiny_path):
    """eval's KL log-probs and the RL stages' ``sequence_logprobs`` are one computation: several prompts of
    different lengths in one padded batch, the prompt cut from the left to ``max_prompt_length``."""
    import torch

    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_answer, encode_prompt
    from alignloop.models.load import load_causal_lm
    from alignloop.pipelines.evaluation import sequence_logprobs

    model, tok = load_causal_lm(str(tiny_path))
    prompts = [Prompt([{"role": "user", "content": "hi " * 30}]), Prompt([{"role": "user", "content": "yo"}])]
    answers = ["a longer answer than the other", "ok"]
    expected = []
    with torch.no_grad():
        for p, a in zip(prompts, answers):
            pi, ai = encode_prompt(tok, p)[-16:], encode_answer(tok, a)
            logp = torch.log_softmax(model(input_ids=torch.tensor([pi + ai])).logits[0].float(), -1)
            expected.append(sum(float(logp[len(pi) - 1 + k, t]) for k, t in enumerate(ai)))
    assert sequence_logprobs(model, tok, prompts, answers, max_prompt_length=16) == pytest.approx(expected, abs=1e-4)


def test_eval_takes_a_registered_models_name_and_defaults_its_output(tiny_path, tmp_path, monkeypatch):
    """issue 18: `alignloop eval --model rlhf_<n>_labels --compare smollm2-135m-instruct --data FILE` (no --output)
    must evaluate the folder registered under that name, as the trainers and the server resolve --model."""
    from alignloop.pipelines.evaluation import registered_folder, run
    from alignloop.registry.recording import record_run

    db = f"sqlite:///{tmp_path / 'reg.db'}"
    model_id = record_run(EvalConfig(), tiny_path, metrics={}, name="rlhf_7_labels", db=db, card=False)
    assert model_id is not None
    assert registered_folder("rlhf_7_labels", db) == str(tiny_path.resolve())
    assert registered_folder(model_id, db) == str(tiny_path.resolve())
    # aliases and folders pass through without a look-up; an unknown name is left for the loader to refuse
    assert registered_folder("tiny", db) == "tiny" and registered_folder(str(tiny_path), db) == str(tiny_path)
    assert registered_folder("no_such_model", db) == "no_such_model"
    monkeypatch.chdir(tmp_path)
    cfg = EvalConfig(model="rlhf_7_labels", db=db, tasks=["qa"], split="test", limit=1, max_new_tokens=2)
    assert cfg.output == "runs/eval"
    run(cfg.validate())
    summary = json.loads((tmp_path / "runs" / "eval" / "summary.json").read_text())
    assert summary["model"] == "rlhf_7_labels" and summary["model_path"] == str(tiny_path.resolve())
    assert summary["qa"]["model"]["n"] == 1
