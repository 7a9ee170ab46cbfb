#!/usr/bin/env bash
# DPO and PPO throughput of the default model (SmolLM2-135M-Instruct, full weights) on one device, for the
# "Distributed and GPU (issue 9)" section of benchmarks/README.md. The same commands on the CPU and on a GPU:
#   bash benchmarks/dist_gpu.sh OUTDIR PRECISION DPO_STEPS PPO_STEPS
# Prints one JSON line per run: mean tokens/s over the steps after the first (the first includes warm-up).
set -euo pipefail
out=${1:-runs/dist-bench}; prec=${2:-bf16}; dpo_steps=${3:-20}; ppo_steps=${4:-5}
AL="${PYTHON:-python3} -m alignloop"
$AL dpo --model smollm2-135m-instruct --data data/hh-harmless/train.jsonl.gz --limit 64 --output "$out/dpo" \
  --batch-size 8 --max-length 512 --max-steps "$dpo_steps" --precision "$prec" --learning-rate 5e-7 \
  --seed 0
$AL ppo --model smollm2-135m-instruct --reward python:alignloop.rewards:financebench_numeric \
  --prompts data/financebench/questions.jsonl --output "$out/ppo" --batch-size 8 --max-new-tokens 64 \
  --max-prompt-length 320 --max-steps "$ppo_steps" --precision "$prec" --learning-rate 1e-6 --seed 0
${PYTHON:-python3} - "$out" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
for stage, keys in (("dpo", ("tokens_per_s", "pairs_per_s")),
                    ("ppo", ("tokens/generated_per_s", "time/generate", "time/train", "time/step"))):
    rows = [json.loads(x) for x in (out / stage / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if keys[0] in r]
    use = rows[1:] or rows
    print(json.dumps({"stage": stage, "steps": len(rows), **{k: round(sum(r[k] for r in use) / len(use), 3)
                                                             for k in keys}}))
PY
