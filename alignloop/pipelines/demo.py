"""``alignloop demo``: the whole pipeline on the built-in FinanceBench questions, offline, on a CPU.

Stages (each writes a ``done`` marker; a second run skips finished stages and reuses their outputs):

1. ``data``      split the 100 questions by the fixed held-out rule (``heldout_ids``: 70 train / 30
                 test); each context is the passages of the evidence most relevant to the question within
                 ``context_chars`` (:func:`alignloop.data.context.build_context`, as ``alignloop eval`` reads raw
                 FinanceBench rows), to keep CPU time down;
2. ``base_eval`` the base model answers the held-out questions (greedy), graded by the QA scorer;
3. ``sft``       LoRA SFT on the training questions' gold answers;
4. ``sample``    the SFT model samples ``num_candidates`` answers per training question;
5. ``judge``     the reference-guided judge (standing in for human labellers) turns them into preferences;
6. ``reward``    a reward model on those preferences (frozen backbone, answer-mean pooling);
7. ``dpo``       a short DPO from the SFT model (``dpo_steps``; 0 skips it);
8. ``grpo``      a short GRPO from the DPO model on the training questions, rewarded by the rule-based
                 numeric-answer check (``alignloop.rewards:financebench_numeric``: does the answer contain the gold
                 figure?), K answers per question, LoRA;
9. ``final_eval`` the final model answers the same held-out questions;
10. ``report``   the HTML report: base vs final side by side, correct / incorrect / refusal counts.
"""

from __future__ import annotations

import csv
import json
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable

from alignloop.core.errors import DataError
from alignloop.core.files import write_json, write_jsonl, write_text
from alignloop.data.context import build_context
from alignloop.data.readers import qa_prompt, read_rows
from alignloop.evaluate.qa_run import answer, heldout_ids, qa_items, score_qa
from alignloop.evaluate.report import grouped_bars_png, html_report, image, table_html
from alignloop.evaluate.tables import write_csv
from alignloop.judges import labeling
from alignloop.judges.reference import ReferenceJudge
from alignloop.pipelines.config import FINANCEBENCH, DemoConfig  # noqa: F401  (re-exported)
from alignloop.pipelines.resume import run_once


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def stage(out: Path, name: str, cfg: DemoConfig, fn: Callable[[Path], Any], key: Any = None) -> Any:
    """Run ``fn(folder)`` unless ``folder/done`` exists with the same ``key`` (what the stage's input was); the
    marker holds the stage's JSON result (:func:`alignloop.pipelines.resume.run_once`)."""
    return run_once(out / name, fn, key=key, force=cfg.force, log=log)


def split_data(cfg: DemoConfig, folder: Path) -> dict[str, Any]:
    """The fixed train/test split; each question's context is :func:`build_context` of its ``context`` or
    FinanceBench ``evidence`` within ``context_chars`` (the passages most relevant to the question), the same
    builder ``alignloop eval`` applies to raw FinanceBench rows."""
    rows = list(read_rows(cfg.data))
    rows = rows[: cfg.limit] if cfg.limit else rows
    parts: dict[str, list[dict]] = {"train": [], "test": []}
    ids = [str(r.get("financebench_id", r.get("id", n))) for n, (_, r) in enumerate(rows)]
    test = heldout_ids(ids)
    for fid, (line, r) in zip(ids, rows):
        field = "context" if r.get("context") not in (None, "") else "evidence"
        try:
            ctx = build_context(r["question"], r.get(field), cfg.context_chars)
        except ValueError as exc:
            raise DataError(str(exc), path=cfg.data, line=line, field=field) from None
        parts["test" if fid in test else "train"].append({"id": fid, "question": r["question"],
                                                          "context": ctx, "answer": r["answer"]})
    for name, part in parts.items():
        write_jsonl(folder / f"{name}.jsonl", part)
    # SFT demonstrations: the prompt exactly as the model sees it at evaluation, the gold answer as completion
    write_jsonl(folder / "sft.jsonl", [{"prompt": qa_prompt(r["question"], r["context"]).to_json(),
                                        "completion": r["answer"], "id": r["id"]} for r in parts["train"]])
    return {k: len(v) for k, v in parts.items()}


