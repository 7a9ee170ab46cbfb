"""The staged loop: simulated mode (strategies, per-stage outputs, resume without redoing finished stages) and
training mode on tiny (reward + DPO stages, resume, on-policy rounds)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from alignloop import loop
from alignloop.pipelines import loop_simulated
from alignloop.pipelines.config import LoopConfig
from alignloop.pipelines.loop_report import labels_to_reach
from alignloop.pipelines.loop_simulated import HeadEnsemble, next_picks


def _pairs(path, n, offset=0):
    rows = [{"id": f"p{offset + i}", "prompt": f"question {offset + i}", "chosen": f"good answer {offset + i}",
             "rejected": f"bad answer {offset + i}"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def fake_encoder(monkeypatch):
    """Deterministic features instead of MiniLM: 'good' texts lean on dimension 0, plus seeded noise per text."""
    calls = {"n": 0}

    def encode(texts, encoder, max_length, batch_size=64):
        calls["n"] += 1
        out = []
        for t in texts:
            rng = np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:8], 16))
            v = rng.normal(size=8)
            v[0] += 1.5 if "good" in t else -1.5
            out.append(v)
        return np.array(out)

    monkeypatch.setattr(loop_simulated, "encode", encode)
    return calls


def test_next_picks_random_is_a_prefix_and_uncertainty_takes_most_disagreed():
    diffs = np.eye(4)
    first = next_picks("random", [], 2, 4, seed=0, model=None, diffs=diffs)
    more = next_picks("random", first, 2, 4, seed=0, model=None, diffs=diffs)
    assert sorted(first + more) == [0, 1, 2, 3]
    assert first + more == [int(i) for i in np.random.default_rng(0).permutation(4)]
    ens = HeadEnsemble(2, 1.0, 0)
    ens.weights = np.array([[1.0, 0.0, 0.0, 5.0], [1.0, 0.0, 0.0, -5.0]])  # members disagree only on item 3
    assert next_picks("uncertainty", [0], 2, 4, seed=0, model=ens, diffs=diffs) == [3, 1]
    assert ens.accuracy(np.array([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]])) == 0.5


def test_labels_to_reach():
    assert labels_to_reach([(100, 0.5), (200, 0.61), (300, 0.7)], 0.6) == 200
    assert labels_to_reach([(100, 0.5)], 0.6) is None


def test_simulated_loop_writes_stages_and_resumes(tmp_path, fake_encoder):
    pool, dev = _pairs(tmp_path / "pool.jsonl", 60), _pairs(tmp_path / "dev.jsonl", 30, offset=1000)
    base = dict(output=str(tmp_path / "run"), data=str(pool), dev_data=str(dev), ensemble=3)
    half = LoopConfig(stages=[10, 20], **base).validate()
    loop.run(half)
    s10 = tmp_path / "run" / "uncertainty" / "stage_10"
    mtime = (s10 / "metrics.json").stat().st_mtime_ns
    with open(s10 / "submission.csv") as fh:
        preds = list(csv.DictReader(fh))
    assert [p["id"] for p in preds] == [f"p{1000 + i}" for i in range(30)] and list(preds[0]) == ["id", "answer"]
    grades = [json.loads(line) for line in (s10 / "grades.jsonl").read_text().splitlines()]
    assert [g["id"] for g in grades] == [p["id"] for p in preds]
    assert [g["answer"] for g in grades] == [p["answer"] for p in preds] == \
        ["chosen" if g["margin"] > 0 else "rejected" for g in grades]
    # the first stage is random for both strategies (same seed): same labels
    assert json.loads((s10 / "labels.json").read_text()) == \
        json.loads((tmp_path / "run" / "random" / "stage_10" / "labels.json").read_text())

    full = LoopConfig(stages=[10, 20, 30], **base).validate()
    loop.run(full)  # resumes: stages 10 and 20 are reused, only 30 runs
    assert (s10 / "metrics.json").stat().st_mtime_ns == mtime
    labels20 = json.loads((tmp_path / "run" / "uncertainty" / "stage_20" / "labels.json").read_text())
    labels30 = json.loads((tmp_path / "run" / "uncertainty" / "stage_30" / "labels.json").read_text())
    assert labels30[:20] == labels20 and len(set(labels30)) == 30

    fresh = LoopConfig(stages=[10, 20, 30], **{**base, "output": str(tmp_path / "fresh")}).validate()
    loop.run(fresh)  # a resumed run equals an uninterrupted one
    for s in ("random", "uncertainty"):
        a = json.loads((tmp_path / "run" / s / "stage_30" / "labels.json").read_text())
        b = json.loads((tmp_path / "fresh" / s / "stage_30" / "labels.json").read_text())
        assert a == b
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert [n for n, _ in curves["curves"]["random"]] == [10, 20, 30]
    assert all(v >= 0.9 for _, v in curves["curves"]["random"][1:])  # the synthetic signal is learnable
    assert (tmp_path / "run" / "curve_dev_accuracy.png").stat().st_size > 1000
    assert "Learning curve" in (tmp_path / "run" / "report.html").read_text()


def test_simulated_loop_reports_a_pool_too_small_as_a_config_error(tmp_path, fake_encoder):
    """A stage asking for more labels than the pool has is a ConfigError naming both counts (it was an ImportError:
    the simulated mode imported ConfigError from a module that does not define it)."""
    from alignloop.core.config import ConfigError

    pool, dev = _pairs(tmp_path / "pool.jsonl", 8), _pairs(tmp_path / "dev.jsonl", 4, offset=100)
    cfg = LoopConfig(output=str(tmp_path / "run"), data=str(pool), dev_data=str(dev), stages=[4, 10]).validate()
    with pytest.raises(ConfigError, match="the last stage needs 10 labels, the pool has 8"):
        loop.run(cfg)


def test_pipelines_use_libraries_not_command_modules():
    """The loop and the demo call the evaluation and judge libraries, never another package's CLI module."""
    import ast

    root = Path(loop.__file__).parent
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
                else []
            assert not [n for n in names if ".commands" in n], f"{path.name} imports {names}"


