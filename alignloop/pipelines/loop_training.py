"""The loop's training mode (``simulated: false``): per stage, its n labels train a reward model and/or a DPO
policy (each from ``model``), then the stage is evaluated.

Stage n's labels are the previous stage's plus n - n_prev new ones: with ``online``, the pairs of the on-policy
round that the previous stage's policy answered (as many as fit), then the pool's next picks in strategy order for
the rest (all of them without ``online``, and at the first stage). The policy (the stage's DPO output, else
``model``) answers ``test_data`` (``predictions.csv``, graded in ``items.csv``) and the reward model is scored on
``dev_data`` pairs (``reward_eval.json``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

import alignloop
from alignloop.core.config import ConfigError
from alignloop.core.files import write_jsonl
from alignloop.data.readers import read_preferences
from alignloop.evaluate.qa_run import answer, qa_items, score_qa
from alignloop.evaluate.tables import write_csv
from alignloop.pipelines.config import LoopConfig
from alignloop.pipelines.loop_online import make_judge, online_prompts, online_round
from alignloop.pipelines.loop_report import log, read_jsonl, stage_dir, write_stage_json


def read_pool(cfg: LoopConfig) -> list[dict[str, Any]]:
    """The pool's pairs as label rows: ``id``, ``source`` ("pool"), prompt, chosen, rejected (and ``uncertainty``
    when the pool has that column). Ids are the rows' ``id``, or ``pool:<row>`` where those are missing or repeat."""
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


def evaluate_stage(cfg: LoopConfig, folder: Path, n: int, policy: str, reward_model: str | None,
                   test: list[Any] | None, seed: int) -> dict[str, Any]:
    """Test answers of ``policy`` graded by the QA scorer (``predictions.csv``, ``items.csv``) and the reward
    model's accuracy on ``dev_data`` pairs (``reward_eval.json``)."""
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


class Inputs:
    """What every stage of a training-mode run reads: the pool, the test items, and (online) the prompt set and
    the judge."""

    def __init__(self, cfg: LoopConfig):
        self.pool = read_pool(cfg) if cfg.data else []
        need = 0 if cfg.online and not self.pool else cfg.stages[0] if cfg.online else cfg.stages[-1]
        if need > len(self.pool):
            raise ConfigError([f"stages: {'the first' if cfg.online else 'the last'} stage needs {need} labels from "
                               f"the pool; {cfg.data} has {len(self.pool)} untied pairs"])
        self.test = qa_items(cfg.test_data, cfg.test_split) if cfg.test_data else None
        self.prompts: list[Any] | None = None
        self.judge: Any = None
        if cfg.online:
            self.prompts = online_prompts(cfg)
            leaked = {json.dumps(r.prompt.to_json()) for r in self.prompts} & \
                {json.dumps(r.prompt.to_json()) for r in (self.test or [])}
            if leaked:
                raise ConfigError([f"prompts: {len(leaked)} of the prompts the policy would answer and learn from "
                                   f"are test_data prompts; give a prompt set disjoint from the test set"])
            self.judge = make_judge(cfg)
            log(f"online: {len(self.prompts)} prompts, {cfg.prompts_per_round or len(self.prompts)} per round, "
                f"{cfg.num_candidates} candidates each, {self.judge.name} judge")


