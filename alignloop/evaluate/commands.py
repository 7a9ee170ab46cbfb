"""``alignloop eval``: question-answering scores, refusal rates, win rate by a judge, best-of-N, reward and KL.

Every evaluation writes per-item results (CSV) next to its ``summary.json``, so a person can read where the model
failed. With ``--compare MODEL`` both models answer the *same* items and the CSV holds them side by side.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence

from alignloop.evaluate.config import FINANCEBENCH, HH_TEST, EvalConfig  # noqa: F401  (re-exported)

# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------

def heldout_ids(ids: list[str], share: float = 0.3) -> set[str]:
    """The fixed held-out rule of the demo and ``--split test``: the ``share`` of the ids (rounded) with the
    smallest SHA-256 of the id. Order-free and the same on every machine: 30 of the 100 FinanceBench questions."""
    import hashlib

    ranked = sorted(ids, key=lambda i: hashlib.sha256(str(i).encode()).hexdigest())
    return set(ranked[: round(share * len(ranked))])


def qa_items(path: str, split: str = "all", limit: int | None = None) -> list[Any]:
    """Prompt records with ``meta['answer']`` (gold) and ``meta['id']``; ``split`` filters FinanceBench rows."""
    from alignloop.core.errors import DataError
    from alignloop.data.readers import read_records

    records = read_records(path, kind="prompt")
    ids = [str(r.meta.get("financebench_id", r.meta.get("id", n))) for n, r in enumerate(records)]
    test = heldout_ids(ids)
    out = []
    for fid, r in zip(ids, records):
        if split != "all" and (fid in test) != (split == "test"):
            continue
        if not isinstance(r.meta.get("answer"), str):
            raise DataError("a QA item needs a gold 'answer' string", path=r.meta.get("_where"), field="answer")
        r.meta.setdefault("id", str(fid))
        out.append(r)
    return out[:limit] if limit else out


def context_of(record: Any) -> str:
    return record.prompt.last_user


def question_of(record: Any) -> str:
    """The question of a QA prompt (``qa_prompt`` puts it last, after "Question: ")."""
    if isinstance(record.meta.get("question"), str):
        return record.meta["question"]
    text = record.prompt.last_user
    return text.rsplit("Question: ", 1)[-1].strip() if "Question: " in text else text[-300:]


# --------------------------------------------------------------------------------------------------
# Answering
# --------------------------------------------------------------------------------------------------

def answer(model: str | tuple, prompts: Sequence[Any], max_new_tokens: int = 64, max_prompt_length: int = 512,
           temperature: float = 0.0, batch_size: int = 8, num: int = 1, seed: int = 0, desc: str = "answer") -> list[list[str]]:
    """``num`` answers per prompt from ``model`` (an alias/folder, or a loaded ``(model, tokenizer)``)."""
    import torch
    from tqdm.auto import tqdm

    from alignloop.generation.sampling import SamplingParams, sample_texts
    from alignloop.models.load import load_causal_lm

    lm, tok = model if isinstance(model, tuple) else load_causal_lm(model)
    if torch.cuda.is_available():
        lm = lm.to("cuda")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    with tqdm(total=len(prompts) * num, desc=desc, unit="answer", file=sys.stderr, dynamic_ncols=True) as bar:
        return sample_texts(lm, tok, list(prompts), num, params, batch_size=batch_size,
                            max_prompt_length=max_prompt_length, progress=bar)


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------

def score_qa(records: Sequence[Any], answers: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-item rows (id, question, gold, answer, grade, fine grade, reason, llmware points) and a summary."""
    from alignloop.evaluate.qa import LLMWARE_POINTS, grade, summarize

    rows = []
    for rec, ans in zip(records, answers):
        fine, reason = grade(ans, rec.meta["answer"], question_of(rec), context_of(rec))
        coarse = {"partial": "incorrect", "hallucination": "incorrect"}.get(fine, fine)
        rows.append({"id": rec.meta["id"], "question": question_of(rec),
                     "gold": rec.meta["answer"], "answer": ans, "grade": coarse, "fine_grade": fine,
                     "points": LLMWARE_POINTS[fine], "reason": reason})
    summary = summarize([r["grade"] for r in rows], [r["points"] for r in rows])
    if rows:
        from alignloop.evaluate.report import bootstrap_mean_ci

        summary["correct_rate_ci95"] = bootstrap_mean_ci([r["grade"] == "correct" for r in rows])
    return rows, summary


