"""alignloop reward training vs TRL's RewardTrainer, side by side in one run.

Same model (the same initial weights, head included), the same 64 HH pairs (chosen among those that fit in
max_length, since TRL silently drops longer ones and alignloop must not), the same token ids (TRL gets them
pre-tokenised as chosen_ids / rejected_ids), the same order (TRL's sampler set to sequential over alignloop's
epoch-0 order), max length, batch size, learning rate, fp32. Prints pairs/s for both (time inside the training
steps only, setup excluded), their ratio and both first-step losses.

TRL is not an alignloop dependency: the benchmark runs under the python of an environment with trl 1.16 installed
beside torch 2.13 (``--trl-python``: the script re-runs itself there, importing alignloop from the repository;
without the flag, the current python must import trl):

    python3 -m venv /path/to/venv-with-trl && /path/to/venv-with-trl/bin/pip install torch==2.13.0 trl==1.16.0
    python benchmarks/reward_vs_trl.py --trl-python /path/to/venv-with-trl/bin/python [--model tiny] [--pairs 64]
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def pick_pairs(rm, n: int, max_length: int) -> list[dict]:
    """The first n training pairs whose prompt + longer answer fit in max_length (no truncation needed)."""
    from alignloop.data.batching import SkipReport
    from alignloop.data.readers import read_preferences

    src = ROOT / "data" / "hh-harmless" / "train.jsonl.gz"
    with gzip.open(src, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    prefs = read_preferences(src)
    out = []
    for row, p in zip(rows, prefs):
        report = SkipReport()
        g = rm.encode(p.prompt, [p.chosen, p.rejected], len(out), max_length, report, policy="skip")
        if g is not None and not report.truncated:
            out.append({"row": row, "chosen_ids": g.prompt_ids + g.answers[0],
                        "rejected_ids": g.prompt_ids + g.answers[1]})
        if len(out) == n:
            break
    return out


def run_alignloop(args, pairs, folder: Path, precision: str) -> dict:
    from alignloop.trainers.config import RewardTrainConfig
    from alignloop.trainers.engine import read_metrics
    from alignloop.trainers.reward import run_train

    data = folder / "pairs.jsonl"
    data.write_text("".join(json.dumps(p["row"]) + "\n" for p in pairs))
    out = folder / f"alignloop-{precision}"
    cfg = RewardTrainConfig.from_dict(dict(
        model=args.model, data=str(data), output=str(out), max_steps=len(pairs) // args.batch_size,
        freeze_backbone=False, pooling="last",  # full fine-tuning read at the last token, as TRL's RewardTrainer
        batch_size=args.batch_size, max_length=args.max_length, learning_rate=args.learning_rate,
        lr_schedule="constant", precision=precision, seed=args.seed, norm_samples=8, truncation="error")).validate()
    run_train(cfg)
    rows = [r for r in read_metrics(out / "metrics.jsonl") if "pairs_per_s" in r]
    step_seconds = [args.batch_size / r["pairs_per_s"] for r in rows]
    return {"first_step_loss": rows[0]["loss"], "pairs_per_s": len(pairs) / sum(step_seconds),
            "pairs_per_s_after_first": (len(pairs) - args.batch_size) / sum(step_seconds[1:])}


def run_trl(args, pairs, order: list[int], folder: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RewardConfig, RewardTrainer

    from alignloop.models.reward_model import build_reward_model

    rm = build_reward_model(args.model, num_heads=1, seed=args.seed, max_length=args.max_length)
    ds = Dataset.from_list([{"chosen_ids": pairs[i]["chosen_ids"], "rejected_ids": pairs[i]["rejected_ids"]}
                            for i in order])

    class Timer(TrainerCallback):
        def __init__(self):
            self.steps: list[float] = []

        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            self.steps.append(time.perf_counter() - self.t)

    losses: list[float] = []

    class Losses(TrainerCallback):
        def on_log(self, a, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                losses.append(float(logs["loss"]))

    timer = Timer()
    cfg = RewardConfig(output_dir=str(folder / "trl"), per_device_train_batch_size=args.batch_size,
                       max_length=args.max_length, learning_rate=args.learning_rate, lr_scheduler_type="constant",
                       num_train_epochs=1, logging_steps=1, save_strategy="no", report_to=[], seed=args.seed,
                       train_sampling_strategy="sequential", bf16=False, use_cpu=True, disable_dropout=True,
                       dataloader_num_workers=0)
    trainer = RewardTrainer(model=rm.model, args=cfg, train_dataset=ds, processing_class=rm.tokenizer,
                            callbacks=[timer, Losses()])
    assert len(trainer.train_dataset) == len(pairs), "TRL dropped pairs"
    trainer.train()
    return {"first_step_loss": losses[0], "pairs_per_s": len(pairs) / sum(timer.steps),
            "pairs_per_s_after_first": (len(pairs) - args.batch_size) / sum(timer.steps[1:])}


def run_under_trl_python(ap: argparse.ArgumentParser, trl_python: str | None) -> None:
    """Re-run this script under ``--trl-python`` (and exit with its status), or check that trl imports here."""
    if trl_python:
        if not Path(trl_python).is_file():
            ap.error(f"--trl-python {trl_python}: no such file")
        rest, drop = [], False
        for x in sys.argv[1:]:
            if not drop and x != "--trl-python" and not x.startswith("--trl-python="):
                rest.append(x)
            drop = x == "--trl-python"
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        sys.exit(subprocess.run([trl_python, __file__, *rest], env=dict(os.environ, PYTHONPATH=path)).returncode)
    if importlib.util.find_spec("trl") is None:
        ap.error("trl is not importable by this python: pass --trl-python PATH, the python of an environment with "
                 "trl 1.16 and torch 2.13 (e.g. --trl-python /path/to/venv-with-trl/bin/python)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap.add_argument("--trl-python", metavar="PATH",
                    help="the python of an environment with trl 1.16 (this script re-runs itself there)")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--learning-rate", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="also time alignloop with bf16 autocast")
    args = ap.parse_args()
    run_under_trl_python(ap, args.trl_python)
    torch.manual_seed(args.seed)

    from alignloop.data.batching import batches
    from alignloop.models.reward_model import build_reward_model

    rm = build_reward_model(args.model, num_heads=1, seed=args.seed, max_length=args.max_length)
    pairs = pick_pairs(rm, args.pairs, args.max_length)
    del rm
    order = [i for b in batches(len(pairs), args.batch_size, args.seed, 0) for i in b]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        results = {"alignloop_fp32": run_alignloop(args, pairs, folder, "fp32"),
                   "trl_fp32": run_trl(args, pairs, order, folder)}
        if args.bf16:
            results["alignloop_bf16"] = run_alignloop(args, pairs, folder, "bf16")
    a, t = results["alignloop_fp32"], results["trl_fp32"]
    tokens = sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in pairs)
    summary = {"model": args.model, "pairs": len(pairs), "tokens": tokens, "batch_size": args.batch_size,
               "max_length": args.max_length, **results,
               "speedup_fp32": round(a["pairs_per_s"] / t["pairs_per_s"], 2),
               "first_step_loss_diff": abs(a["first_step_loss"] - t["first_step_loss"]),
               "threads": torch.get_num_threads()}
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