def test_loop_config_problems():
    from alignloop.core.config import ConfigError

    with pytest.raises(ConfigError) as e:
        LoopConfig(output="", stages=[200, 100], strategies=["magic", "uncertainty"], ensemble=1).validate()
    msg = str(e.value)
    assert "output" in msg and "increasing" in msg and "magic" in msg and "ensemble" in msg


# ---- training mode on tiny: real stages, resume, and on-policy rounds ---------------------------------------

def _qa(i):
    return {"id": f"q{i}", "question": f"What was revenue in {2000 + i}?",
            "context": f"Revenue was ${100 + i} million in {2000 + i}.", "answer": f"${100 + i} million"}


def _training_cfg(tiny_path, tmp_path, **kw):
    from testutil import write_jsonl

    pool = write_jsonl(tmp_path / "pool.jsonl", [
        {"id": f"p{i}", "prompt": f"What is {i} plus {i}?", "chosen": f"{i} plus {i} is {2 * i}.",
         "rejected": "No idea."} for i in range(10)])
    test = write_jsonl(tmp_path / "test.jsonl", [_qa(i) for i in range(3)])
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [_qa(i) for i in range(10, 14)])
    fields = dict(output=str(tmp_path / "run"), data=str(pool), dev_data=str(pool), test_data=str(test),
                  prompts=str(prompts), simulated=False, strategies=["random"], model=str(tiny_path), max_steps=1,
                  batch_size=2, max_length=64, max_new_tokens=4)
    fields.update(kw)
    return LoopConfig(**fields).validate()


class Killed(Exception):
    pass


def _spy_stages(monkeypatch, kill_when=None):
    """Record every trainer/evaluator the loop starts (stage, output); raise Killed for the first one
    ``kill_when(stage, output)`` names, as if the run were killed there."""
    import alignloop

    real, calls = alignloop.__dict__.get("_unspied_run_stage", alignloop.run_stage), []
    monkeypatch.setattr(alignloop, "_unspied_run_stage", real, raising=False)

    def run_stage(stage, config=None, **fields):
        calls.append((stage, str(fields.get("output", ""))))
        if kill_when and kill_when(stage, str(fields.get("output", ""))):
            raise Killed(stage)
        return real(stage, config, **fields)

    monkeypatch.setattr(alignloop, "run_stage", run_stage)
    return calls


