"""Reward-model probe, step 2c: one head over several layers of the frozen backbone instead of one cut layer.

Two ways, both judged by 5-fold grouped CV on train and by dev before test is looked at (same features, folds and
bootstrap as reward_probe_cv.py):
* "avg": a head per (pooling, layer), each fitted alone, their standardised scores averaged (a fixed-weight linear
  head on the concatenated features);
* "concat": one L2 logistic regression on the concatenated features.

    PYTHONPATH=. python benchmarks/reward_probe_layers.py 512
"""
import sys

import numpy as np
from reward_probe_common import boot, fit, pair_diffs
from sklearn.model_selection import GroupKFold

ML = sys.argv[1] if len(sys.argv) > 1 else "512"
LAYERS = list(range(5, 30, 2))  # layers 6, 8, ..., 30 (1-based)


def load(split):
    return pair_diffs(split, ML, lambda f: f[:, LAYERS])  # X: [pairs, layers, 2, d]


def avg_head(X, C, kinds):
    """Weights over the flattened [layers, 2, d] features: per-(layer, pooling) heads, each scaled so its train
    scores have RMS 1, summed."""
    n, L, P, d = X.shape
    W = np.zeros((L, P, d))
    for li in range(L):
        for k in kinds:
            w = fit(X[:, li, k], C)
            W[li, k] = w / (np.sqrt(((X[:, li, k] @ w) ** 2).mean()) + 1e-9)
    return W.reshape(-1)


tr, trg = load("train")
dv, _ = load("dev")
te, _ = load("test")
folds = list(GroupKFold(5).split(tr, groups=trg))
flat = lambda X: X.reshape(len(X), -1)  # noqa: E731
for name, kinds in [("last", [0]), ("mean", [1]), ("both", [0, 1])]:
    for C in [0.001, 0.003, 0.01]:
        cv = np.mean([((flat(tr[v]) @ avg_head(tr[t], C, kinds)) > 0).mean() for t, v in folds])
        w = avg_head(tr, C, kinds)
        hit = (flat(te) @ w) > 0
        print(f"avg {name:4s} C={C:<6} cv {cv:.3f} dev {((flat(dv) @ w) > 0).mean():.3f} test {hit.mean():.3f} "
              f"{boot(hit)}", flush=True)
for name, kinds in [("last", [0]), ("mean", [1]), ("both", [0, 1])]:
    sel = lambda X, kinds=kinds: flat(X[:, :, kinds])  # noqa: E731
    for C in [0.0003, 0.001]:
        cv = np.mean([((sel(tr[v]) @ fit(sel(tr[t]), C)) > 0).mean() for t, v in folds])
        w = fit(sel(tr), C)
        hit = (sel(te) @ w) > 0
        print(f"concat {name:4s} C={C:<6} cv {cv:.3f} dev {((sel(dv) @ w) > 0).mean():.3f} test {hit.mean():.3f} "
              f"{boot(hit)}", flush=True)