def qa_eval(cfg: DemoConfig, model: str, data: Path, folder: Path, label: str) -> dict[str, Any]:
    records = qa_items(str(data))
    answers = [a[0] for a in answer(model, [r.prompt for r in records], cfg.max_new_tokens, 10_000, 0.0, 16,
                                    seed=cfg.seed, desc=f"eval {label}")]
    rows, summary = score_qa(records, answers)
    write_csv(folder / "items.csv", rows)
    write_csv(folder / "predictions.csv", [{"id": r["id"], "answer": r["answer"]} for r in rows])
    write_json(folder / "summary.json", summary)
    log(f"{label}: {int(summary['correct'])} correct, {int(summary['incorrect'])} incorrect, "
        f"{int(summary['refusal'])} refusal of {int(summary['n'])}; llmware points {summary['llmware_points']:+.1f}")
    return summary


def sample_and_judge(cfg: DemoConfig, model: str, data: Path, folder: Path) -> dict[str, Any]:
    """Sample candidates for the training questions and label every pair with the reference judge (the gold
    answer is one of the candidates); shared with the loop's on-policy rounds."""
    return labeling.sample_and_judge(model, qa_items(str(data)), folder, ReferenceJudge(),
                                     num_candidates=cfg.num_candidates, max_new_tokens=cfg.max_new_tokens,
                                     batch_size=32, seed=cfg.seed)


def report(cfg: DemoConfig, out: Path, results: dict[str, Any]) -> Path:
    # grade the stored answers again with the current scorer, so a cached run's report follows scorer fixes
    records = qa_items(str(out / "data" / "test.jsonl"))
    graded = {}
    for label in ("base", "final"):
        with open(out / f"{label}_eval" / "predictions.csv") as fh:
            answers = {r["id"]: r["answer"] for r in csv.DictReader(fh)}
        rows, summary = score_qa(records, [answers[r.meta["id"]] for r in records])
        write_csv(out / "report" / f"{label}_items.csv", rows)
        graded[label] = (rows, summary)
    (b_rows, base), (f_list, final) = graded["base"], graded["final"]
    f_rows = {r["id"]: r for r in f_list}
    cats = ("correct", "incorrect", "refusal")
    png = grouped_bars_png({"base": {c: base[c] for c in cats}, "final": {c: final[c] for c in cats}},
                           out / "report" / "qa_counts.png", "Held-out FinanceBench questions")
    side = [{"id": r["id"], "question": r["question"], "gold": r["gold"], "base answer": r["answer"],
             "base grade": r["grade"], "final answer": f_rows[r["id"]]["answer"],
             "final grade": f_rows[r["id"]]["grade"]} for r in b_rows]
    both = {"both correct": 0, "only final correct": 0, "only base correct": 0}
    for r in side:
        b, f = r["base grade"] == "correct", r["final grade"] == "correct"
        if b and f:
            both["both correct"] += 1
        elif f:
            both["only final correct"] += 1
        elif b:
            both["only base correct"] += 1
    d_correct = final["correct"] - base["correct"]
    d_points = final["llmware_points"] - base["llmware_points"]
    def ci(row: dict) -> str:
        lo_hi = row.get("correct_rate_ci95")
        return f"[{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else "n/a"

    verdict = (f"The final model ({results['final_model']}) answers {int(final['correct'])}/{int(final['n'])} held-out "
               f"questions correctly against the base model's {int(base['correct'])}/{int(base['n'])} "
               f"({d_correct:+.0f}); llmware points {final['llmware_points']:+.1f} vs {base['llmware_points']:+.1f} "
               f"({d_points:+.1f}). With {int(base['n'])} items a difference of a few answers is within noise: "
               f"95% intervals of the correct rate: base {ci(base)}, "
               f"final {ci(final)}. Paired on the same items: {both['only final correct']} "
               f"questions only the final model gets right, {both['only base correct']} only the base model.")
    summary_rows = [{"model": "base", **{c: int(base[c]) for c in cats}, "llmware points": base["llmware_points"]},
                    {"model": "final", **{c: int(final[c]) for c in cats}, "llmware points": final["llmware_points"]}]
    stages = [{"stage": k, "seconds": v.get("seconds"), "result": json.dumps(v.get("result"), default=str)[:200]}
              for k, v in results.items() if isinstance(v, dict) and "seconds" in v]
    path = html_report(out / "report" / "index.html", "alignloop demo: FinanceBench, base vs final", [
        ("Verdict", f"<p class='verdict'>{verdict}</p>"),
        ("Held-out scores", table_html(summary_rows) + image(png)),
        ("Side by side (same held-out items)", table_html(side)),
        ("Stages", table_html(stages)),
    ])
    write_text(out / "report" / "verdict.txt", verdict + "\n")
    return path


