"""The loop's training mode (``simulated: false``): per stage, its n labels train a reward model and/or a DPO
policy (each from ``model``; stage 0 trains nothing), optionally followed by a GRPO step from the DPO policy whose
reward includes the stage's reward model (``grpo``), then the stage is evaluated and its policy registered as
``rlhf_<n>_labels`` (parent: the previous stage's model).

Stage n's labels are the previous stage's plus n - n_prev new ones: with ``online``, the pairs of the on-policy
round that the previous stage's policy answered (as many as fit), then the pool's next picks in strategy order for
the rest (all of them without ``online``, and at the first stage). The policy (the stage's GRPO output, else its
DPO output, else ``model``) answers ``test_data`` (``submission.csv``, graded in ``grades.jsonl``) and the reward
model is scored on ``dev_data`` pairs (``reward_eval.json``). The demo (:mod:`alignloop.pipelines.demo`) is this
mode.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import alignloop
from alignloop.core.config import ConfigError
from alignloop.core.files import write_jsonl
from alignloop.core.paths import registry_on
from alignloop.data.readers import public_meta, read_preferences
from alignloop.evaluate.qa_run import answers_and_confidence, qa_items, score_qa
from alignloop.evaluate.tables import write_csv
from alignloop.generation.abstention import Abstention, write_abstention
from alignloop.pipelines.config import LoopConfig
from alignloop.pipelines.loop_online import make_judge, online_prompts, online_round
from alignloop.pipelines.loop_report import log, read_jsonl, stage_dir, write_stage_json
from alignloop.pipelines.resume import run_once

#: what a test summary keeps of the answers before and after declining (``policy_alone``, ``with_abstention``)
GRADE_COUNTS = ("n", "correct", "incorrect", "refusal", "llmware_points", "by_class")


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


def answer_and_grade(policy: str, test: list[Any], folder: Path, max_new_tokens: int, seed: int,
                     desc: str, what_if: Abstention | None = None) -> dict[str, Any]:
    """``policy``'s greedy answers to the test items, graded by the QA scorer: ``submission.csv`` (``id``,
    ``answer``: one row per test item, in the test set's order) and ``grades.jsonl`` (every item's grade) in
    ``folder``; returns the summary (counts, rates, llmware points).

    A policy with an abstention record declines where it is unsure (:mod:`alignloop.generation.abstention`); then
    each row also holds the answer's ``confidence`` and the ``policy_answer`` before declining, and the summary
    ``policy_alone`` (the grades of the answers before declining) and ``with_abstention`` (after). ``what_if``: an
    abstention to measure for a policy that has none (stage 0): the same two figures, the submission unchanged."""
    res = answers_and_confidence(policy, [r.prompt for r in test], max_new_tokens, 10_000, 0.0, 8, seed=seed,
                                 desc=desc, rule=what_if)
    raw = [a[0] for a in res.get("policy_answers", res["answers"])]
    guarded = [a[0] for a in res["answers"]]
    rows, summ = score_qa(test, raw if what_if else guarded)
    if "confidence" in res:
        for r, a, c in zip(rows, raw, res["confidence"]):
            r.update({"policy_answer": a, "confidence": round(c[0], 4)})
        for key, answers in (("policy_alone", raw), ("with_abstention", guarded)):
            summ[key] = {k: v for k, v in score_qa(test, answers)[1].items() if k in GRADE_COUNTS}
        summ["abstention"] = res["abstention"]
    write_csv(folder / "submission.csv", [{"id": r["id"], "answer": r["answer"]} for r in rows])
    write_jsonl(folder / "grades.jsonl", rows)
    return summ


def evaluate_stage(cfg: LoopConfig, folder: Path, n: int, policy: str, reward_model: str | None,
                   test: list[Any] | None, seed: int) -> dict[str, Any]:
    """Test answers of ``policy`` (:func:`answer_and_grade`) and the reward model's accuracy on ``dev_data`` pairs
    (``reward_eval.json``)."""
    m: dict[str, Any] = {}
    if test is not None:
        # stage 0's policy is the starting model, whose folder the loop does not write to: its abstention is measured
        # (what_if), not applied
        what_if = abstention_of(cfg) if n == 0 else None
        summ = answer_and_grade(policy, test, folder, cfg.max_new_tokens, seed, f"stage {n}: test answers", what_if)
        m.update({f"test_{k}": v for k, v in summ.items() if isinstance(v, (int, float))})
        m.update({f"test_{k}": summ[k] for k in ("policy_alone", "with_abstention", "abstention") if k in summ})
    if reward_model and cfg.dev_data:
        r = alignloop.run_stage("reward eval", model=reward_model, data=cfg.dev_data, limit=cfg.limit,
                                output=str(folder / "reward_eval.json"))
        m.update({"dev_reward_accuracy": r["accuracy"], "dev_pairs": r["n_pairs"]})
    return m


def abstention_of(cfg: LoopConfig) -> Abstention | None:
    """The abstention each trained stage's policy gets (``abstain_below``), or None."""
    return None if cfg.abstain_below is None else Abstention(cfg.abstain_below, cfg.decline_text)