def new_labels(cfg: LoopConfig, ins: Inputs, folder: Path, labels: list[dict[str, Any]], order: list[int],
               policy: str, seed: int, k: int, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stage ``n``'s new labels: (on-policy rows, pool rows that fill the rest)."""
    new: list[dict[str, Any]] = []
    # the pool seeds the first stage (the same start as an offline run); without a pool, `model` answers a first
    # round too
    round_no = k + (0 if ins.pool else 1)
    if cfg.online and round_no > 0:
        assert ins.prompts is not None
        new = online_round(cfg, folder / "online", policy, ins.prompts, ins.judge, seed, round_no, n)
        new = new[: n - len(labels)]
    used = {r["id"] for r in labels}
    fill = [ins.pool[i] for i in order if ins.pool[i]["id"] not in used][: n - len(labels) - len(new)]
    if len(labels) + len(new) + len(fill) < n:
        raise ConfigError([f"stages: stage {n} needs {n - len(labels)} new labels; the on-policy round gave "
                           f"{len(new)} and the pool has {len(fill)} left (more prompts per round, more candidates, "
                           f"or a larger pool; delete {folder / 'online'} to sample that round again)"])
    return new, fill


def train_stage(cfg: LoopConfig, folder: Path, seed: int, policy: str, m: dict[str, Any]) -> tuple[str, str | None]:
    """Train the stage's methods on ``folder/labels.jsonl``; returns (policy, reward model) and records both in
    ``m``."""
    common = dict(model=cfg.model, data=str(folder / "labels.jsonl"), max_steps=cfg.max_steps,
                  batch_size=cfg.batch_size, max_length=cfg.max_length, seed=seed)
    if cfg.learning_rate:
        common["learning_rate"] = cfg.learning_rate
    reward_model = None
    if "reward" in cfg.methods:
        # fine-tuned for --max-steps (the stage's step budget), not the frozen-feature recipe `reward train` defaults to
        reward_model = str(alignloop.run_stage("reward train", output=str(folder / "reward"), freeze_backbone=False,
                                               pooling="last", **common))
        m["reward_model"] = reward_model
    if "dpo" in cfg.methods:
        # each stage trains from `model` on all its labels (aggregate and retrain), so the curve stays metric vs
        # number of labels; online changes where the labels come from
        policy = str(alignloop.run_stage("dpo", output=str(folder / "dpo"), lora=True, **common))
        m["policy"] = policy
    return policy, reward_model


def run_strategy(cfg: LoopConfig, ins: Inputs, strategy: str, seed: int) -> list[dict[str, Any]]:
    """Every stage of one strategy and seed; a finished stage's labels and policy carry on to the next."""
    out = Path(cfg.output)
    order = pool_order(strategy, ins.pool, seed)
    labels: list[dict[str, Any]] = []
    policy = cfg.model
    done: list[dict[str, Any]] = []
    for k, n in enumerate(cfg.stages):
        folder = stage_dir(out, strategy, seed, n, len(cfg.seeds))
        if (folder / "metrics.json").exists():  # finished before: its labels and policy carry on
            m = json.loads((folder / "metrics.json").read_text())
            labels = read_jsonl(folder / "labels.jsonl")
            policy = m.get("policy", cfg.model)
            done.append(m)
            log(f"{strategy} seed {seed} stage {n}: done before, reusing {folder}")
            continue
        t0 = time.perf_counter()
        new, fill = new_labels(cfg, ins, folder, labels, order, policy, seed, k, n)
        labels = labels + new + fill
        write_jsonl(folder / "labels.jsonl", labels)
        sources = [r["source"] for r in labels]
        m: dict[str, Any] = {"strategy": strategy, "seed": seed, "labels": n, "labels_pool": sources.count("pool"),
                             "labels_online": sources.count("online"), "new_online": len(new), "new_pool": len(fill)}
        log(f"{strategy} seed {seed} stage {n}: {n} labels ({m['labels_pool']} pool, "
            f"{m['labels_online']} on-policy; new: {len(new)} on-policy, {len(fill)} pool)")
        policy, reward_model = train_stage(cfg, folder, seed, policy, m)
        m.update(evaluate_stage(cfg, folder, n, policy, reward_model, ins.test, seed))
        m["seconds"] = round(time.perf_counter() - t0, 1)
        write_stage_json(folder / "labels.json", [r["id"] for r in labels])
        write_stage_json(folder / "metrics.json", m)  # last: its presence marks the stage finished
        done.append(m)
        shown = {k2: m[k2] for k2 in ("test_correct", "test_n", "dev_reward_accuracy") if k2 in m}
        log(f"{strategy} seed {seed} stage {n}: finished in {m['seconds']} s {json.dumps(shown)}")
    return done


def run_training(cfg: LoopConfig) -> dict[str, Any]:
    """Training mode: per strategy and seed, the metrics of every stage: ``{strategy: {seed: [metrics, ...]}}``."""
    ins = Inputs(cfg)
    log(f"training mode: pool {len(ins.pool)} pairs, stages {cfg.stages}, methods {', '.join(cfg.methods)}"
        + (f", test {len(ins.test)} questions" if ins.test is not None else ""))
    results: dict[str, Any] = {}
    for strategy in cfg.strategies:
        for seed in cfg.seeds:
            results.setdefault(strategy, {}).setdefault(seed, []).extend(run_strategy(cfg, ins, strategy, seed))
    return results
