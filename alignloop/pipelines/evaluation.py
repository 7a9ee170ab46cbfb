"""``alignloop eval``: question-answering scores, refusal rates, win rate by a judge, best-of-N, reward and KL.

Every evaluation writes per-item results (CSV) next to its ``summary.json``, so a person can read where the model
failed. With ``--compare MODEL`` both models answer the *same* items and the CSV holds them side by side. The
items, answers and grades come from :mod:`alignloop.evaluate.qa_run`, the statistics from
:mod:`alignloop.evaluate.metrics`; this module is the command: :func:`run` and one runner per task.

It lives in ``pipelines`` rather than ``evaluate`` because it orchestrates judges (win rate, best-of-N), and the
judges build on evaluation's graders (the reference judge grades with ``evaluate.qa``): evaluate <- judges <- this
command keeps the imports one way.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from alignloop.core.files import write_json
from alignloop.core.paths import registry_on
from alignloop.data.readers import read_preferences, read_records
from alignloop.evaluate.config import FINANCEBENCH, HH_TEST, EvalConfig  # noqa: F401  (re-exported)
from alignloop.evaluate.metrics import refusal_rates, win_rate
from alignloop.evaluate.qa import is_refusal
from alignloop.evaluate.qa_run import (  # noqa: F401  (re-exported)
    answer,
    context_of,
    heldout_ids,
    qa_items,
    question_of,
    score_qa,
)
from alignloop.evaluate.tables import write_csv
from alignloop.judges.factory import build_judge


def first_answers(cfg: EvalConfig, model: str | tuple, prompts: Sequence[Any], desc: str, seed: int = 0,
                  temperature: float | None = None) -> list[str]:
    """One answer per prompt from ``model`` with the config's lengths, temperature and batch size."""
    temp = cfg.temperature if temperature is None else temperature
    return [a[0] for a in answer(model, prompts, cfg.max_new_tokens, cfg.max_prompt_length, temp, cfg.batch_size,
                                 seed=seed, desc=desc)]


def sequence_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Any], answers: Sequence[str],
                      max_prompt_length: int = 512) -> list[float]:
    """Sum of the answer tokens' log-probabilities under ``model`` (for KL estimates): the RL stages' one forward
    (``generation.rollout.sequence_logprobs``) at temperature 1."""
    from alignloop.generation.rollout import answer_logprobs

    return answer_logprobs(model, tokenizer, prompts, answers, max_prompt_length)




def make_judge(kind: str, model: str | None = None, base_url: str | None = None,
               reward_model: str | None = None) -> Any:
    """The win rate's judge, from the one factory: an HTTP judge reads its key from ``OPENAI_API_KEY`` and caches
    its responses in the alignloop home's ``cache/judge``, as ``alignloop judge`` does by default."""
    return build_judge(kind, reward_model if kind == "reward" else model, base_url)


def evaluate_qa(cfg: EvalConfig, out: Path, models: dict[str, str | tuple]) -> dict[str, Any]:
    """Each model answers the same items; per-item CSV (side by side) and a summary per model."""
    records = qa_items(cfg.data, cfg.split, cfg.limit, cfg.context_chars)
    summaries, per_model = {}, {}
    for label, m in models.items():
        answers = first_answers(cfg, m, [r.prompt for r in records], f"qa {label}", seed=cfg.seed)
        rows, summaries[label] = score_qa(records, answers)
        per_model[label] = rows
        write_csv(out / f"predictions_{label}.csv", [{"id": r["id"], "answer": r["answer"]} for r in rows])
    side = []
    for i, rec in enumerate(records):
        first = per_model[next(iter(models))][i]
        row = {"id": rec.meta["id"], "question": first["question"], "gold": rec.meta["answer"],
               "context_class": first["context_class"]}
        for label in models:
            r = per_model[label][i]
            row.update({f"{label}_answer": r["answer"], f"{label}_grade": r["grade"],
                        f"{label}_fine_grade": r["fine_grade"], f"{label}_points": r["points"]})
        side.append(row)
    write_csv(out / "qa_items.csv", side)
    return summaries


def run_refusal(cfg: EvalConfig, out: Path, models: dict[str, str]) -> dict[str, Any]:
    """Refusal rate on harmful prompts and over-refusal on harmless ones, per model (``refusal_items.csv``)."""
    harmful = read_records(cfg.harmful, limit=cfg.limit)
    harmless = read_records(cfg.harmless, kind="prompt", limit=cfg.limit, context_chars=cfg.context_chars)
    result, rows = {}, []
    for label, m in models.items():
        ha = first_answers(cfg, m, [r.prompt for r in harmful], f"harmful {label}")
        hl = first_answers(cfg, m, [r.prompt for r in harmless], f"harmless {label}")
        result[label] = refusal_rates(ha, hl)
        rows += [{"model": label, "set": "harmful", "prompt": r.prompt.last_user[:300], "answer": a,
                  "refusal": is_refusal(a)} for r, a in zip(harmful, ha)]
        rows += [{"model": label, "set": "harmless", "prompt": r.prompt.last_user[-300:], "answer": a,
                  "refusal": is_refusal(a)} for r, a in zip(harmless, hl)]
    write_csv(out / "refusal_items.csv", rows)
    return result


