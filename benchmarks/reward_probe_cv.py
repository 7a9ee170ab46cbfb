"""Reward-model probe, step 2b: choose the frozen-feature recipe by grouped k-fold cross-validation on the train
split instead of by the 194-pair dev split alone, then report test once for the chosen recipe.

Reads the features of reward_probe_features.py (runs/reward-probe/{split}-{max_length}.pt). For every candidate
(pooling, layer, L2 strength C, with/without the answer's own log-likelihood), fits scikit-learn's L2 logistic
regression on standardised feature differences (the same model alignloop's --freeze-backbone head fits) and prints
5-fold CV accuracy on train (folds grouped by prompt), dev accuracy, and test accuracy with its 95% bootstrap
interval (1,000 resamples, seed 0). The selection rule is fixed before looking at test: highest mean of CV and dev
accuracy.

    PYTHONPATH=. python benchmarks/reward_probe_cv.py 512
"""
import sys

import numpy as np
import torch
from reward_probe_common import boot, features_file, fit
from sklearn.model_selection import GroupKFold

ML = sys.argv[1] if len(sys.argv) > 1 else "512"


def load(split):
    d = torch.load(features_file(split, ML))
    X, LP, L, G = [], [], [], []
    for g, (f, lp, (bt, wr, ch, tie)) in enumerate(zip(d["feats"], d["logp"], d["meta"])):
        for b, w, t in zip(bt, wr, tie):
            if t:
                continue
            X.append((f[b].float() - f[w].float()).numpy())
            LP.append((lp[b] - lp[w]).numpy())
            L.append(np.log1p(ch[b]) - np.log1p(ch[w]))
            G.append(g)
    return np.stack(X), np.stack(LP), np.array(L)[:, None], np.array(G)


tr, trlp, trl, trg = load("train")
dv, dvlp, dvl, _ = load("dev")
te, telp, tel, _ = load("test")
print("pairs", len(tr), len(dv), len(te), flush=True)
folds = list(GroupKFold(5).split(tr, groups=trg))


def design(X, LP, L, layer, kind, extra):
    parts = [X[:, layer, kind]]
    if "lp" in extra:
        parts.append(LP)
    if "len" in extra:
        parts.append(L)
    return np.concatenate(parts, 1)


rows = []
for kind, kn in [(0, "last"), (1, "mean")]:
    for layer in range(5, 30, 2):
        for extra in ["", "lp"]:
            A, D, T = (design(*s, layer, kind, extra) for s in ((tr, trlp, trl), (dv, dvlp, dvl), (te, telp, tel)))
            for C in [0.003, 0.01, 0.03]:
                cv = np.mean([((A[v] @ fit(A[t], C)) > 0).mean() for t, v in folds])
                w = fit(A, C)
                dva, hit = float(((D @ w) > 0).mean()), (T @ w) > 0
                rows.append((cv, dva, float(hit.mean()), boot(hit), kn, layer + 1, extra, C))
                print(f"{kn} L{layer + 1:<2} {extra:3s} C={C:<6} cv {cv:.3f} dev {dva:.3f} test {hit.mean():.3f} "
                      f"{boot(hit)}", flush=True)
print("log-likelihood alone (sum, mean):", [round(float(((te_ @ fit(a_, 1.0)) > 0).mean()), 3)
                                          for a_, te_ in ((trlp, telp),)])
for name, key in [("cv", lambda r: r[0]), ("dev", lambda r: r[1]), ("cv+dev", lambda r: (r[0] + r[1]) / 2)]:
    b = max(rows, key=key)
    print(f"chosen by {name}: {b[4]} L{b[5]} {b[6] or '-'} C={b[7]}: cv {b[0]:.3f} dev {b[1]:.3f} "
          f"test {b[2]:.3f} {b[3]}")
