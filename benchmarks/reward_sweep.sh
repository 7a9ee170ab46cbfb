#!/usr/bin/env bash
# Reward-model recipes for issue 3, chosen on dev only: each candidate is trained on the HH harmless train split
# with the dev split for its own choices, then evaluated on dev and on test. The rule fixed before the run: the
# candidate with the highest dev accuracy (`reward eval` on dev) is the recipe; test is reported for every row so
# the table shows how much dev and test disagree, but test chooses nothing.
#   bash benchmarks/reward_sweep.sh OUTDIR [NAME ...]      # no NAME: every candidate
# MODEL (default smollm2-135m-instruct), PRECISION (default fp32: faster than bf16 autocast for this 135M model on
# a GPU: benchmarks/README.md, "One GPU"), EXTRA (more flags for every run) and PYTHON may be set in the
# environment. Prints one JSON line per candidate.
set -euo pipefail
out=${1:?OUTDIR}; shift; mkdir -p "$out"
PY=${PYTHON:-python3}
model=${MODEL:-smollm2-135m-instruct}
common=(--model "$model" --data data/hh-harmless/train.jsonl.gz --dev-data data/hh-harmless/dev.jsonl.gz
        --max-length 512 --precision "${PRECISION:-fp32}" --seed 0 --batch-size 16 ${EXTRA:-})
lora_mean=(--no-freeze-backbone --lora --warm-start --pooling mean)
declare -A recipe=(
  [frozen-mean-l19]="--freeze-backbone --pooling mean --backbone-layers 19"
  [frozen-mean-l19-ens8]="--freeze-backbone --pooling mean --backbone-layers 19 --ensemble 8"
  [lora-mean-l19-lr1e-4-e2]="${lora_mean[*]} --backbone-layers 19 --learning-rate 1e-4 --num-epochs 2"
  [lora-mean-l19-lr3e-5-e3]="${lora_mean[*]} --backbone-layers 19 --learning-rate 3e-5 --num-epochs 3"
  [lora-mean-l30-lr1e-4-e2]="${lora_mean[*]} --learning-rate 1e-4 --num-epochs 2"
  [lora-mean-l19-lr1e-4-e2-ens5]="${lora_mean[*]} --backbone-layers 19 --learning-rate 1e-4 --num-epochs 2 --ensemble 5"
  [full-mean-l19-lr5e-6-e2]="--no-freeze-backbone --warm-start --pooling mean --backbone-layers 19 --learning-rate 5e-6 --num-epochs 2"
)
order=(frozen-mean-l19 frozen-mean-l19-ens8 lora-mean-l19-lr1e-4-e2 lora-mean-l19-lr3e-5-e3 lora-mean-l30-lr1e-4-e2
       lora-mean-l19-lr1e-4-e2-ens5 full-mean-l19-lr5e-6-e2)
names=("$@"); [ ${#names[@]} -gt 0 ] || names=("${order[@]}")
for name in "${names[@]}"; do
  [ -n "${recipe[$name]+x}" ] || { echo "unknown candidate: $name (one of: ${order[*]})" >&2; exit 2; }
  dir="$out/$name"
  t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  $PY -m alignloop reward train "${common[@]}" ${recipe[$name]} --output "$dir" --eval-every 45 > "$dir.log" 2>&1 \
    || { tail -20 "$dir.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  for split in dev test; do
    $PY -m alignloop reward eval --model "$dir" --data "data/hh-harmless/$split.jsonl.gz" --precision fp32 \
      --output "$dir/eval-$split.json" >> "$dir.log" 2>&1 || { tail -20 "$dir.log" >&2; exit 1; }
  done
  $PY - "$dir" "$name" "$t0" "$t1" "${recipe[$name]}" <<'PY'
import json, sys
from pathlib import Path
d, name, t0, t1, flags = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
ev = {s: json.loads((d / f"eval-{s}.json").read_text()) for s in ("dev", "test")}
print(json.dumps({"name": name, "flags": flags, "train_s": round(t1 - t0, 1),
                  "dev": ev["dev"]["accuracy"], "test": ev["test"]["accuracy"],
                  "test_ci": ev["test"]["accuracy_ci95"], "test_length_baseline": ev["test"]["length_baseline"],
                  "test_ece": ev["test"]["ece"]}), flush=True)
PY
done
