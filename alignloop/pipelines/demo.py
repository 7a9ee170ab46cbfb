"""``alignloop demo``: the staged RLHF loop on the built-in FinanceBench questions, offline, on a CPU.

Shared steps (each writes a ``done`` marker; a second run skips finished steps and reuses their outputs):

1. ``data``      split the 100 questions by the fixed held-out rule (``heldout_ids``: 70 train / 30
                 test); each context is the passages of the evidence most relevant to the question within
                 ``context_chars`` (:func:`alignloop.data.context.build_context`, as ``alignloop eval`` reads raw
                 FinanceBench rows), to keep CPU time down;
2. ``base_eval`` the base model answers the held-out questions (greedy), graded by the QA scorer;
3. ``sft``       LoRA SFT on the training questions' gold answers;
4. ``judge``     the SFT model samples ``num_candidates`` answers per training question and the reference-guided
                 judge (standing in for human labellers: correct > declining > inventing) compares every pair,
                 the gold answer among them: the pool of labels.

Then ``alignloop loop`` in training mode (:mod:`alignloop.pipelines.loop_training`, ``loop/random/stage_<n>/``)
over the ``stages`` label counts: stage 0 is the SFT model alone; every later stage trains, on the first n labels,
a reward model (frozen backbone, answer-mean pooling), DPO from the SFT model, then a short GRPO from the DPO model
whose reward is the graded rule (``alignloop.rewards:financebench_graded``: the answer's llmware points) plus
``rm_weight`` x the stage's reward model (``rm:<stage>/reward``). Each stage writes ``submission.csv`` and
``grades.jsonl`` for the held-out questions and registers its model as ``rlhf_<n>_labels`` (parent: the previous
stage's; stage 0's: the SFT run).

5. ``ablation``  the last stage's DPO model answers the held-out questions too, so SFT only (stage 0), + DPO and
                 + RL (the last stage's model) are compared on the same items;
6. the report    ``report.md`` and ``report.json`` (:mod:`alignloop.pipelines.demo_report`); ``final`` links to
                 the last stage's model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from alignloop.core.config import ConfigError
from alignloop.core.errors import DataError
from alignloop.core.files import write_json, write_jsonl
from alignloop.data.context import build_context
from alignloop.data.readers import qa_prompt, read_rows
from alignloop.evaluate.qa import IN_CONTEXT, context_class
from alignloop.evaluate.qa_run import heldout_ids, qa_items
from alignloop.judges import labeling
from alignloop.judges.reference import ReferenceJudge
from alignloop.pipelines.config import FINANCEBENCH, DemoConfig, LoopConfig, stage_count  # noqa: F401  (re-exported)
from alignloop.pipelines.loop_report import stage_dir
from alignloop.pipelines.loop_training import answer_and_grade
from alignloop.pipelines.resume import run_once

#: the staged loop's folder under the demo's output, and its one strategy
LOOP, STRATEGY = "loop", "random"


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def step_keys(cfg: DemoConfig) -> dict[str, Any]:
    """What each shared step reads, its parent step's key included (a chain: changing the data's settings changes
    the SFT's and the judge's keys too)."""
    data = {"data": cfg.data, "limit": cfg.limit, "context_chars": cfg.context_chars,
            "sft_targets": cfg.sft_targets, "decline_text": cfg.decline_text if cfg.sft_targets != "gold" else "",
            "sft_answer_share": cfg.sft_answer_share if cfg.sft_targets == "contrastive" else None}
    sft = {"data": data, "model": cfg.model, "steps": cfg.sft_steps, "lr": cfg.sft_learning_rate,
           "batch_size": cfg.batch_size, "max_length": cfg.max_length, "seed": cfg.seed}
    judge = {"sft": sft, "decline_candidate": cfg.decline_candidate, "num_candidates": cfg.num_candidates,
             "max_new_tokens": cfg.max_new_tokens, "judge_gold": cfg.judge_gold}
    return {"data": data, "sft": sft, "judge": judge}


def stage(out: Path, name: str, cfg: DemoConfig, fn: Callable[[Path], Any], key: Any = None) -> Any:
    """Run ``fn(folder)`` unless ``folder/done`` exists with the same ``key`` (what the step's input was); the
    marker holds the step's JSON result (:func:`alignloop.pipelines.resume.run_once`)."""
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
        row = {"id": fid, "question": r["question"], "context": ctx, "answer": r["answer"],
               "context_class": context_class(ctx, r["answer"], r["question"])}
        if cfg.sft_targets == "contrastive" and fid not in test and row["context_class"] == IN_CONTEXT:
            row["context_without_answer"] = context_without_answer(r["question"], r.get(field), r["answer"],
                                                                   cfg.context_chars)
        parts["test" if fid in test else "train"].append(row)
    for name, part in parts.items():
        write_jsonl(folder / f"{name}.jsonl", part)
    write_jsonl(folder / "sft.jsonl", sft_demonstrations(cfg, parts["train"]))
    counts = {k: len(v) for k, v in parts.items()}
    if cfg.sft_targets != "gold":
        sft = [json.loads(line) for line in (folder / "sft.jsonl").read_text().splitlines()]
        counts["sft_rows"] = len(sft)
        counts["sft_declines"] = sum(r["completion"] == cfg.decline_text for r in sft)
    return counts


def context_without_answer(question: str, evidence: Any, gold: str, budget: int) -> str | None:
    """The context :func:`build_context` gives for ``question`` once every line of the evidence that holds the gold
    answer is taken out (the same filing, the same question, but nothing to quote): the negative twin of an
    in-context demonstration (``sft_targets: contrastive``). ``None`` when no such context can be made (a text gold
    whose words are spread over many lines)."""
    lines = build_context(question, evidence, None).splitlines()
    kept = [line for line in lines if context_class(line, gold, question) != IN_CONTEXT]
    ctx = build_context(question, "\n".join(kept), budget) if kept else ""
    return ctx if ctx.strip() and context_class(ctx, gold, question) != IN_CONTEXT else None


def sft_demonstrations(cfg: DemoConfig, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT rows: the prompt exactly as the model sees it at evaluation; as completion the gold answer, or (with
    ``sft_targets: grounded``) ``decline_text`` where the built context does not hold the gold answer
    (:func:`alignloop.evaluate.qa.context_class` is not ``in_context``): a 135M model that cannot find the figure
    in its context learns to say so rather than to invent one.

    ``sft_targets: contrastive`` adds, for each in-context question, its twin whose context has the answer's lines
    taken out (:func:`context_without_answer`, id ``<id>#without``) with ``decline_text``: the same question with
    and without the figure, so that what decides between answering and declining is the context, not the kind of
    question. The in-context demonstrations are repeated until answers are about ``sft_answer_share`` of the rows
    (``grounded`` declined everything, 46 declines against 24 answers: benchmarks/README.md)."""
    def row(r: dict[str, Any], context: str, completion: str, rid: str) -> dict[str, Any]:
        return {"prompt": qa_prompt(r["question"], context).to_json(), "completion": completion, "id": rid}

    if cfg.sft_targets == "gold":
        return [row(r, r["context"], r["answer"], r["id"]) for r in rows]
    answers, declines = [], []
    for r in rows:
        if r["context_class"] != IN_CONTEXT:
            declines.append(row(r, r["context"], cfg.decline_text, r["id"]))
            continue
        answers.append(row(r, r["context"], r["answer"], r["id"]))
        if cfg.sft_targets == "contrastive" and r.get("context_without_answer"):
            declines.append(row(r, r["context_without_answer"], cfg.decline_text, f"{r['id']}#without"))
    if cfg.sft_targets == "contrastive" and answers:
        share = cfg.sft_answer_share
        answers = answers * max(1, round(share / (1 - share) * len(declines) / len(answers)))
    return answers + declines


def qa_eval(cfg: DemoConfig, model: str, data: Path, folder: Path, label: str) -> dict[str, Any]:
    """``model``'s greedy answers to the held-out questions: ``submission.csv`` and ``grades.jsonl`` (the loop's
    :func:`answer_and_grade`) and ``summary.json``."""
    summary = answer_and_grade(model, qa_items(str(data)), folder, cfg.max_new_tokens, cfg.seed, f"eval {label}")
    write_json(folder / "summary.json", summary)
    log(f"{label}: {int(summary['correct'])} correct, {int(summary['incorrect'])} incorrect, "
        f"{int(summary['refusal'])} refusal of {int(summary['n'])}; llmware points {summary['llmware_points']:+.1f}")
    return {k: v for k, v in summary.items() if isinstance(v, (int, float))}


def sample_and_judge(cfg: DemoConfig, model: str, data: Path, folder: Path) -> dict[str, Any]:
    """Sample candidates for the training questions and label every pair with the reference judge (the gold
    answer is one of the candidates, or with ``judge_gold: in_context`` only where the built context holds it);
    shared with the loop's on-policy rounds."""
    def add_gold(rec: Any) -> bool:
        return cfg.judge_gold == "always" or rec.meta.get("context_class") == IN_CONTEXT
    return labeling.sample_and_judge(model, qa_items(str(data)), folder, ReferenceJudge(),
                                     num_candidates=cfg.num_candidates, max_new_tokens=cfg.max_new_tokens,
                                     batch_size=32, seed=cfg.seed, decline=cfg.decline_candidate or None,
                                     add_gold=add_gold)


def label_counts(cfg: DemoConfig, pool: int) -> list[int]:
    """The stages' label counts out of the ``pool`` labels the judge gave; increasing, or a ConfigError."""
    counts = [stage_count(s, pool) for s in cfg.stages]
    if any(b <= a for a, b in zip(counts, counts[1:])) or counts[-1] > pool:
        raise ConfigError([f"stages: {cfg.stages} are {counts} of the judge's {pool} labels; they must increase "
                           f"and stay within {pool}"])
    return counts


def loop_config(cfg: DemoConfig, out: Path, sft_model: str, counts: list[int]) -> LoopConfig:
    """The staged loop the demo runs: training mode on the judge's labels, the SFT model as stage 0."""
    methods = ["reward"] * cfg.reward_model + ["dpo"] * bool(cfg.dpo_steps) + ["grpo"] * bool(cfg.rl_steps)
    data = out / "data"
    return LoopConfig(
        output=str(out / LOOP), data=str(out / "judge" / "preferences.jsonl"), dev_data="",
        test_data=str(data / "test.jsonl"), prompts=str(data / "train.jsonl"), stages=counts,
        strategies=[STRATEGY], simulated=False, methods=methods, model=sft_model, seeds=[cfg.seed], db=cfg.db,
        max_steps=max(cfg.dpo_steps, 1), dpo_subsample=True, batch_size=cfg.batch_size, learning_rate=5e-4,
        max_length=cfg.max_length, max_new_tokens=cfg.max_new_tokens,
        # the reward recipe that ranked best per CPU minute on HH (benchmarks/README.md): frozen features, mean pooling
        reward_recipe="frozen", reward_layers=15,
        rl_steps=max(cfg.rl_steps, 1), rl_generations=cfg.rl_generations,
        rm_weight=cfg.rm_weight if cfg.reward_model else 0.0, abstain_below=cfg.abstain_below,
        decline_text=cfg.decline_text).validate()


def stage_metrics(out: Path, cfg: DemoConfig, counts: list[int]) -> list[dict[str, Any]]:
    """Each finished stage's ``metrics.json`` with its folder (``dir``)."""
    rows = []
    for n in counts:
        folder = stage_dir(out / LOOP, STRATEGY, cfg.seed, n, 1)
        rows.append({**json.loads((folder / "metrics.json").read_text()), "dir": str(folder)})
    return rows


def ablation(cfg: DemoConfig, out: Path, last: dict[str, Any]) -> dict[str, Any] | None:
    """The last stage's DPO model answers the held-out questions (``ablation/dpo/``), when the stage went on to
    an RL step (otherwise its own answers are the DPO model's)."""
    dpo = last.get("dpo_policy")
    if not dpo or dpo == last["policy"]:
        return None
    test = out / "data" / "test.jsonl"
    return run_once(out / "ablation" / "dpo", lambda f: qa_eval(cfg, dpo, test, f, "ablation: + DPO"), key=dpo,
                    force=cfg.force, log=log, name="ablation (+ DPO)")


def link_final(out: Path, last: dict[str, Any]) -> Path | None:
    """``<output>/final``: a link to the last stage's model, so ``--model runs/demo/final`` (or ``runs/demo``) names
    it whatever its label count; redone every run. Returns the link, or None where links cannot be made (the report
    then names the stage's folder)."""
    link = out / "final"
    try:
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            log(f"warning: {link} exists and is not the demo's link: left as it is")
            return None
        link.symlink_to(Path(os.path.relpath(Path(last["policy"]).resolve(), out.resolve())),
                        target_is_directory=True)
        return link
    except OSError as exc:
        log(f"warning: cannot link {link} to the final model: {exc}")
        return None


def run(cfg: DemoConfig) -> Path:
    import torch

    import alignloop
    from alignloop.pipelines import demo_report, loop

    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    t0 = time.perf_counter()
    data = out / "data"
    bar = tqdm(total=7, desc="demo", unit="step", file=sys.stderr)
    steps: dict[str, Any] = {}

    def step(name: str, fn: Callable[[Path], Any], key: Any = None) -> Any:
        steps[name] = stage(out, name, cfg, fn, key)
        bar.update()
        return steps[name]["result"]

    # each shared step is keyed by what it read, its parent's key included: a changed setting redoes that step and
    # every step after it, and the loop's stages (which have no key of their own) start afresh
    keys = step_keys(cfg)
    step("data", lambda f: split_data(cfg, f), key=keys["data"])
    # keyed by the model that answers (a run made before the staged demo wrote no submission.csv and no key: redone)
    step("base_eval", lambda f: qa_eval(cfg, cfg.model, data / "test.jsonl", f, "base model"),
         key=[cfg.model, keys["data"]])
    sft = step("sft", lambda f: str(alignloop.train(
        "sft", model=cfg.model, data=str(data / "sft.jsonl"), output=str(f), lora=True, max_steps=cfg.sft_steps,
        batch_size=cfg.batch_size, learning_rate=cfg.sft_learning_rate, max_length=cfg.max_length, warmup_steps=2,
        seed=cfg.seed, log_every=5, db=cfg.db)), key=keys["sft"])
    judged = step("judge", lambda f: sample_and_judge(cfg, sft, data / "train.jsonl", f),
                  key=keys["judge"])
    counts = label_counts(cfg, judged["preferences"])
    log(f"stages: {counts} labels of {judged['preferences']} (one label: one judged pair of answers)")
    if cfg.force or not steps["judge"].get("reused"):  # the loop's stages have no key: new labels, new stages
        for folder in (out / LOOP, out / "ablation"):
            shutil.rmtree(folder, ignore_errors=True)
    t_loop = time.perf_counter()
    loop.run(loop_config(cfg, out, sft, counts))
    steps["loop"] = {"seconds": round(time.perf_counter() - t_loop, 1)}
    bar.update()
    stages = stage_metrics(out, cfg, counts)
    final = link_final(out, stages[-1])
    if final is not None:
        stages[-1]["final_link"] = str(final)
    abl = ablation(cfg, out, stages[-1])
    if abl is not None:
        steps["ablation"] = abl
    bar.update()
    path = demo_report.write_report(cfg, out, steps, stages)
    bar.update()
    bar.close()
    log((out / "verdict.txt").read_text().strip())
    log(demo_report.final_model_line(stages[-1], cfg.model))
    log(f"total {time.perf_counter() - t0:.0f} s")
    print(f"report: {path.resolve()}")
    return path