def starting_model(cfg: LoopConfig) -> tuple[str, str | None]:
    """(what to load, registry id): ``model`` may name a registered model (its folder is loaded); the id is stage 0's
    parent (the first stage's, without a stage 0). The registry never makes the loop fail."""
    if not registry_on():
        return cfg.model, None
    from alignloop.registry.store import resolve_model_ref

    try:
        return resolve_model_ref(cfg.model, cfg.db)
    except Exception as exc:
        log(f"warning: registry: cannot look up {cfg.model}: {exc.__class__.__name__}: {exc}")
        return cfg.model, None


def model_name(cfg: LoopConfig, strategy: str, seed: int, n: int) -> str:
    """A stage's registry name: ``rlhf_<n>_labels`` (plus ``-<strategy>`` / ``-seed<k>`` when a run has several)."""
    return (f"rlhf_{n}_labels" + (f"-{strategy}" if len(cfg.strategies) > 1 else "")
            + (f"-seed{seed}" if len(cfg.seeds) > 1 else ""))


def register_stage(cfg: LoopConfig, folder: Path, name: str, policy: str, parent: str | None,
                   m: dict[str, Any]) -> str | None:
    """Record the stage's policy as model ``name`` (stage ``loop``): parent, label count (``labels`` in its
    metrics), the sha256 of its ``labels.jsonl``; returns its id (None when not recorded)."""
    if not registry_on():
        return None
    from alignloop.models.load import resolve_model
    from alignloop.registry import recording

    try:
        path = str(resolve_model(policy))  # an alias or an --output folder: the model folder itself
    except Exception:
        path = policy
    labels = folder / "labels.jsonl"
    hashes = {"data": {"path": str(labels.resolve()), "sha256": recording.file_sha256(labels)}}
    # the folder is the stage's DPO output (its trainer's run wrote its card) or the starting model: no new card
    model_id = recording.record_run(cfg, path, metrics=m, parent=parent, hashes=hashes, stage="loop", name=name,
                                    judgment_ids=recording.judgment_ids_in(labels), db=cfg.db, card=False)
    if model_id is None:
        log(f"{name}: not registered ({path} is not a model folder, or the registry is unavailable)")
    return model_id


def rl_prompts(cfg: LoopConfig, test: list[Any] | None) -> str:
    """The grpo method's questions: ``prompts`` (``prompts_split`` of it) as prompt rows in ``rl_prompts.jsonl``
    (prompt, gold ``answer``, ``id``); none of them may be a test question."""
    assert cfg.prompts
    recs = qa_items(cfg.prompts, cfg.prompts_split)
    leaked = {json.dumps(r.prompt.to_json()) for r in recs} & {json.dumps(r.prompt.to_json()) for r in (test or [])}
    if leaked:
        raise ConfigError([f"prompts: {len(leaked)} of the questions GRPO would learn from are test_data questions; "
                           f"give a prompt set disjoint from the test set (e.g. --prompts-split train)"])
    return str(write_jsonl(Path(cfg.output) / "rl_prompts.jsonl",
                           [{"prompt": r.prompt.to_json(), **public_meta(r.meta)} for r in recs]))