def _read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_training_mode_reward_and_dpo_on_tiny_writes_stages_and_resumes(tiny_path, tmp_path, monkeypatch):
    cfg = _training_cfg(tiny_path, tmp_path, stages=[3, 6], methods=["reward", "dpo"])
    run = tmp_path / "run" / "random"
    _spy_stages(monkeypatch, kill_when=lambda stage, out: "stage_6" in out)
    with pytest.raises(Killed):
        loop.run(cfg)  # killed as stage 6 starts training: stage 3 is finished, stage 6 is not
    assert (run / "stage_3" / "metrics.json").exists() and not (run / "stage_6" / "metrics.json").exists()
    mtime = (run / "stage_3" / "metrics.json").stat().st_mtime_ns

    calls = _spy_stages(monkeypatch)
    loop.run(cfg)
    assert [(s, o.split("/random/")[1]) for s, o in calls] == [
        ("reward train", "stage_6/reward"), ("dpo", "stage_6/dpo"), ("reward eval", "stage_6/reward_eval.json")]
    assert (run / "stage_3" / "metrics.json").stat().st_mtime_ns == mtime  # not redone

    order = [f"p{i}" for i in np.random.default_rng(0).permutation(10)]
    l3 = json.loads((run / "stage_3" / "labels.json").read_text())
    l6 = json.loads((run / "stage_6" / "labels.json").read_text())
    assert l3 == order[:3] and l6 == order[:6]  # the seeded shuffle's prefix, continued exactly after the kill
    rows6 = _read_jsonl(run / "stage_6" / "labels.jsonl")
    assert [r["id"] for r in rows6] == l6 and {r["source"] for r in rows6} == {"pool"}
    assert rows6[0]["chosen"] == f"{l6[0][1:]} plus {l6[0][1:]} is {2 * int(l6[0][1:])}."
    for n in (3, 6):
        m = json.loads((run / f"stage_{n}" / "metrics.json").read_text())
        assert (m["labels"], m["labels_pool"], m["labels_online"], m["test_n"], m["dev_pairs"]) == (n, n, 0, 3, 10)
        assert m["policy"] == str(run / f"stage_{n}" / "dpo" / "final")
        assert (Path(m["reward_model"]) / "config.json").exists() and 0 <= m["dev_reward_accuracy"] <= 1
        assert m["test_correct"] + m["test_incorrect"] + m["test_refusal"] == 3
        with open(run / f"stage_{n}" / "submission.csv") as fh:
            preds = list(csv.DictReader(fh))
        assert list(preds[0]) == ["id", "answer"] and [p["id"] for p in preds] == ["q0", "q1", "q2"]
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert curves["metric"] == "test_correct_rate" and [n for n, _ in curves["curves"]["random"]] == [3, 6]
    assert (tmp_path / "run" / "report_reward.html").exists()


