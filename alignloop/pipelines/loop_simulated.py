"""The loop's simulated mode: labels already known (the HH pairs) are revealed in the order a strategy picks them.

Its reward model is an ensemble of linear Bradley-Terry heads on frozen sentence-encoder features
(all-MiniLM-L6-v2, cached on disk once): each member is a logistic regression on feature differences
φ(prompt, chosen) - φ(prompt, rejected), trained on its own bootstrap resample. Cheap enough to run 8 stages x
2 strategies x several seeds on a CPU in minutes. The features and the head ensemble live here because nothing
else in alignloop uses them (the trained reward models read their folders through ``alignloop.models``).
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alignloop.core.config import ConfigError
from alignloop.core.files import atomic_path, write_jsonl
from alignloop.core.paths import cache_dir
from alignloop.data.readers import read_preferences
from alignloop.evaluate.tables import write_csv
from alignloop.pipelines.config import LoopConfig
from alignloop.pipelines.loop_report import log, stage_dir, write_stage_json
from alignloop.pipelines.resume import run_once

# --------------------------------------------------------------------------------------------------
# Features: a frozen sentence encoder, cached on disk
# --------------------------------------------------------------------------------------------------


def pair_text(prompt: Any, response: str) -> str:
    """What the encoder reads: the conversation so far and the response (the prompt's last turns fit first)."""
    return f"{prompt.text[-1500:]}\n\nassistant: {response}"


def encode(texts: Sequence[str], encoder: str, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (how all-MiniLM-L6-v2 was trained), cached by content."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModel, AutoTokenizer

    from alignloop.models.reward_model import encoder_path

    key = hashlib.sha256(json.dumps([encoder, max_length, list(texts)]).encode()).hexdigest()[:24]
    cache = cache_dir("features") / f"{key}.npy"
    if cache.exists():
        return np.load(cache)
    path = str(encoder_path(encoder) or encoder)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    # the encoder reads the *end* of the text (the response), so truncate from the left
    tok.truncation_side = "left"
    out = []
    with torch.no_grad():
        for s in tqdm(range(0, len(texts), batch_size), desc="encode", file=sys.stderr, unit="batch"):
            b = tok(list(texts[s:s + batch_size]), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
    with atomic_path(cache) as tmp, open(tmp, "wb") as fh:
        np.save(fh, feats)
    return feats


def pair_features(path: str, encoder: str, max_length: int, limit: int | None) -> tuple[list[str], np.ndarray]:
    """(ids, φ(chosen) - φ(rejected)) for a preference file; ids are the rows' ``id`` or line numbers."""
    prefs = read_preferences(path)[: limit or None]
    ids = [str(p.meta.get("id", p.meta.get("_where", n))) for n, p in enumerate(prefs)]
    texts = [pair_text(p.prompt, p.chosen) for p in prefs] + [pair_text(p.prompt, p.rejected) for p in prefs]
    f = encode(texts, encoder, max_length)
    return ids, f[: len(prefs)] - f[len(prefs):]


# --------------------------------------------------------------------------------------------------
# The head ensemble (simulated mode's reward model)
# --------------------------------------------------------------------------------------------------


class HeadEnsemble:
    """Linear Bradley-Terry heads on frozen features: P(a > b) = σ(w·(φa - φb)), one per bootstrap resample.

    sklearn's logistic regression fits each head (an exact convex solver: no learning rate to tune); the pairs
    are symmetrised ((d, 1) and (-d, 0)) so no intercept is needed and the head is a pure reward difference."""

    def __init__(self, members: int, c: float, seed: int):
        self.members, self.c, self.seed = members, c, seed
        self.weights: np.ndarray | None = None

    def fit(self, diffs: np.ndarray) -> "HeadEnsemble":
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(self.seed)
        ws = []
        for _ in range(self.members):
            idx = rng.integers(0, len(diffs), len(diffs))
            x = np.concatenate([diffs[idx], -diffs[idx]])
            y = np.concatenate([np.ones(len(idx)), np.zeros(len(idx))])
            clf = LogisticRegression(C=self.c, fit_intercept=False, max_iter=1000)
            clf.fit(x, y)
            ws.append(clf.coef_[0])
        self.weights = np.stack(ws)
        return self

    def margins(self, diffs: np.ndarray) -> np.ndarray:
        """(members, items) reward margins r(a) - r(b)."""
        assert self.weights is not None
        return self.weights @ diffs.T

    def accuracy(self, diffs: np.ndarray) -> float:
        return float((self.margins(diffs).mean(0) > 0).mean())

    def uncertainty(self, diffs: np.ndarray) -> np.ndarray:
        return self.margins(diffs).std(0)


def next_picks(strategy: str, picked: list[int], n_new: int, pool_size: int, seed: int,
               model: HeadEnsemble | None, diffs: np.ndarray) -> list[int]:
    """The next ``n_new`` pool indices in the strategy's order (never one already picked)."""
    taken = set(picked)
    rest = np.array([i for i in range(pool_size) if i not in taken], dtype=int)
    if strategy == "random" or model is None:
        # one fixed shuffle of the whole pool per seed: random's picks are a prefix of it at every stage
        order = np.random.default_rng(seed).permutation(pool_size)
        return [int(i) for i in order if int(i) not in taken][:n_new]
    u = model.uncertainty(diffs[rest])
    return [int(i) for i in rest[np.argsort(-u, kind="stable")][:n_new]]


# --------------------------------------------------------------------------------------------------
# The stages
# --------------------------------------------------------------------------------------------------


def simulated_stage(cfg: LoopConfig, folder: Path, strategy: str, seed: int, n: int, picked: list[int],
                    model: HeadEnsemble | None, pool_ids: list[str], pool: np.ndarray, dev_ids: list[str],
                    dev: np.ndarray, test: np.ndarray | None) -> dict[str, Any]:
    """Stage ``n``: pick up to ``n`` labels, fit the ensemble, score dev (and test). Writes ``submission.csv``
    (``id``, ``answer``: which answer of each dev pair the ensemble prefers), ``grades.jsonl`` (its margin and
    whether that is the known choice), ``labels.json`` and ``metrics.json``."""
    t0 = time.perf_counter()
    picked = picked + next_picks(strategy, picked, n - len(picked), len(pool_ids), seed, model, pool)
    model = HeadEnsemble(cfg.ensemble, cfg.l2, seed * 1000 + n).fit(pool[picked])
    margins = model.margins(dev).mean(0)
    m: dict[str, Any] = {"strategy": strategy, "seed": seed, "labels": n, "dev_accuracy": float((margins > 0).mean()),
                         "dev_items": len(dev_ids), "pool_uncertainty_mean": float(model.uncertainty(pool).mean())}
    if test is not None:
        m["test_accuracy"] = model.accuracy(test)
    answers = ["chosen" if g > 0 else "rejected" for g in margins]
    write_csv(folder / "submission.csv", [{"id": i, "answer": a} for i, a in zip(dev_ids, answers)])
    write_jsonl(folder / "grades.jsonl", [{"id": i, "answer": a, "margin": float(g), "correct": bool(g > 0)}
                                          for i, a, g in zip(dev_ids, answers, margins)])
    write_stage_json(folder / "labels.json", [pool_ids[i] for i in picked])
    m["seconds"] = round(time.perf_counter() - t0, 2)
    write_stage_json(folder / "metrics.json", m)
    log(f"{strategy} seed {seed} stage {n}: dev accuracy {m['dev_accuracy']:.3f}")
    return m


def run_strategy(cfg: LoopConfig, strategy: str, seed: int, pool_ids: list[str], pool: np.ndarray,
                 dev_ids: list[str], dev: np.ndarray, test: np.ndarray | None) -> list[dict[str, Any]]:
    """Every stage of one strategy and seed; a finished stage (its ``done`` marker) is read back, and its pick
    order continued."""
    from tqdm.auto import tqdm

    out = Path(cfg.output)
    picked: list[int] = []
    model: HeadEnsemble | None = None
    done: list[dict[str, Any]] = []
    for n in tqdm(cfg.stages, desc=f"loop {strategy} seed {seed}", unit="stage", file=sys.stderr):
        folder = stage_dir(out, strategy, seed, n, len(cfg.seeds))
        fn = partial(simulated_stage, cfg, strategy=strategy, seed=seed, n=n, picked=picked, model=model,
                     pool_ids=pool_ids, pool=pool, dev_ids=dev_ids, dev=dev, test=test)
        m = run_once(folder, fn, log=log, name=f"{strategy} seed {seed} stage {n}")["result"]
        # the stage's picks (read back when it finished before) and its ensemble (the same seed: the same fit)
        picked = [pool_ids.index(i) for i in json.loads((folder / "labels.json").read_text())]
        model = HeadEnsemble(cfg.ensemble, cfg.l2, seed * 1000 + n).fit(pool[picked])
        done.append(m)
    return done


def run_simulated(cfg: LoopConfig) -> dict[str, Any]:
    """Per strategy and seed, the metrics of every stage: ``{strategy: {seed: [metrics, ...]}}``."""
    pool_ids, pool = pair_features(cfg.data, cfg.encoder, cfg.max_length, cfg.limit)
    dev_ids, dev = pair_features(cfg.dev_data, cfg.encoder, cfg.max_length, cfg.limit)
    test = pair_features(cfg.test_data, cfg.encoder, cfg.max_length, cfg.limit)[1] if cfg.test_data else None
    if cfg.stages[-1] > len(pool_ids):
        raise ConfigError([f"stages: the last stage needs {cfg.stages[-1]} labels, the pool has {len(pool_ids)}"])
    log(f"pool {len(pool_ids)} pairs, dev {len(dev_ids)} pairs, features {pool.shape[1]}")
    results: dict[str, Any] = {}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            stages = run_strategy(cfg, strategy, seed, pool_ids, pool, dev_ids, dev, test)
            results.setdefault(strategy, {}).setdefault(seed, []).extend(stages)
    return results
