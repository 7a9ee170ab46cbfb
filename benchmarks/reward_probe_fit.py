"""Reward-model probe, step 2: L2 logistic regressions (scikit-learn) on the cached feature differences, per layer,
last-token vs answer-mean pooling and strength C; prints train / dev / test accuracy and the test 95% bootstrap
interval (1,000 resamples, seed 0). Choose on dev only.

    PYTHONPATH=. python benchmarks/reward_probe_fit.py 512
"""
import sys

import numpy as np
import torch
from reward_probe_common import boot, features_file
from sklearn.linear_model import LogisticRegression

ML = sys.argv[1] if len(sys.argv) > 1 else "512"
def load(split):
    d = torch.load(features_file(split, ML))
    X, L = [], []
    for f, (bt, wr, ch, tie) in zip(d["feats"], d["meta"]):
        for b, w, t in zip(bt, wr, tie):
            if t:
                continue
            X.append((f[b].float() - f[w].float()).numpy())
            L.append(ch[b] - ch[w])
    return np.stack(X), np.array(L)
tr, trl = load("train")
dv, dvl = load("dev")
te, tel = load("test")
print(tr.shape, dv.shape, te.shape)
def run(sel, C, name):
    Xtr = sel(tr)
    Xtr = np.concatenate([Xtr, -Xtr])
    y = np.r_[np.ones(len(tr)), np.zeros(len(tr))]
    sd = Xtr.std(0) + 1e-6
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=3000).fit(Xtr / sd, y)

    def a(X):
        return float(((sel(X) / sd) @ clf.coef_[0] > 0).mean())

    hd = ((sel(te) / sd) @ clf.coef_[0] > 0)
    print(f"{name:28s} C={C:<7} train {a(tr):.3f} dev {a(dv):.3f} test {a(te):.3f} {boot(hd)}", flush=True)
    return a(dv)
res = []
for kind, kn in [(0, "last"), (1, "mean")]:
    for layer in [8, 12, 16, 20, 24, 29]:
        for C in [0.001, 0.01, 0.1]:
            res.append((run(lambda X, layer=layer, kind=kind: X[:, layer, kind], C, f"{kn} L{layer+1}"), kn, layer, C))
for C in [0.0003, 0.001, 0.01]:
    run(lambda X: X[:, 10:, :, :].reshape(len(X), -1), C, "all L11-30 both")
    run(lambda X: X[:, ::3, 1].reshape(len(X), -1), C, "mean every3rd")