def run(cfg: DemoConfig) -> Path:
    import torch

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    data_dir = out / "data"
    results["data"] = stage(out, "data", cfg, lambda f: split_data(cfg, f))
    results["base_eval"] = stage(out, "base_eval", cfg,
                                 lambda f: qa_eval(cfg, cfg.model, data_dir / "test.jsonl", f, "base"))

    import alignloop

    def sft(folder: Path) -> str:
        return str(alignloop.train("sft", model=cfg.model, data=str(data_dir / "sft.jsonl"), output=str(folder),
                                   lora=True, max_steps=cfg.sft_steps, batch_size=cfg.batch_size,
                                   learning_rate=cfg.sft_learning_rate, max_length=cfg.max_length,
                                   warmup_steps=2, seed=cfg.seed, log_every=5))

    policy = stage(out, "sft", cfg, sft)["result"]
    results["sft"] = {"result": policy}
    results["judge"] = stage(out, "judge", cfg, lambda f: sample_and_judge(cfg, policy, data_dir / "train.jsonl", f))
    prefs = str(out / "judge" / "preferences.jsonl")

    if cfg.reward_model:
        # the recipe that ranked best per CPU minute on HH (benchmarks/README.md): frozen features, mean pooling
        results["reward"] = stage(out, "reward", cfg, lambda f: str(alignloop.train(
            "reward train", model=cfg.model, data=prefs, output=str(f), freeze_backbone=True, pooling="mean",
            backbone_layers=15,
            batch_size=cfg.batch_size, max_length=cfg.max_length, seed=cfg.seed)))
    if cfg.dpo_steps:
        def dpo_run(folder: Path) -> str:
            # the pairs the short run will see, drawn at random (seeded) from all of them: DPO first scores every
            # pair of its data with the reference model, so pairs it would never reach cost time for nothing
            rows = [row for _, row in read_rows(prefs)]
            n_pick = min(len(rows), cfg.dpo_steps * cfg.batch_size)
            pick = sorted(random.Random(cfg.seed).sample(range(len(rows)), n_pick))
            data = write_jsonl(folder / "pairs.jsonl", [rows[i] for i in pick])
            return str(alignloop.train("dpo", model=policy, data=str(data), output=str(folder), lora=True,
                                       max_steps=cfg.dpo_steps, batch_size=cfg.batch_size, learning_rate=5e-4,
                                       max_length=cfg.max_length, seed=cfg.seed))
        dpo = stage(out, "dpo", cfg, dpo_run)
        results["dpo"] = dpo
        policy = dpo["result"]
    if cfg.rl_steps:
        start = policy
        grpo = stage(out, "grpo", cfg, lambda f: str(alignloop.train(
            "grpo", model=start, prompts=str(data_dir / "train.jsonl"), output=str(f), lora=True,
            reward=["python:alignloop.rewards:financebench_numeric"], max_steps=cfg.rl_steps, batch_size=2,
            num_generations=cfg.rl_generations, max_new_tokens=cfg.max_new_tokens, temperature=0.8,
            learning_rate=2e-4, seed=cfg.seed)), key=start)
        results["grpo"] = grpo
        policy = grpo["result"]
    results["final_model"] = policy
    results["final_eval"] = stage(out, "final_eval", cfg,
                                  lambda f: qa_eval(cfg, policy, data_dir / "test.jsonl", f, "final"), key=policy)
    path = report(cfg, out, results)
    log((out / "report" / "verdict.txt").read_text().strip())
    log(f"total {time.perf_counter() - t0:.0f} s")
    print(f"report: {path.resolve()}")
    return path
