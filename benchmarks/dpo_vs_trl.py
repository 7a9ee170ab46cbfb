"""alignloop DPO vs TRL 1.16 DPOTrainer, side by side in one run (issue 4).

Same model (smollm2-135m-instruct), the same 64 HH-harmless train pairs (the first that fit max length 512, so
both see the same tokens: tokenised once here and handed to both), batch 8, learning rate 1e-5 with a linear
schedule, 8 steps, file order. First both in fp32 (the loss curves must agree: same mathematics), then alignloop
in its fast modes. Prints pairs/s (reference log-probs included: TRL runs its reference model every step,
alignloop precomputes them once, and that time is counted), the ratio, peak memory, the first eight losses, and
the FLOP floor: 8 x parameters x real tokens / the measured matmul rate (6 for the policy's forward+backward,
2 for the reference forward; real tokens = prompt+chosen and prompt+rejected, no padding).

  python benchmarks/dpo_vs_trl.py --trl-python /path/to/venv-with-trl/bin/python

TRL runs in its own environment (--trl-python: its python, with trl 1.16; needed by the 'trl' mode, which is in
the default --modes); alignloop from this checkout.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def matmul_rate(dtype: torch.dtype, reps: int = 20) -> float:
    """FLOP/s of a model-shaped matmul ([2048 x 576] @ [576 x 1536], SmolLM2-135M's MLP) on this machine."""
    a, b = torch.randn(2048, 576, dtype=dtype), torch.randn(576, 1536, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * 2048 * 576 * 1536 / best


def side(python: str, script: str, args: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    p = subprocess.run([python, str(ROOT / "benchmarks" / script), json.dumps(args)], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode != 0 or not lines:
        sys.exit(f"{script} failed:\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--trl-python", metavar="PATH",
                    help="the python of an environment with trl 1.16 installed (needed by the 'trl' mode)")
    ap.add_argument("--modes", default="trl,fp32,bf16,bf16-lora")
    ap.add_argument("--model", default="smollm2-135m-instruct", help="tiny for a smoke test of the script")
    a = ap.parse_args()
    if "trl" in a.modes.split(","):
        if not a.trl_python:
            ap.error("--trl-python PATH is needed for the 'trl' mode: the python of an environment with trl 1.16 "
                     "(e.g. /path/to/venv-with-trl/bin/python); or leave 'trl' out of --modes")
        if not Path(a.trl_python).is_file():
            ap.error(f"--trl-python {a.trl_python}: no such file")

    from alignloop.data.readers import read_preferences
    from alignloop.models.load import load_causal_lm, resolve_model
    from alignloop.trainers.dpo import tokenize_pairs

    model_dir = str(resolve_model(a.model))
    model, tok = load_causal_lm(model_dir)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    segs, _ = tokenize_pairs(read_preferences(ROOT / "data/hh-harmless/train.jsonl.gz"), tok, a.max_length, "skip")
    segs = segs[: a.pairs]
    work = Path(tempfile.mkdtemp(prefix="dpo-vs-trl-"))
    tokens = work / "pairs.tokens.jsonl"
    with open(tokens, "w") as fh:
        for s in segs:
            fh.write(json.dumps({"prompt_ids": s.prompt_ids, "chosen_ids": s.answers[0],
                                 "rejected_ids": s.answers[1]}) + "\n")
    real = sum(2 * len(s.prompt_ids) + len(s.answers[0]) + len(s.answers[1]) for s in segs)
    shared = sum(len(s) for s in segs)
    steps = a.pairs // a.batch_size
    rates = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    print(f"# {time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores, torch {torch.__version__} threads "
          f"{torch.get_num_threads()}; matmul rate fp32 {rates['fp32'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {rates['bf16'] / 1e9:.0f} GFLOP/s")
    print(f"# {len(segs)} pairs, {real} real tokens (prompt+chosen, prompt+rejected), {shared} with the prompt "
          f"once per pair; {n_params / 1e6:.1f}M parameters; batch {a.batch_size}, {steps} steps, lr {a.lr}")

    common = dict(model=model_dir, tokens=str(tokens), steps=steps, batch_size=a.batch_size, lr=a.lr,
                  max_length=a.max_length)
    runs = {}
    for mode in a.modes.split(","):
        if mode == "trl":
            res = side(a.trl_python, "_trl_dpo_side.py", dict(common, output=str(work / "trl")))
            res["seconds"], res["precision"] = res["train_s"], "fp32"
        else:
            prec = "bf16" if mode.startswith("bf16") else "fp32"
            res = side(sys.executable, "_alignloop_dpo_side.py",
                       dict(common, output=str(work / mode), precision=prec, lora=mode.endswith("lora")))
            res["seconds"], res["precision"] = res["train_s"] + res["reference_s"], prec
        res["pairs_per_s"] = res["pairs"] / res["seconds"]
        runs[mode] = res

    print(f"\n{'run':12s} {'pairs/s':>8s} {'vs TRL':>7s} {'peak MB':>8s} {'floor s':>8s} {'x floor':>8s}  first losses")
    base = runs.get("trl", {}).get("pairs_per_s")
    for mode, r in runs.items():
        floor = 8 * n_params * real / rates[r["precision"]]
        ratio = f"{r['pairs_per_s'] / base:6.2f}x" if base else "    -"
        print(f"{mode:12s} {r['pairs_per_s']:8.3f} {ratio:>7s} {r['peak_rss_mb']:8.0f} {floor:8.1f} "
              f"{r['seconds'] / floor:7.1f}x  {[round(x, 4) for x in r['losses'][:8]]}")
    if "trl" in runs and "fp32" in runs:
        t, al = runs["trl"]["losses"][:8], runs["fp32"]["losses"][:8]
        worst = max(abs(x - y) / abs(x) for x, y in zip(t, al))
        print(f"\nfp32 loss curves: largest relative difference {worst * 100:.3f}% (target < 1%)")
    for mode, r in runs.items():
        if mode != "trl":
            print(f"{mode}: train loop {r['train_s']:.1f} s + reference precompute {r['reference_s']:.1f} s; "
                  f"process wall {r['wall_s']:.1f} s")
    (work / "results.json").write_text(json.dumps(runs, indent=1))
    print(f"# results in {work / 'results.json'}")


if __name__ == "__main__":
    main()