def refusal_rates(harmful_answers: Sequence[str], harmless_answers: Sequence[str]) -> dict[str, float]:
    from alignloop.evaluate.qa import is_refusal

    def rate(xs: Sequence[str]) -> float:
        return sum(map(is_refusal, xs)) / len(xs) if xs else math.nan

    return {"refusal_rate_harmful": rate(harmful_answers), "over_refusal_rate_harmless": rate(harmless_answers)}


def win_rate(verdicts: Sequence[Any]) -> dict[str, float]:
    """Win rate of model A (completions[0]) over B; ties and inconsistent verdicts count half."""
    n = len(verdicts)
    wins = sum(1 for v in verdicts if v.winner == 0)
    losses = sum(1 for v in verdicts if v.winner == 1)
    ties = n - wins - losses
    return {"n": n, "wins": wins, "losses": losses, "ties": ties,
            "win_rate": (wins + 0.5 * ties) / n if n else math.nan}


def sequence_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Any], answers: Sequence[str],
                      max_prompt_length: int = 512) -> list[float]:
    """Sum of the answer tokens' log-probabilities under ``model`` (for KL estimates): the RL stages' one forward
    (``generation.rollout.sequence_logprobs``) at temperature 1."""
    from alignloop.generation.rollout import answer_logprobs

    return answer_logprobs(model, tokenizer, prompts, answers, max_prompt_length)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]]) -> Path:
    """Atomic CSV of dict rows (columns in first-row order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    cols = list(rows[0].keys()) if rows else []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)
    return path


def write_json(path: str | os.PathLike, data: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)
    return path


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------

def evaluate_qa(cfg: EvalConfig, out: Path, models: dict[str, str | tuple]) -> dict[str, Any]:
    """Each model answers the same items; per-item CSV (side by side) and a summary per model."""
    records = qa_items(cfg.data, cfg.split, cfg.limit)
    summaries, per_model = {}, {}
    for label, m in models.items():
        answers = [a[0] for a in answer(m, [r.prompt for r in records], cfg.max_new_tokens, cfg.max_prompt_length,
                                        cfg.temperature, cfg.batch_size, seed=cfg.seed, desc=f"qa {label}")]
        rows, summaries[label] = score_qa(records, answers)
        per_model[label] = rows
        write_csv(out / f"predictions_{label}.csv", [{"id": r["id"], "answer": r["answer"]} for r in rows])
    side = []
    for i, rec in enumerate(records):
        row = {"id": rec.meta["id"], "question": per_model[next(iter(models))][i]["question"], "gold": rec.meta["answer"]}
        for label in models:
            r = per_model[label][i]
            row.update({f"{label}_answer": r["answer"], f"{label}_grade": r["grade"],
                        f"{label}_fine_grade": r["fine_grade"], f"{label}_points": r["points"]})
        side.append(row)
    write_csv(out / "qa_items.csv", side)
    return summaries


def run(cfg: EvalConfig) -> Path:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, str] = {"model": cfg.model}
    if cfg.compare:
        models["compare"] = cfg.compare
    summary: dict[str, Any] = {"model": cfg.model, "compare": cfg.compare}
    if "qa" in cfg.tasks:
        summary["qa"] = evaluate_qa(cfg, out, models)
    if "refusal" in cfg.tasks:
        from alignloop.data.readers import read_records

        harmful = read_records(cfg.harmful, limit=cfg.limit)
        harmless = read_records(cfg.harmless, kind="prompt", limit=cfg.limit)
        summary["refusal"] = {}
        rows = []
        for label, m in models.items():
            ha = [a[0] for a in answer(m, [r.prompt for r in harmful], cfg.max_new_tokens, cfg.max_prompt_length,
                                       cfg.temperature, cfg.batch_size, desc=f"harmful {label}")]
            hl = [a[0] for a in answer(m, [r.prompt for r in harmless], cfg.max_new_tokens, cfg.max_prompt_length,
                                       cfg.temperature, cfg.batch_size, desc=f"harmless {label}")]
            summary["refusal"][label] = refusal_rates(ha, hl)
            from alignloop.evaluate.qa import is_refusal

            rows += [{"model": label, "set": "harmful", "prompt": r.prompt.last_user[:300], "answer": a,
                      "refusal": is_refusal(a)} for r, a in zip(harmful, ha)]
            rows += [{"model": label, "set": "harmless", "prompt": r.prompt.last_user[-300:], "answer": a,
                      "refusal": is_refusal(a)} for r, a in zip(harmless, hl)]
        write_csv(out / "refusal_items.csv", rows)
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
    return out


def make_judge(kind: str, model: str | None = None, base_url: str | None = None, reward_model: str | None = None) -> Any:
    if kind == "reference":
        from alignloop.judges.reference import ReferenceJudge

        return ReferenceJudge()
    if kind == "local":
        from alignloop.judges.local import LocalJudge

        return LocalJudge(model or "smollm2-135m-instruct")
    if kind == "http":
        from alignloop.judges.http import HTTPJudge

        return HTTPJudge(base_url or "", model or "")
    from alignloop.judges.reward import RewardModelJudge

    return RewardModelJudge.from_dir(reward_model or "")


def run_winrate(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    records = qa_items(cfg.data, cfg.split, cfg.limit)
    prompts = [r.prompt for r in records]
    a = [x[0] for x in answer(cfg.model, prompts, cfg.max_new_tokens, cfg.max_prompt_length, cfg.temperature,
                              cfg.batch_size, desc="winrate model")]
    b = [x[0] for x in answer(cfg.compare, prompts, cfg.max_new_tokens, cfg.max_prompt_length, cfg.temperature,
                              cfg.batch_size, desc="winrate compare")]
    judge = make_judge(cfg.judge, cfg.judge_model, cfg.judge_base_url, cfg.reward_model)
    verdicts = judge.judge_many([(p, [x, y], r.meta.get("answer")) for p, x, y, r in zip(prompts, a, b, records)])
    write_csv(out / "winrate_items.csv", [{"id": r.meta["id"], "model_answer": x, "compare_answer": y, **v.to_json()}
                                          for r, x, y, v in zip(records, a, b, verdicts)])
    return {"judge": getattr(judge, "identity", cfg.judge), **win_rate(verdicts)}


def run_best_of_n(cfg: EvalConfig, out: Path) -> dict[str, Any]:
    """Best-of-N: sample N answers, keep the reward model's favourite, score it: the cheapest alternative to RL."""
    from alignloop.models.reward_model import load_reward_model

    records = qa_items(cfg.data, cfg.split, cfg.limit)
    prompts = [r.prompt for r in records]
    samples = answer(cfg.model, prompts, cfg.max_new_tokens, cfg.max_prompt_length, max(cfg.temperature, 0.7),
                     cfg.batch_size, num=cfg.num_samples, seed=cfg.seed, desc="best-of-n")
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

    records = qa_items(cfg.data, cfg.split, cfg.limit)
    prompts = [r.prompt for r in records]
    pol = load_causal_lm(cfg.model)
    ref = load_causal_lm(cfg.compare or "smollm2-135m-instruct")
    samples = [x[0] for x in answer(pol, prompts, cfg.max_new_tokens, cfg.max_prompt_length, 1.0, cfg.batch_size,
                                    seed=cfg.seed, desc="kl samples")]
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
    from alignloop.data.readers import read_preferences
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
    records = qa_items(cfg.data, cfg.split, cfg.limit)
    ans = [x[0] for x in answer(cfg.model, [r.prompt for r in records], cfg.max_new_tokens, cfg.max_prompt_length,
                                cfg.temperature, cfg.batch_size, desc="reward answers")]
    scores = [float(s) for s in rm.score([r.prompt for r in records], ans)]
    result["mean_reward"] = sum(scores) / len(scores) if scores else math.nan
    return result