def test_online_round_samples_the_latest_policy_and_feeds_the_next_stage(tiny_path, tmp_path, monkeypatch):
    from alignloop.evaluate.qa_run import answer, qa_items
    from alignloop.judges import labeling

    cfg = _training_cfg(tiny_path, tmp_path, stages=[3, 5], methods=["dpo"], online=True, prompts_per_round=2,
                        learning_rate=1e-2)
    run = tmp_path / "run" / "random"
    _spy_stages(monkeypatch, kill_when=lambda stage, out: "stage_5" in out)
    with pytest.raises(Killed):
        loop.run(cfg)  # killed after stage 5's round was sampled and labelled, before its DPO
    rnd = run / "stage_5" / "online"
    info = json.loads((rnd / "round.json").read_text())
    m3 = json.loads((run / "stage_3" / "metrics.json").read_text())
    # the round is answered by stage 3's DPO output (the latest policy), not by the base model
    assert info["policy"] == m3["policy"] == str(run / "stage_3" / "dpo" / "final")
    assert info["prompt_ids"] == [f"q{10 + i}" for i in np.random.default_rng(0).permutation(4)[:2]]

    records = {r.meta["id"]: r for r in qa_items(cfg.prompts)}
    take = [records[i] for i in info["prompt_ids"]]
    again = answer(info["policy"], [r.prompt for r in take], 4, 10_000, 1.0, 8, num=2, seed=info["seed"])
    cands = _read_jsonl(rnd / "candidates.jsonl")
    assert [c["id"] for c in cands] == info["prompt_ids"] and [c["sampled"] for c in cands] == again
    base = answer(str(tiny_path), [r.prompt for r in take], 4, 10_000, 1.0, 8, num=2, seed=info["seed"])
    assert base != again  # (the same seed on the base model gives other answers: the policy really moved)
    for c, r in zip(cands, take):
        assert c["completions"] == list(dict.fromkeys(c["sampled"] + [r.meta["answer"]]))  # the gold joins
    prefs = _read_jsonl(rnd / "preferences.jsonl")
    judgments = _read_jsonl(rnd / "judgments.jsonl")
    assert len(judgments) == sum(len(c["completions"]) * (len(c["completions"]) - 1) // 2 for c in cands)
    assert len(prefs) == info["preferences"] == sum(j["winner"] is not None for j in judgments) >= 2
    golds = {r.meta["answer"] for r in take}
    for p in prefs:  # the gold (graded correct) wins every pair it is in; no pair is made up
        c = next(c for c in cands if c["id"] == p["id"])
        assert {p["chosen"], p["rejected"]} <= set(c["completions"]) and p["rejected"] not in golds

    mtime = (rnd / "round.json").stat().st_mtime_ns

    def no_resampling(*a, **k):
        raise AssertionError("a finished round was sampled again")

    monkeypatch.setattr(labeling, "sample_and_judge", no_resampling)
    calls = _spy_stages(monkeypatch)
    loop.run(cfg)
    assert [s for s, o in calls] == ["dpo"] and "stage_5" in calls[0][1]
    assert (rnd / "round.json").stat().st_mtime_ns == mtime

    l3 = _read_jsonl(run / "stage_3" / "labels.jsonl")
    l5 = _read_jsonl(run / "stage_5" / "labels.jsonl")
    assert l5[:3] == l3 and [r["source"] for r in l5] == ["pool"] * 3 + ["online"] * 2
    # interleaved across prompts: the two new labels are the first pair of each of the round's two prompts
    firsts = [next(j for j, p in enumerate(prefs) if p["id"] == pid) for pid in info["prompt_ids"]]
    assert [r["id"] for r in l5[3:]] == [f"online:stage_5:{j}" for j in sorted(firsts)]
    for r in l5[3:]:
        p = prefs[int(r["id"].rsplit(":", 1)[1])]
        assert (r["prompt"], r["chosen"], r["rejected"], r["prompt_id"], r["policy"]) == \
            (p["prompt"], p["chosen"], p["rejected"], p["id"], info["policy"])
    m5 = json.loads((run / "stage_5" / "metrics.json").read_text())
    assert (m5["labels"], m5["labels_pool"], m5["labels_online"], m5["new_online"], m5["new_pool"]) == (5, 3, 2, 2, 0)
    # stage 5's DPO trained on exactly those labels
    import yaml

    dpo_cfg = yaml.safe_load((run / "stage_5" / "dpo" / "config.yaml").read_text())
    assert dpo_cfg["data"] == str(run / "stage_5" / "labels.jsonl") and dpo_cfg["model"] == str(tiny_path)


def test_online_without_a_pool_every_label_is_on_policy(tiny_path, tmp_path, monkeypatch):
    """No pool: the first round is answered by `model`; the rounds move through the shuffled prompts. Trainers
    are stubbed (reward only, so the policy stays `model`): this checks the label bookkeeping."""
    import alignloop

    def fake_stage(stage, config=None, **fields):
        Path(fields["output"]).parent.mkdir(parents=True, exist_ok=True)
        return {"accuracy": 0.5, "n_pairs": 10} if stage == "reward eval" else fields["output"]

    monkeypatch.setattr(alignloop, "run_stage", fake_stage)
    cfg = _training_cfg(tiny_path, tmp_path, data="", stages=[2, 4], methods=["reward"], online=True,
                        prompts_per_round=2, test_data=None)
    loop.run(cfg)
    run = tmp_path / "run" / "random"
    shuffled = [f"q{10 + i}" for i in np.random.default_rng(0).permutation(4)]
    r1 = json.loads((run / "stage_2" / "online" / "round.json").read_text())
    r2 = json.loads((run / "stage_4" / "online" / "round.json").read_text())
    assert (r1["round"], r1["policy"], r1["prompt_ids"]) == (1, str(tiny_path), shuffled[:2])
    assert (r2["round"], r2["policy"], r2["prompt_ids"]) == (2, str(tiny_path), shuffled[2:])
    l4 = _read_jsonl(run / "stage_4" / "labels.jsonl")
    assert [r["source"] for r in l4] == ["online"] * 4
    assert [r["id"].rsplit(":", 1)[0] for r in l4] == ["online:stage_2"] * 2 + ["online:stage_4"] * 2
    assert ({r["prompt_id"] for r in l4[:2]} == set(shuffled[:2])
            and {r["prompt_id"] for r in l4[2:]} == set(shuffled[2:]))
    assert json.loads((run / "stage_4" / "metrics.json").read_text())["dev_reward_accuracy"] == 0.5


def test_online_config_problems(tmp_path):
    from alignloop.core.config import ConfigError

    with pytest.raises(ConfigError) as e:
        LoopConfig(output=str(tmp_path), online=True, stages=[10]).validate()
    msg = str(e.value)
    assert "simulated: false" in msg and "at least 2 stages" in msg
    # the HH pool has no gold answers: the reference judge cannot label its prompts (file:line:field)
    assert "train.jsonl.gz:1: answer:" in msg
    with pytest.raises(ConfigError) as e:  # an http judge needs no gold answers, but an endpoint
        LoopConfig(output=str(tmp_path), simulated=False, online=True, stages=[1, 2], judge="http").validate()
    assert "judge_base_url" in str(e.value) and "answer" not in str(e.value)
    with pytest.raises(ConfigError) as e:
        LoopConfig(output=str(tmp_path), simulated=False, online=True, data="", stages=[1, 2]).validate()
    assert "prompts: online rounds need prompts" in str(e.value)
    with pytest.raises(ConfigError) as e:
        LoopConfig(output=str(tmp_path), simulated=False, data="").validate()
    assert "data: a pool" in str(e.value)


def test_online_refuses_test_prompts_before_any_work(tiny_path, tmp_path):
    from alignloop.core.config import ConfigError

    cfg = _training_cfg(tiny_path, tmp_path, stages=[3, 5], methods=["dpo"], online=True)
    cfg = cfg.replace(prompts=cfg.test_data).validate()
    with pytest.raises(ConfigError) as e:
        loop.run(cfg)
    assert "3 of the prompts" in str(e.value) and not (tmp_path / "run" / "random").exists()


# ---- stage 0, submissions, the registry, reuse (issue 18) ---------------------------------------------------

def test_loop_accepts_stage_0_in_training_mode(tmp_path):
    from alignloop.core.config import ConfigError

    cfg = LoopConfig(output=str(tmp_path), simulated=False, stages=[0, 2, 4]).validate()
    assert cfg.stages == [0, 2, 4]
    with pytest.raises(ConfigError, match=r"stages: must be label counts \(0 or more\), increasing, got \[-1, 2\]"):
        LoopConfig(output=str(tmp_path), simulated=False, stages=[-1, 2]).validate()
    with pytest.raises(ConfigError, match="stage 0 .* is a training-mode stage"):
        LoopConfig(output=str(tmp_path), stages=[0, 10]).validate()
    with pytest.raises(ConfigError, match="at least 2 stages with labels"):  # stage 0 feeds no on-policy round
        LoopConfig(output=str(tmp_path), simulated=False, online=True, stages=[0, 10], judge="http",
                   judge_base_url="http://x", judge_model="m").validate()


def test_staged_loop_on_tiny_writes_submissions_registers_models_and_reuses_stages(tiny_path, tmp_path, monkeypatch):
    """Stage 0 (the starting model, no preference training) and stage 2 (DPO on 2 labels): each writes the
    held-out split's submission and grades, and is registered as rlhf_<n>_labels with its label count and parent;
    a second run trains, answers and registers nothing."""
    from testutil import write_jsonl

    from alignloop.pipelines import loop_training
    from alignloop.registry import recording
    from alignloop.registry.store import open_registry

    db = f"sqlite:///{tmp_path / 'registry.db'}"
    sft_id = recording.record_run({"model": "tiny"}, tiny_path, metrics={}, stage="sft", name="sft", db=db, card=False)
    questions = write_jsonl(tmp_path / "questions.jsonl", [_qa(i) for i in range(10)])
    cfg = _training_cfg(tiny_path, tmp_path, stages=[0, 2], methods=["dpo"], test_data=str(questions),
                        test_split="test", db=db)
    run = tmp_path / "run" / "random"
    calls = _spy_stages(monkeypatch)
    loop.run(cfg)
    assert [(s, o.split("/random/")[1]) for s, o in calls] == [("dpo", "stage_2/dpo")]  # stage 0 trains nothing

    for n in (0, 2):
        with open(run / f"stage_{n}" / "submission.csv", newline="") as fh:
            sub = list(csv.reader(fh))
        # the held-out split of q0..q9 (the 30 % of ids with the smallest SHA-256), in file order
        assert sub[0] == ["id", "answer"] and [r[0] for r in sub[1:]] == ["q4", "q5", "q7"]
        grades = _read_jsonl(run / f"stage_{n}" / "grades.jsonl")
        assert [(g["id"], g["gold"], g["answer"]) for g in grades] == \
            [(r[0], _qa(int(r[0][1:]))["answer"], r[1]) for r in sub[1:]]
        m = json.loads((run / f"stage_{n}" / "metrics.json").read_text())
        assert (m["labels"], m["test_n"], m["model_name"]) == (n, 3, f"rlhf_{n}_labels")
        assert m["seconds"] >= m["seconds_train"] + m["seconds_eval"] - 0.2 and m["seconds_eval"] > 0
    m0 = json.loads((run / "stage_0" / "metrics.json").read_text())
    m2 = json.loads((run / "stage_2" / "metrics.json").read_text())
    assert m0["policy"] == str(tiny_path) and (run / "stage_0" / "labels.jsonl").read_text() == ""
    assert m2["policy"] == str(run / "stage_2" / "dpo" / "final")
    assert [r["id"] for r in _read_jsonl(run / "stage_2" / "labels.jsonl")] == \
        [f"p{i}" for i in np.random.default_rng(0).permutation(10)[:2]]
    curves = json.loads((tmp_path / "run" / "curves.json").read_text())
    assert [n for n, _ in curves["curves"]["random"]] == [0, 2]

    reg = open_registry(db)
    stages = {m["name"]: m for m in reg.list_models() if m["stage"] == "loop"}
    assert sorted(stages) == ["rlhf_0_labels", "rlhf_2_labels"]
    r0, r2 = stages["rlhf_0_labels"], stages["rlhf_2_labels"]
    assert (r0["parent_id"], r0["metrics"]["labels"], r0["path"]) == (sft_id, 0, str(tiny_path.resolve()))
    assert (r2["parent_id"], r2["metrics"]["labels"]) == (r0["id"], 2)
    assert r2["path"] == str((run / "stage_2" / "dpo" / "final").resolve())
    assert (m0["model_id"], m2["model_id"], m2["parent_id"]) == (r0["id"], r2["id"], r0["id"])
    assert [c["name"] for c in reg.lineage("rlhf_2_labels")["chain"]] == ["rlhf_2_labels", "rlhf_0_labels", "sft"]
    # the DPO trainer's own run went to the same registry (the loop passes --db on)
    assert [m["name"] for m in reg.list_models() if m["stage"] == "dpo"] == ["dpo-dpo"]

    markers = {n: (run / f"stage_{n}" / "done").stat().st_mtime_ns for n in (0, 2)}
    calls = _spy_stages(monkeypatch)

    def no_answers(*a, **k):
        raise AssertionError("a finished stage answered its test questions again")

    monkeypatch.setattr(loop_training, "answers_and_confidence", no_answers)
    loop.run(cfg)
    assert calls == []
    assert {n: (run / f"stage_{n}" / "done").stat().st_mtime_ns for n in (0, 2)} == markers
    assert len([m for m in reg.list_models() if m["stage"] == "loop"]) == 2
