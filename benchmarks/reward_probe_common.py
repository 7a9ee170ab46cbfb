"""What the reward-model probe scripts (reward_probe_fit.py, reward_probe_cv.py, reward_probe_layers.py,
reward_learning_curve.py) share: the pair differences of the cached features, the test-accuracy bootstrap and the
L2 logistic regression on standardised feature differences."""
import os
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

#: where reward_probe_features.py writes the features and the probe scripts read them: $REWARD_PROBE_DIR, by
#: default runs/reward-probe in the repository
FEATURES = Path(os.environ.get("REWARD_PROBE_DIR") or Path(__file__).resolve().parents[1] / "runs" / "reward-probe")


def features_file(split, ml) -> Path:
    return FEATURES / f"{split}-{ml}.pt"


def pair_diffs(split, ml="512", select=lambda f: f):
    """(better − worse feature differences, the prompt index of each pair) of reward_probe_features.py's
    ``FEATURES/{split}-{ml}.pt``, tied pairs left out; ``select`` picks from each prompt's ``[n_answers, layers, 2, d]``
    features (e.g. one layer and pooling) before the difference."""
    d = torch.load(features_file(split, ml))
    X, G = [], []
    for g, (f, (better, worse, _, tie)) in enumerate(zip(d["feats"], d["meta"])):
        f = select(f)
        for b, w, t in zip(better, worse, tie):
            if not t:
                X.append((f[b].float() - f[w].float()).numpy())
                G.append(g)
    return np.stack(X), np.array(G)


def boot(hits, seed=0):
    """95% bootstrap interval of the mean of 0/1 ``hits`` (1,000 resamples)."""
    rng = np.random.default_rng(seed)
    h = np.asarray(hits, float)
    return np.quantile(h[rng.integers(0, len(h), (1000, len(h)))].mean(1), [.025, .975]).round(3)


def fit(X, C):
    """Head weights from feature differences ``X`` (better − worse): scikit-learn's L2 logistic regression without
    intercept on the standardised, sign-symmetrised differences (the model alignloop's --freeze-backbone head
    fits), mapped back to unstandardised features."""
    Xs = np.concatenate([X, -X])
    sd = Xs.std(0) + 1e-6
    clf = LogisticRegression(C=C, fit_intercept=False, max_iter=3000)
    clf.fit(Xs / sd, np.r_[np.ones(len(X)), np.zeros(len(X))])
    return clf.coef_[0] / sd