class Inputs:
    """What every stage of a training-mode run reads: the pool, the test items, and (online) the prompt set and
    the judge."""

    def __init__(self, cfg: LoopConfig):
        self.pool = read_pool(cfg) if cfg.data else []
        first = next((n for n in cfg.stages if n > 0), 0)  # the first stage with labels (stage 0 has none)
        need = 0 if cfg.online and not self.pool else first if cfg.online else cfg.stages[-1]
        if need > len(self.pool):
            raise ConfigError([f"stages: {'the first' if cfg.online else 'the last'} stage needs {need} labels from "
                               f"the pool; {cfg.data} has {len(self.pool)} untied pairs"])
        self.test = qa_items(cfg.test_data, cfg.test_split) if cfg.test_data else None
        self.start, self.start_id = starting_model(cfg)  # stage 0's policy, and its parent in the registry
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
        self.rl_prompts = rl_prompts(cfg, self.test) if "grpo" in cfg.methods else None


def new_labels(cfg: LoopConfig, ins: Inputs, folder: Path, labels: list[dict[str, Any]], order: list[int],
               policy: str, seed: int, k: int, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Stage ``n``'s new labels: (on-policy rows, pool rows that fill the rest); ``k`` counts the stages with
    labels before this one."""
    new: list[dict[str, Any]] = []
    # the pool seeds the first stage with labels (the same start as an offline run); without a pool, the
    # starting model answers a first round too
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


def dpo_pairs(cfg: LoopConfig, folder: Path, seed: int) -> Path:
    """The labels DPO trains on: all of ``labels.jsonl``, or (``dpo_subsample``, when its steps do not reach them
    all) the ``max_steps x batch_size`` pairs it would reach, a seeded sample in label order (``dpo_pairs.jsonl``):
    DPO first scores every pair of its data with the reference model, so pairs it would never see cost time."""
    labels = folder / "labels.jsonl"
    rows = read_jsonl(labels)
    seen = cfg.max_steps * cfg.batch_size
    if not cfg.dpo_subsample or seen >= len(rows):
        return labels
    pick = sorted(random.Random(seed).sample(range(len(rows)), seen))
    return write_jsonl(folder / "dpo_pairs.jsonl", [rows[i] for i in pick])


def rl_reward(cfg: LoopConfig, reward_model: str | None) -> list[str]:
    """The GRPO reward specs: the rule(s), plus the stage's reward model as ``rm:<folder>:<rm_weight>``."""
    return list(cfg.rl_reward) + ([f"rm:{reward_model}:{cfg.rm_weight}"] if reward_model and cfg.rm_weight else [])


def timed(m: dict[str, Any], name: str, fn: Any) -> str:
    """Run a trainer (``fn()``), record its wall time as ``seconds_<name>`` in ``m``; returns its output as str."""
    t0 = time.perf_counter()
    out = str(fn())
    m[f"seconds_{name}"] = round(time.perf_counter() - t0, 1)
    return out


def train_stage(cfg: LoopConfig, ins: "Inputs", folder: Path, seed: int, m: dict[str, Any]) -> tuple[str, str | None]:
    """Train the stage's methods on ``folder/labels.jsonl``, each from the starting model: the reward model, DPO,
    then GRPO from the DPO output (else from the starting model). Returns (policy, reward model) and records the
    reward model, the DPO output (``dpo_policy``), the pairs DPO saw and each trainer's wall time in ``m``."""
    policy = ins.start
    common = dict(model=cfg.model, max_steps=cfg.max_steps, batch_size=cfg.batch_size, max_length=cfg.max_length,
                  seed=seed, db=cfg.db)
    if cfg.learning_rate:
        common["learning_rate"] = cfg.learning_rate
    labels = str(folder / "labels.jsonl")
    reward_model = None
    if "reward" in cfg.methods:
        # fine-tuned for --max-steps (the stage's step budget), or the frozen-feature recipe (--reward-recipe frozen)
        recipe = dict(freeze_backbone=False, pooling="last") if cfg.reward_recipe == "finetune" else \
            dict(freeze_backbone=True, pooling="mean", backbone_layers=cfg.reward_layers)
        reward_model = timed(m, "reward", lambda: alignloop.run_stage(
            "reward train", output=str(folder / "reward"), data=labels, **recipe, **common))
        m["reward_model"] = reward_model
    if "dpo" in cfg.methods:
        # each stage trains from `model` on its labels (aggregate and retrain), so the curve stays metric vs
        # number of labels; online changes where the labels come from
        pairs = dpo_pairs(cfg, folder, seed)
        m["dpo_pairs"] = len(read_jsonl(pairs))
        policy = timed(m, "dpo", lambda: alignloop.run_stage("dpo", output=str(folder / "dpo"), data=str(pairs),
                                                             lora=True, **common))
        m["dpo_policy"] = policy
    if "grpo" in cfg.methods:
        reward = rl_reward(cfg, reward_model)
        m["rl_reward"] = reward
        start = policy
        policy = timed(m, "grpo", lambda: alignloop.run_stage(
            "grpo", model=start, prompts=ins.rl_prompts, output=str(folder / "grpo"), lora=True, reward=reward,
            max_steps=cfg.rl_steps, batch_size=cfg.rl_prompts_per_step, num_generations=cfg.rl_generations,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.rl_temperature, learning_rate=cfg.rl_learning_rate,
            seed=seed, db=cfg.db))
    rule = abstention_of(cfg)
    if rule is not None and policy != ins.start:  # a folder this stage trained: the rule travels with the model
        from alignloop.models.load import resolve_model

        write_abstention(resolve_model(policy), rule)
        m["abstention"] = rule.to_json()
    return policy, reward_model


class Progress:
    """What carries from one stage to the next: its labels, its policy, its registered model (the next one's
    parent), and how many stages with labels came before."""

    def __init__(self, ins: Inputs):
        self.labels: list[dict[str, Any]] = []
        self.policy, self.model_id, self.labelled = ins.start, ins.start_id, 0


def one_stage(cfg: LoopConfig, ins: Inputs, folder: Path, p: Progress, order: list[int], strategy: str, seed: int,
              n: int) -> dict[str, Any]:
    """Stage ``n``: its labels, training (none at stage 0: the starting model), evaluation, registration;
    ``metrics.json`` (the stage's figures, wall time included) is its last file before the ``done`` marker."""
    t0 = time.perf_counter()
    new, fill = new_labels(cfg, ins, folder, p.labels, order, p.policy, seed, p.labelled, n) if n else ([], [])
    labels = p.labels + new + fill
    write_jsonl(folder / "labels.jsonl", labels)
    sources = [r["source"] for r in labels]
    m: dict[str, Any] = {"strategy": strategy, "seed": seed, "labels": n, "labels_pool": sources.count("pool"),
                         "labels_online": sources.count("online"), "new_online": len(new), "new_pool": len(fill)}
    log(f"{strategy} seed {seed} stage {n}: {n} labels ({m['labels_pool']} pool, "
        f"{m['labels_online']} on-policy; new: {len(new)} on-policy, {len(fill)} pool)")
    policy, reward_model = train_stage(cfg, ins, folder, seed, m) if n else (ins.start, None)
    m["policy"] = policy
    t1 = time.perf_counter()
    m.update(evaluate_stage(cfg, folder, n, policy, reward_model, ins.test, seed))
    m["seconds_train"], m["seconds_eval"] = round(t1 - t0, 1), round(time.perf_counter() - t1, 1)
    m["model_name"] = model_name(cfg, strategy, seed, n)
    m["parent_id"] = p.model_id
    m["model_id"] = register_stage(cfg, folder, m["model_name"], policy, p.model_id, m)
    m["seconds"] = round(time.perf_counter() - t0, 1)
    write_stage_json(folder / "labels.json", [r["id"] for r in labels])
    write_stage_json(folder / "metrics.json", m)
    return m


def run_strategy(cfg: LoopConfig, ins: Inputs, strategy: str, seed: int) -> list[dict[str, Any]]:
    """Every stage of one strategy and seed; a finished stage (its ``done`` marker) is not redone: its labels,
    policy and registered model carry on to the next."""
    out = Path(cfg.output)
    order = pool_order(strategy, ins.pool, seed)
    p = Progress(ins)
    done: list[dict[str, Any]] = []
    for n in tqdm(cfg.stages, desc=f"loop {strategy} seed {seed}", unit="stage", file=sys.stderr):
        folder = stage_dir(out, strategy, seed, n, len(cfg.seeds))
        m = run_once(folder, lambda f, n=n: one_stage(cfg, ins, f, p, order, strategy, seed, n), log=log,
                     name=f"{strategy} seed {seed} stage {n}")["result"]
        p.labels, p.policy, p.model_id = read_jsonl(folder / "labels.jsonl"), m["policy"], m.get("model_id")
        p.labelled += n > 0
        done.append(m)
        shown = {k: m[k] for k in ("test_correct", "test_n", "dev_reward_accuracy", "seconds") if k in m}
        log(f"{strategy} seed {seed} stage {n}: {json.dumps(shown)}")
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
