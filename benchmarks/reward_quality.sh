#!/bin/bash
# Reward model acceptance run: default backbone, frozen-backbone warm start on HH harmless train (layer chosen on
# dev), evaluated on test; then the TRL side-by-side. Run from the repository root:
#   bash benchmarks/reward_quality.sh --trl-python /path/to/venv-with-trl/bin/python
# --trl-python (or TRL_PY=...) is the python of an environment with trl 1.16 and torch 2.13 (TRL is not an
# alignloop dependency); --skip-trl leaves the side-by-side out.
set -e
OUT=${OUT:-runs/reward-quality}
PY=${PY:-python}
TRL_PY=${TRL_PY:-}
SKIP_TRL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --trl-python) TRL_PY=${2:?--trl-python needs a PATH}; shift 2 ;;
        --trl-python=*) TRL_PY=${1#--trl-python=}; shift ;;
        --skip-trl) SKIP_TRL=1; shift ;;
        *) echo "reward_quality.sh: unknown argument $1 (expected --trl-python PATH or --skip-trl)" >&2; exit 2 ;;
    esac
done
if [ "$SKIP_TRL" = 0 ]; then
    if [ -z "$TRL_PY" ]; then
        echo "reward_quality.sh: --trl-python PATH (or TRL_PY=PATH) is needed for the TRL side-by-side: the python" \
             "of an environment with trl 1.16, e.g. /path/to/venv-with-trl/bin/python; or pass --skip-trl" >&2
        exit 2
    fi
    if [ ! -x "$TRL_PY" ]; then
        echo "reward_quality.sh: --trl-python $TRL_PY: not an executable file" >&2
        exit 2
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
/usr/bin/time -f "%e s wall, %M KB" $PY -m alignloop reward train --model smollm2-135m-instruct \
    --data data/hh-harmless/train.jsonl.gz --dev-data data/hh-harmless/dev.jsonl.gz --freeze-backbone \
    --output $OUT --batch-size 16 --seed 0
/usr/bin/time -f "%e s wall" $PY -m alignloop reward eval --model $OUT --data data/hh-harmless/test.jsonl.gz \
    --precision bf16 --output $OUT/eval-test.json
if [ "$SKIP_TRL" = 0 ]; then
    /usr/bin/time -f "%e s wall" "$TRL_PY" benchmarks/reward_vs_trl.py --bf16 | tee $OUT/vs-trl.json
fi
