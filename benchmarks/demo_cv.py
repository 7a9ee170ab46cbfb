"""k-fold cross-validation of the demo's shared settings on the 70 *training* questions only.

The 30 held-out questions (``heldout_ids``) are the demo's final test: a setting is chosen here, on training
questions, before the held-out split is read. For each value of the setting under test, the training questions are
dealt into ``--folds`` folds (stratified by :func:`alignloop.evaluate.qa.context_class`, seeded); for each fold the
demo's SFT (same steps, learning rate, LoRA) trains on the other folds' demonstrations and answers the fold's
questions greedily; the graded answers are pooled over folds, so every training question is answered once by a model
that never saw it. The base model answers all of them once, for the paired comparison.

    python benchmarks/demo_cv.py --output runs/demo-cv --setting sft_targets=gold,grounded

Prints, per value: correct / incorrect / refusal with 95% Wilson intervals, the in-context questions' correct and
refusal counts, and the exact McNemar p of "incorrect" against the base model; writes ``cv.json``. Resumable: every
fold's SFT and answers are ``run_once`` steps under ``--output``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sys
from collections import defaultdict
from pathlib import Path

import alignloop
from alignloop.core.files import write_json, write_jsonl
from alignloop.evaluate.metrics import mcnemar_exact, rate_ci
from alignloop.evaluate.qa import IN_CONTEXT
from alignloop.pipelines.config import DemoConfig
from alignloop.pipelines.demo import log, qa_eval, split_data
from alignloop.pipelines.resume import run_once


def folds_of(rows: list[dict], k: int, seed: int) -> list[list[str]]:
    """Ids dealt into ``k`` folds, stratified by context class: each class shuffled with ``seed``, dealt in turn."""
    by_class: dict[str, list[str]] = defaultdict(list)
    for r in sorted(rows, key=lambda r: r["id"]):
        by_class[r["context_class"]].append(r["id"])
    rng, out, turn = random.Random(seed), [[] for _ in range(k)], 0
    for cls in sorted(by_class):
        ids = by_class[cls]
        rng.shuffle(ids)
        for i in ids:
            out[turn % k].append(i)
            turn += 1
    return out


def grades(folder: Path) -> dict[str, dict]:
    return {r["id"]: r for r in map(json.loads, (folder / "grades.jsonl").read_text().splitlines())}


def summary(rows: dict[str, dict], base: dict[str, dict]) -> dict:
    ids = sorted(rows)
    g = [rows[i]["grade"] for i in ids]
    in_ctx = [rows[i]["grade"] for i in ids if rows[i]["context_class"] == IN_CONTEXT]
    base_in_ctx = [base[i]["grade"] for i in ids if base[i]["context_class"] == IN_CONTEXT]
    return {
        **{k: rate_ci([x == k for x in g]) for k in ("correct", "incorrect", "refusal")},
        "in_context": {"n": len(in_ctx), "correct": in_ctx.count("correct"), "refusal": in_ctx.count("refusal"),
                       "base_correct": base_in_ctx.count("correct")},
        "mcnemar_incorrect_vs_base": mcnemar_exact([base[i]["grade"] == "incorrect" for i in ids],
                                                   [rows[i]["grade"] == "incorrect" for i in ids]),
        "llmware_points": sum(rows[i]["points"] for i in ids),
    }


def fmt(name: str, s: dict) -> str:
    def c(k: str) -> str:
        r = s[k]
        return f"{r['k']}/{r['n']} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
    ic = s.get("in_context", {})
    p = s.get("mcnemar_incorrect_vs_base", {}).get("p_value")
    return (f"| {name} | {c('correct')} | {c('incorrect')} | {c('refusal')} | "
            f"{ic.get('correct', '–')}/{ic.get('n', '–')} correct, {ic.get('refusal', '–')} refusals | "
            f"{s['llmware_points']:+.1f} | {'–' if p is None else f'{p:.3g}'} |")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--output", required=True, help="folder for every fold's SFT, answers and cv.json")
    ap.add_argument("--setting", default="sft_targets=gold,grounded",
                    help="one DemoConfig field and the values to compare: name=v1,v2")
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                    help="another DemoConfig field held at VALUE for every value compared (repeatable)")
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None, help="only the first N questions (a quick check)")
    ap.add_argument("--model", default=DemoConfig.model)
    ap.add_argument("--data", default=DemoConfig.data, help="FinanceBench-style questions (default: the demo's)")
    args = ap.parse_args(argv)
    name, values = args.setting.split("=", 1)
    out = Path(args.output)
    result: dict = {"setting": name, "folds": args.folds, "seed": args.seed, "values": {}}

    def typed(base: DemoConfig, field: str, value: str) -> object:
        kind = type(getattr(base, field))
        return value if kind is str else (value.lower() in ("1", "true", "yes") if kind is bool else kind(value))

    def cfg_for(value: str) -> DemoConfig:
        base = DemoConfig(model=args.model, data=args.data, seed=args.seed, output=str(out), limit=args.limit)
        fixed = dict(item.split("=", 1) for item in args.set)
        base = dataclasses.replace(base, **{k: typed(base, k, v) for k, v in fixed.items()})
        return dataclasses.replace(base, **{name: typed(base, name, value)}).validate()

    # the base model answers every training question once (its data does not depend on the setting's value when
    # the setting only changes the SFT targets; for a data setting the base answers its own split)
    for value in values.split(","):
        cfg = cfg_for(value)
        vdir = out / f"{name}={value}"
        run_once(vdir / "data", lambda f, cfg=cfg: split_data(cfg, f), log=log)
        train = [json.loads(line) for line in (vdir / "data" / "train.jsonl").read_text().splitlines()]
        # every demonstration of a question (a repeated one, its contrastive twin "<id>#without") goes with it
        sft_rows = [json.loads(line) for line in (vdir / "data" / "sft.jsonl").read_text().splitlines()]
        run_once(out / "base", lambda f, cfg=cfg, vdir=vdir: qa_eval(
            cfg, cfg.model, vdir / "data" / "train.jsonl", f, "base model (training questions)"), log=log)
        base_rows = grades(out / "base")
        pooled: dict[str, dict] = {}
        for k, fold in enumerate(folds_of(train, args.folds, args.seed)):
            fdir = vdir / f"fold_{k}"
            held = set(fold)
            write_jsonl(fdir / "sft.jsonl", [r for r in sft_rows if r["id"].split("#")[0] not in held])
            write_jsonl(fdir / "eval.jsonl", [r for r in train if r["id"] in held])
            sft = run_once(fdir / "sft", lambda f, fdir=fdir, cfg=cfg: str(alignloop.train(
                "sft", model=cfg.model, data=str(fdir / "sft.jsonl"), output=str(f), lora=True,
                max_steps=cfg.sft_steps, batch_size=cfg.batch_size, learning_rate=cfg.sft_learning_rate,
                max_length=cfg.max_length, warmup_steps=2, seed=cfg.seed, log_every=5, db=None)), log=log)["result"]
            run_once(fdir / "eval", lambda f, fdir=fdir, sft=sft, cfg=cfg, k=k, value=value: qa_eval(
                cfg, sft, fdir / "eval.jsonl", f, f"{name}={value} fold {k}"), log=log)
            pooled.update(grades(fdir / "eval"))
        result["values"][value] = summary(pooled, base_rows)
        result["base"] = summary(base_rows, base_rows)
    write_json(out / "cv.json", result)
    print("| model | correct | incorrect | refusal | in-context questions | llmware points | McNemar p (incorrect) |")
    print("| --- | --- | --- | --- | --- | ---: | ---: |")
    print(fmt("base model", result["base"]))
    for value, s in result["values"].items():
        print(fmt(f"SFT, {name}={value}", s))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
