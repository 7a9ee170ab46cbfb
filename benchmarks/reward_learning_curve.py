"""Reward-model learning curve: how test-level accuracy grows with the number of labelled training pairs.

Question (issue 3): is the default backbone's reward model limited by the 1,435 HH harmless training pairs? Uses
the cached frozen features of reward_probe_features.py (runs/reward-probe/{split}-512.pt) and alignloop's default frozen
recipe (answer-mean pooling at layer 19, L2 logistic regression with C 0.01 ≈ --head-weight-decay 0.03). For n in
180, 360, 720 and 1,435 training pairs, 20 random subsets each (seed 0): fit a head (and a bagged ensemble of 8
heads, --ensemble 8's recipe), score the 377 held-out pairs (dev + test: nothing is chosen here, so both serve as
one larger evaluation set), and fit accuracy = a + b·log2(n). The 95% interval of b resamples the held-out pairs
(1,000 resamples). Prints one JSON line per size and one for the fit.

    PYTHONPATH=. python benchmarks/reward_probe_features.py 512     # ~14 min on 2 cores, if runs/reward-probe is empty
    PYTHONPATH=. python benchmarks/reward_learning_curve.py          # ~1 min
"""
import json
import sys

import numpy as np

sys.path.insert(0, "benchmarks")
from reward_probe_common import fit, pair_diffs  # noqa: E402

LAYER, POOL, C, DRAWS, BAG = 18, 1, 0.01, 20, 8  # layer 19 of 30 (0-based 18), answer-mean pooling


def diffs(split):
    return pair_diffs(split, "512", lambda f: f[:, LAYER, POOL])[0]


train, dev = diffs("train"), diffs("dev")
n_dev = len(dev)
held = np.concatenate([dev, diffs("test")])  # the first n_dev rows are dev, the rest test
rng = np.random.default_rng(0)
sizes = [180, 360, 720, len(train)]
hits = {}  # (size, kind) -> [draws, n_held] 0/1 correct
for n in sizes:
    single, bagged = [], []
    for _ in range(DRAWS if n < len(train) else 1):  # the whole train set has one subset
        X = train[rng.choice(len(train), n, replace=False)]
        single.append(held @ fit(X, C) > 0)
        votes = np.mean([held @ fit(X[rng.integers(0, n, n)], C) for _ in range(BAG)], 0)
        bagged.append(votes > 0)
    hits[n, "single"], hits[n, "bagged8"] = np.array(single, float), np.array(bagged, float)
    row = {"train_pairs": n, "draws": len(single), "held_out_pairs": len(held)}
    for kind in ("single", "bagged8"):
        h = hits[n, kind]
        row.update({kind: round(h.mean(), 4), f"{kind}_dev": round(h[:, :n_dev].mean(), 4),
                    f"{kind}_test": round(h[:, n_dev:].mean(), 4)})
    print(json.dumps(row), flush=True)


def slope(cols):
    x = np.log2(sizes)
    y = [hits[n, "single"][:, cols].mean() for n in sizes]
    return np.polyfit(x, y, 1)  # [b, a]


b, a = slope(slice(None))
boot = np.array([slope(rng.integers(0, len(held), len(held)))[0] for _ in range(1000)])
lo, hi = np.quantile(boot, [0.025, 0.975])
# test alone sits below dev+test (dev chose the layer): extrapolate from the test level of the full train set
test_full = hits[len(train), "single"][:, n_dev:].mean()
need = [int(round(len(train) * 2 ** ((0.65 - test_full) / v))) if v > 0 else None for v in (b, hi, lo)]
print(json.dumps({"fit": "held-out accuracy = a + b*log2(train_pairs)", "a": round(a, 4), "b_per_doubling": round(b, 4),
                  "b_ci95": [round(lo, 4), round(hi, 4)], "test_at_full_train": round(test_full, 4),
                  "train_pairs_for_0.65_on_test_if_the_line_held": need[0],
                  "same_at_b_ci95_ends": need[1:]}))