def run_winrate(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    records = qa_items(cfg.data, cfg.split, cfg.limit, cfg.context_chars)
    prompts = [r.prompt for r in records]
    a = first_answers(cfg, cfg.model, prompts, "winrate model")
    b = first_answers(cfg, cfg.compare, prompts, "winrate compare")
    judge = make_judge(cfg.judge, cfg.judge_model, cfg.judge_base_url, cfg.reward_model)
    verdicts = judge.judge_many([(p, [x, y], r.meta.get("answer")) for p, x, y, r in zip(prompts, a, b, records)])
    write_csv(out / "winrate_items.csv", [{"id": r.meta["id"], "model_answer": x, "compare_answer": y, **v.to_json()}
                                          for r, x, y, v in zip(records, a, b, verdicts)])
    return {"judge": getattr(judge, "identity", cfg.judge), **win_rate(verdicts)}


def run_best_of_n(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    """Best-of-N: sample N answers, keep the reward model's favourite, score it: the cheapest alternative to RL."""
    from alignloop.models.reward_model import load_reward_model

    records = qa_items(cfg.data, cfg.split, cfg.limit, cfg.context_chars)
    prompts = [r.prompt for r in records]
    samples = answer(cfg.model, prompts, cfg.max_new_tokens, cfg.max_prompt_length, max(cfg.temperature, 0.7),
                     cfg.batch_size, num=cfg.num_samples, seed=cfg.seed, desc="best-of-n", abstain=False)
    rm = load_reward_model(cfg.reward_model)
    best = []
    for p, cands in zip(prompts, samples):
        scores = [float(s) for s in rm.score([p] * len(cands), cands)]
        best.append(cands[max(range(len(cands)), key=scores.__getitem__)])
    rows, summary = score_qa(records, best)
    write_csv(out / "best_of_n_items.csv", rows)
    return {"n": cfg.num_samples, **summary}


def run_kl(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    """KL(policy || reference) estimated on the policy's own samples: mean of log p(y) - log q(y)."""
    from alignloop.models.load import load_causal_lm

    records = qa_items(cfg.data, cfg.split, cfg.limit, cfg.context_chars)
    prompts = [r.prompt for r in records]
    pol = load_causal_lm(cfg.model)
    ref = load_causal_lm(cfg.compare or "smollm2-135m-instruct")
    samples = first_answers(cfg, pol, prompts, "kl samples", seed=cfg.seed, temperature=1.0)
    lp = sequence_logprobs(pol[0], pol[1], prompts, samples, cfg.max_prompt_length)
    lq = sequence_logprobs(ref[0], ref[1], prompts, samples, cfg.max_prompt_length)
    rows = [{"id": r.meta["id"], "answer": s, "logp_policy": a, "logp_reference": b, "kl": a - b}
            for r, s, a, b in zip(records, samples, lp, lq)]
    write_csv(out / "kl_items.csv", rows)
    kl = [r["kl"] for r in rows]
    return {"kl_mean": sum(kl) / len(kl) if kl else math.nan, "n": len(kl)}


def run_reward_accuracy(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    """Share of preference pairs where the reward model scores chosen above rejected, and the mean reward of the
    model's own answers on the QA items."""
    from alignloop.models.reward_model import load_reward_model

    rm = load_reward_model(cfg.reward_model)
    result: dict[str, Any] = {}
    if cfg.pairs:
        prefs = [p for p in read_preferences(cfg.pairs) if not p.tie][: cfg.limit or None]
        c = [float(s) for s in rm.score([p.prompt for p in prefs], [p.chosen for p in prefs])]
        r = [float(s) for s in rm.score([p.prompt for p in prefs], [p.rejected for p in prefs])]
        rows = [{"chosen_reward": a, "rejected_reward": b, "correct": a > b} for a, b in zip(c, r)]
        write_csv(out / "reward_pairs.csv", rows)
        result["accuracy"] = sum(x["correct"] for x in rows) / len(rows) if rows else math.nan
    records = qa_items(cfg.data, cfg.split, cfg.limit, cfg.context_chars)
    ans = first_answers(cfg, cfg.model, [r.prompt for r in records], "reward answers")
    scores = [float(s) for s in rm.score([r.prompt for r in records], ans)]
    result["mean_reward"] = sum(scores) / len(scores) if scores else math.nan
    return result


def registered_folder(ref: str, db: str | None = None) -> str:
    """``ref`` itself, or the folder of the registered model it names (``rlhf_160_labels``, ``m-…``), as the
    trainers and the server resolve ``--model``; aliases and paths are not looked up (no registry is created for
    them), and ``ALIGNLOOP_REGISTRY=off`` skips the registry."""
    from alignloop.models.load import ALIASES

    if ref in ALIASES or Path(ref).expanduser().exists() or not registry_on():
        return ref
    from alignloop.registry.store import resolve_model_ref

    return resolve_model_ref(ref, db)[0]


def run(cfg: EvalConfig) -> Path:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"model": cfg.model, "compare": cfg.compare}
    cfg = cfg.replace(model=registered_folder(cfg.model, cfg.db),
                      compare=registered_folder(cfg.compare, cfg.db) if cfg.compare else None)
    models: dict[str, str] = {"model": cfg.model}
    if cfg.compare:
        models["compare"] = cfg.compare
        summary["compare_path"] = cfg.compare
    summary["model_path"] = cfg.model
    if "qa" in cfg.tasks:
        summary["qa"] = evaluate_qa(cfg, out, models)
    if "refusal" in cfg.tasks:
        summary["refusal"] = run_refusal(cfg, out, models)
    if "winrate" in cfg.tasks:
        summary["winrate"] = run_winrate(cfg, out)
    if "best_of_n" in cfg.tasks:
        summary["best_of_n"] = run_best_of_n(cfg, out)
    if "kl" in cfg.tasks:
        summary["kl"] = run_kl(cfg, out)
    if "reward" in cfg.tasks:
        summary["reward"] = run_reward_accuracy(cfg, out)
    write_json(out / "summary.json", summary)
    print(json.dumps(summary, default=str))
    print(f"results: {out.resolve()}", file=sys.stderr)
    return out
