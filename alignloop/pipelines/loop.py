"""``alignloop loop``: the staged RLHF loop. Did each increment of labels make the model better?

For stages of increasing label counts (0, 100, 200, …; a *label* is one preference judgment between two answers to
one question), stage n takes the first n labels in the order the selection strategy picks them, trains, evaluates on
a fixed held-out set and writes ``stage_<n>/``: ``submission.csv`` (``id``, ``answer``: one row per held-out item,
in the held-out set's order), ``grades.jsonl`` (every item's grade), ``metrics.json`` (the stage's figures, wall time
included) and ``labels.json`` (the label ids in pick order). Stage 0 (training mode) is the starting model with no
preference training. Each stage runs through :func:`alignloop.pipelines.resume.run_once`, the demo's stage helper:
its ``done`` marker, written last, means a second or killed run never redoes it, and the pick order is read back
from the finished stages so the next picks continue it exactly.

Strategies (which unlabeled items the next labels come from):

* ``random``: a seeded shuffle of the pool (the seed's way);
* ``uncertainty``: active learning: the items where a reward-model *ensemble* disagrees most (standard
  deviation of the members' reward margins r(a) - r(b)) come first. The first stage is random for every
  strategy (there is no model yet), with the same seed, so curves start from the same point.

**Simulated mode** (``simulated: true``, :mod:`alignloop.pipelines.loop_simulated`) runs on data whose
preferences are already known (the HH pairs): the loop "reveals" labels in the order the strategy picks them, so
strategies can be compared on the same data without a labeller. Its reward model is an ensemble of linear
Bradley-Terry heads on frozen sentence-encoder features.

**Training mode** (``simulated: false``, :mod:`alignloop.pipelines.loop_training`) trains the real stages per label
count on a preference pool (``data``): ``methods`` among ``reward`` (``alignloop reward train``), ``dpo``
(``alignloop dpo``, LoRA) and ``grpo`` (``alignloop grpo`` from the stage's DPO output on ``prompts``, rewarded by
``rl_reward`` plus ``rm_weight`` x the stage's reward model, ``rm:``), each stage from ``model`` on all of its n
labels (stage 0 trains nothing); ``alignloop demo`` is this mode on FinanceBench. Each stage writes ``labels.jsonl``
(the label rows it trained on, with ``id`` and ``source``) and is evaluated: the policy (the stage's GRPO output,
else its DPO output, else ``model``) answers ``test_data`` (QA rows with gold answers; ``submission.csv``, graded in
``grades.jsonl``) and the reward model is scored on ``dev_data`` pairs (``reward_eval.json``). The stage's policy is
registered in the model registry (``db``) as ``rlhf_<n>_labels``: its label count in the model's metrics, its parent
the previous stage's model (the first stage's: ``model``, when that is registered, e.g. an SFT output).

**Online** (``online: true``, training mode; iterative / on-policy RLHF; :mod:`alignloop.pipelines.loop_online`):
stage n's labels are the previous stage's plus n - n_prev new ones, and the new ones come first from an *on-policy
round*: the latest policy (the previous stage's DPO output, else ``model``) samples ``num_candidates`` answers to
this round's prompts (``prompts``, else the pool's prompts; ``prompts_per_round`` of a seeded shuffle, moving on
each round), the judge (``reference`` by default: gold answers, the gold itself joins the candidates) labels every
pair, and the decisive pairs, interleaved across prompts, are taken as needed; the pool's next picks fill any
shortfall. The pool seeds the first stage (the same start as an offline run, so the curves are comparable); with
``data: ""`` the first stage is a round answered by ``model`` too. Each round is persisted in ``stage_<n>/online/``
(candidates, judgments, preferences, then ``round.json`` as its done-marker), so a resumed run never samples a
finished round again; the demo's labelling stage is the same function (``judges.labeling.sample_and_judge``).

At the end: learning curves (metric vs labels, per strategy/method) as PNG and one HTML report
(:mod:`alignloop.pipelines.loop_report`).
"""

from __future__ import annotations

import json
from pathlib import Path

from alignloop.pipelines.config import HH, LoopConfig  # noqa: F401  (re-exported)
from alignloop.pipelines.loop_report import labels_to_reach, write_report  # noqa: F401  (re-exported)
from alignloop.pipelines.loop_simulated import HeadEnsemble, next_picks, run_simulated  # noqa: F401  (re-exported)
from alignloop.pipelines.loop_training import run_training


def run(cfg: LoopConfig) -> Path:
    """Run the simulated or the training mode, then write the learning-curve report(s); returns the report."""
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
