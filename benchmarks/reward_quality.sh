#!/bin/bash
# Reward model acceptance run: default backbone, frozen-backbone warm start on HH harmless train (layer chosen on
# dev), evaluated on test; then the TRL side-by-side. Run from the repository root, under the shared CPU lock:
#   flock /tmp/alignloop-cpu.lock bash benchmarks/reward_quality.sh
set -e
OUT=${OUT:-runs/reward-quality}
PY=${PY:-python}
TRL_PY=${TRL_PY:-/work/venv-trl/bin/python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
/usr/bin/time -f "%e s wall, %M KB" $PY -m alignloop reward train --model smollm2-135m-instruct \
    --data data/hh-harmless/train.jsonl.gz --dev-data data/hh-harmless/dev.jsonl.gz --freeze-backbone \
    --output $OUT --batch-size 16 --seed 0
/usr/bin/time -f "%e s wall" $PY -m alignloop reward eval --model $OUT --data data/hh-harmless/test.jsonl.gz \
    --precision bf16 --output $OUT/eval-test.json
if [ -x "$TRL_PY" ]; then
    /usr/bin/time -f "%e s wall" $TRL_PY benchmarks/reward_vs_trl.py --bf16 | tee $OUT/vs-trl.json
fi
