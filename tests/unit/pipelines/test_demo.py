"""``alignloop demo`` = the staged loop on tiny: one submission per stage with the held-out ids, one registered model
per stage (labels, parent), the reward model's score inside the RL reward, the ablation at the last stage, the
report, and a second run that reuses every finished step; the graded rule reward and the stage specs."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest

from alignloop.core.config import ConfigError
from alignloop.pipelines.config import DemoConfig, LoopConfig, stage_count

# the 30 % of the first 10 FinanceBench ids with the smallest SHA-256 (heldout_ids), in file order
HELDOUT = ["financebench_id_01858", "financebench_id_02987", "financebench_id_03856"]
RM_SCORE = 4.0  # what the patched reward model gives every answer
RM_WEIGHT = 0.5


def _ids(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "answer"]
    return [r[0] for r in rows[1:]]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cfg(tiny_path, out: Path) -> DemoConfig:
    return DemoConfig(model=str(tiny_path), output=str(out), limit=10, sft_steps=1, num_candidates=2,
                      max_new_tokens=3, context_chars=100, stages=["0", "3", "all"], dpo_steps=1, rl_steps=1,
                      rl_generations=2, rm_weight=RM_WEIGHT, batch_size=2, max_length=64,
                      db=f"sqlite:///{out / 'registry.db'}").validate()


@pytest.fixture(scope="module")
def demo(tiny_path, tmp_path_factory):
    """One demo run on tiny, its reward models scoring every answer RM_SCORE (so the rm: term's share of the
    GRPO reward is known exactly)."""
    from alignloop.pipelines.demo import run
    from alignloop.trainers.reward_sources import RewardModelSource

    out = tmp_path_factory.mktemp("demo") / "demo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RewardModelSource, "score", lambda self, prompts, completions, rows: [RM_SCORE] * len(completions))
        report = run(_cfg(tiny_path, out))
    pool = len(_jsonl(out / "judge" / "preferences.jsonl"))
    assert pool > 3  # 7 training questions x 3 candidates (2 sampled + the gold): ties left out
    return out, report, pool


def _stage(out: Path, n: int) -> Path:
    return out / "loop" / "random" / f"stage_{n}"


def test_demo_writes_one_submission_per_stage_with_the_heldout_ids(demo):
    out, report, pool = demo
    assert json.loads((out / "data" / "done").read_text())["result"] == {"train": 7, "test": 3}  # gold targets
    assert sorted(p.name for p in (out / "loop" / "random").iterdir()) == sorted(f"stage_{n}" for n in (0, 3, pool))
    for n in (0, 3, pool):
        assert _ids(_stage(out, n) / "submission.csv") == HELDOUT
        grades = _jsonl(_stage(out, n) / "grades.jsonl")
        assert [g["id"] for g in grades] == HELDOUT and all(g["grade"] in ("correct", "incorrect", "refusal")
                                                            for g in grades)
        m = json.loads((_stage(out, n) / "metrics.json").read_text())
        assert (m["labels"], m["test_n"]) == (n, 3)
    assert _ids(out / "base_eval" / "submission.csv") == HELDOUT
    assert _ids(out / "ablation" / "dpo" / "submission.csv") == HELDOUT
    # stage 0 is the SFT model alone; later stages: reward model, DPO on the pairs it sees, GRPO from the DPO model
    sft = json.loads((out / "sft" / "done").read_text())["result"]
    m0, m3 = (json.loads((_stage(out, n) / "metrics.json").read_text()) for n in (0, 3))
    assert m0["policy"] == sft and "seconds_dpo" not in m0
    assert m3["dpo_policy"] == str(_stage(out, 3) / "dpo" / "final")
    assert m3["policy"] == str(_stage(out, 3) / "grpo" / "final")
    assert m3["dpo_pairs"] == 2 and len(_jsonl(_stage(out, 3) / "dpo_pairs.jsonl")) == 2  # 1 step x 2 pairs
    assert {"seconds_reward", "seconds_dpo", "seconds_grpo", "seconds_eval", "seconds"} <= set(m3)
    import yaml

    grpo = yaml.safe_load((_stage(out, 3) / "grpo" / "config.yaml").read_text())
    assert (grpo["model"], grpo["prompts"]) == (m3["dpo_policy"], str(out / "loop" / "rl_prompts.jsonl"))
    train_ids = [r["id"] for r in _jsonl(out / "data" / "train.jsonl")]
    assert [r["id"] for r in _jsonl(out / "loop" / "rl_prompts.jsonl")] == train_ids and \
        not set(train_ids) & set(HELDOUT)


def test_each_trained_stage_declines_where_it_is_unsure_and_stage_0_only_measures_it(demo):
    """abstain_below (-0.8 by default) is written into each trained stage's model folder and applied to its
    held-out answers; stage 0 (the SFT model, a folder the loop does not own) keeps its answers and records what
    declining would have given. tiny's confidence in its random answers is far below -0.8: every one declines."""
    from alignloop.generation.abstention import read_abstention
    from alignloop.pipelines.config import DECLINE_TEXT

    out, _, pool = demo
    for n in (3, pool):
        final = _stage(out, n) / "grpo" / "final"
        assert read_abstention(final) == read_abstention(_stage(out, n) / "grpo")
        assert read_abstention(final).min_confidence == -0.8 and read_abstention(final).decline == DECLINE_TEXT
        grades = _jsonl(_stage(out, n) / "grades.jsonl")
        assert [g["answer"] for g in grades] == [DECLINE_TEXT] * 3
        assert all(g["confidence"] < -0.8 and g["policy_answer"] != DECLINE_TEXT for g in grades)
        m = json.loads((_stage(out, n) / "metrics.json").read_text())
        # (tiny's random answers grade as refusals too: the grader finds no claim in them)
        assert (m["test_refusal"], m["test_with_abstention"]["refusal"], m["test_policy_alone"]["n"]) == (3, 3, 3)
        assert m["abstention"] == {"min_confidence": -0.8, "decline": DECLINE_TEXT}
    sft = json.loads((out / "sft" / "done").read_text())["result"]
    assert read_abstention(sft) is None
    g0 = _jsonl(_stage(out, 0) / "grades.jsonl")
    assert all(g["answer"] == g["policy_answer"] != DECLINE_TEXT for g in g0)
    m0 = json.loads((_stage(out, 0) / "metrics.json").read_text())
    assert m0["test_with_abstention"]["refusal"] == 3 and "abstention" not in m0
    # no candidate the judge compared was replaced by the declining text
    assert not any(DECLINE_TEXT in (r["chosen"], r["rejected"]) for r in _jsonl(out / "judge" / "preferences.jsonl"))


def test_demo_registers_one_model_per_stage_with_its_labels_and_parent(demo):
    from alignloop.registry.store import open_registry

    out, _, pool = demo
    reg = open_registry(f"sqlite:///{out / 'registry.db'}")
    models = {m["name"]: m for m in reg.list_models()}
    stages = {k: v for k, v in models.items() if v["stage"] == "loop"}
    assert sorted(stages) == sorted(f"rlhf_{n}_labels" for n in (0, 3, pool))
    sft = [m for m in models.values() if m["stage"] == "sft"]
    assert len(sft) == 1
    r0, r3, rall = (stages[f"rlhf_{n}_labels"] for n in (0, 3, pool))
    assert [r["metrics"]["labels"] for r in (r0, r3, rall)] == [0, 3, pool]
    assert (r0["parent_id"], r3["parent_id"], rall["parent_id"]) == (sft[0]["id"], r0["id"], r3["id"])
    assert rall["path"] == str((_stage(out, pool) / "grpo" / "final").resolve())
    assert [c["name"] for c in reg.lineage(f"rlhf_{pool}_labels")["chain"]][:3] == \
        [f"rlhf_{pool}_labels", "rlhf_3_labels", "rlhf_0_labels"]


def test_the_reward_models_score_reaches_the_rl_step(demo):
    """Each stage's GRPO reward is the graded rule plus RM_WEIGHT x the stage's own reward model: with the reward
    model scoring every answer RM_SCORE, the logged reward is the rule's mean plus exactly RM_WEIGHT x RM_SCORE.
    Without the rm: term there is no rm source in the log and the total equals the rule's mean."""
    out, _, pool = demo
    for n in (3, pool):
        m = json.loads((_stage(out, n) / "metrics.json").read_text())
        assert m["rl_reward"] == ["python:alignloop.rewards:financebench_graded",
                                  f"rm:{_stage(out, n) / 'reward' / 'final'}:{RM_WEIGHT}"]
        steps = [r for r in _jsonl(_stage(out, n) / "grpo" / "metrics.jsonl") if "objective/reward" in r]
        assert len(steps) == 1
        s = steps[0]
        assert s["objective/reward/rm:final"] == RM_SCORE
        assert s["objective/reward"] - s["objective/reward/python:financebench_graded"] == \
            pytest.approx(RM_WEIGHT * RM_SCORE, abs=1e-5)


def test_demo_ablation_and_report(demo, tiny_path):
    out, report, pool = demo
    assert report == out / "report.md"
    r = json.loads((out / "report.json").read_text())
    sft = json.loads((out / "sft" / "done").read_text())["result"]
    assert [(p["name"], p["model"]) for p in r["parts"]] == [
        ("base model (no training)", str(tiny_path)), ("+ SFT (stage 0)", sft),
        (f"+ DPO ({pool} labels)", str(_stage(out, pool) / "dpo" / "final")),
        ("+ RL (GRPO: graded rule + reward model)", str(_stage(out, pool) / "grpo" / "final")),
        ("+ declining when unsure (confidence below -0.8)", str(_stage(out, pool) / "grpo" / "final"))]
    for p in r["parts"]:
        assert p["n"] == 3 and p["correct"] + p["incorrect"] + p["refusal"] == 3
    # the same items: each part's McNemar counts add up to the 3 held-out questions
    assert all(p["mcnemar_correct_vs_base"]["n"] == 3 for p in r["parts"][1:])
    assert [s["labels"] for s in r["stages"]] == [0, 3, pool]
    assert [(c["stage"], c["trainer"]) for c in r["training"]] == [("shared", "sft")] + [
        (f"stage_{n}", t) for n in (3, pool) for t in ("reward", "dpo", "grpo")]
    md = report.read_text()
    heads = [line for line in md.splitlines() if line.startswith("## ")]
    assert heads == ["## Verdict", "## Learning curve", "## What each part adds (the last stage's chain, same items)",
                     "## Training curves", "## Grades per context class", "## Habits", "## Wall time",
                     "## Registered models"]
    assert r["verdict"] in md and len(r["parts_said"]) == 4
    # where the final model is, and the command that evaluates it on other questions (its declining rule travels)
    final = r["registry"][-1]["policy"]
    assert final == str(_stage(out, pool) / "grpo" / "final")
    link = out / "final"
    assert link.is_symlink() and link.resolve() == Path(final).resolve() and r["final_model"] == str(link)
    assert md.rstrip().endswith(f"The final model: `{link}`, a link to `{final}` (`rlhf_{pool}_labels` in the "
                                f"registry). On other questions (raw FinanceBench rows or question/context/answer "
                                f"rows): `alignloop eval --model {link} --compare {tiny_path} --data FILE --output "
                                f"runs/eval`.")
    # tiny (random weights) is unsure of every answer: the last part is the declining text 3 times
    assert (r["parts"][-1]["refusal"], r["parts"][-1]["n"]) == (3, 3)
    assert "the SFT model (stage 0) declining by the same rule, measured and not applied: 0 correct, 0 incorrect, " \
        "3 refusals of 3" in (out / "verdict.txt").read_text()
    # the targets are against the base model (no training): every stage, stage 0 included, is tested on it
    lines = r["verdict"].splitlines()
    assert lines[0].startswith("Base: base model: ") and lines[1].startswith("Stage 0 (0 labels) ")
    for png in ("learning_curve", "llmware_points", "training_curves"):
        assert (out / "report" / f"{png}.png").read_bytes()[:4] == b"\x89PNG"


def test_a_second_demo_run_reuses_every_finished_step(demo, tiny_path, monkeypatch, capsys):
    import alignloop
    from alignloop.judges import labeling
    from alignloop.pipelines import demo as demo_mod
    from alignloop.pipelines import loop_training

    out, _, pool = demo

    def refuse(*a, **k):
        raise AssertionError("a finished step ran again")

    for mod, name in ((alignloop, "run_stage"), (alignloop, "train"), (loop_training, "answers_and_confidence"),
                      (labeling, "sample_and_judge"), (demo_mod, "answer_and_grade")):
        monkeypatch.setattr(mod, name, refuse)
    markers = {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("done")}
    assert len(markers) == 4 + 3 + 1  # data, base_eval, sft, judge; 3 stages; the ablation
    capsys.readouterr()
    demo_mod.run(_cfg(tiny_path, out))
    assert capsys.readouterr().err.count("done before, reusing") == 8
    assert {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("done")} == markers


def test_financebench_graded_pays_llmware_points():
    """Declining beats inventing: 1 correct, 0.5 declining, 0 a wrong figure copied from the context, -1 a figure
    found in neither the context nor the gold; the numeric rule pays the last two the same 0."""
    from alignloop.data.readers import qa_prompt
    from alignloop.data.records import Prompt
    from alignloop.trainers.reward_sources import Rewards, financebench_graded, financebench_numeric, reward_specs

    prompt = qa_prompt("What was revenue in FY2022?", "Revenue was 1,577 and costs were 900.")
    text = prompt.text
    answers = ["Revenue was $1,577.", "The context does not contain it.", "900", "9,999"]
    assert [financebench_graded(text, a, answer="$1577.00") for a in answers] == [1.0, 0.5, 0.0, -1.0]
    assert [financebench_numeric(text, a, answer="$1577.00") for a in answers] == [1.0, 0.0, 0.0, 0.0]
    rw = Rewards.from_specs(reward_specs(["python:alignloop.rewards:financebench_graded:2"]))
    total, parts = rw([Prompt(prompt.messages)] * 4, answers, [{"answer": "$1577.00"}] * 4)
    assert total.tolist() == [2.0, 1.0, 0.0, -2.0] and parts == {"objective/reward/python:financebench_graded": 0.125}


def test_stage_counts_and_demo_config_problems(tmp_path):
    assert [stage_count(s, 161) for s in ("0", "1/2", "1/4", "0.25", "25%", "all", "1.0", "40", "1")] == \
        [0, 81, 40, 40, 40, 161, 161, 40, 1]
    for bad in ("x", "3/0", "1.5", "-2", "150%"):
        with pytest.raises(ValueError, match=f"'{bad}'"):
            stage_count(bad, 161)
    with pytest.raises(ConfigError, match=r"stages: the demo's curve starts at 0 .* got \['1/2', 'all'\]"):
        DemoConfig(stages=["1/2", "all"]).validate()
    with pytest.raises(ConfigError, match="stages: 'half' is not a label count"):
        DemoConfig(stages=["0", "half"]).validate()
    # a YAML list of numbers: 0.5 is a fraction, 1 a count (all: "all" or 1.0)
    assert DemoConfig.from_dict({"stages": [0, 0.5, 1.0, "all"]}).stages == ["0", "0.5", "1.0", "all"]
    from alignloop.pipelines.demo import label_counts

    assert label_counts(DemoConfig().validate(), 161) == [0, 81, 161]
    with pytest.raises(ConfigError, match=r"stages: \['0', '1/2', 'all'\] are \[0, 1, 1\] of the judge's 1 labels"):
        label_counts(DemoConfig().validate(), 1)


def test_loop_grpo_method_config_problems(tmp_path):
    (tmp_path / "p.jsonl").write_text("")
    base = dict(output=str(tmp_path / "o"), simulated=False, data=str(tmp_path / "p.jsonl"), dev_data="",
                stages=[0, 2])
    with pytest.raises(ConfigError, match="prompts: the grpo method needs the questions"):
        LoopConfig(methods=["reward", "grpo"], **base).validate()
    with pytest.raises(ConfigError, match="rm_weight: 0.5 weights the stage's reward model .* methods has no reward"):
        LoopConfig(methods=["dpo", "grpo"], prompts=str(tmp_path / "p.jsonl"), **base).validate()
    cfg = LoopConfig(methods=["dpo", "grpo"], prompts=str(tmp_path / "p.jsonl"), rm_weight=0, **base).validate()
    assert cfg.rl_reward == ["python:alignloop.rewards:financebench_graded"]


def test_loop_dpo_subsample_trains_on_the_pairs_its_steps_reach(tmp_path):
    from testutil import write_jsonl

    from alignloop.pipelines.loop_training import dpo_pairs, rl_reward

    rows = [{"id": f"p{i}", "prompt": "q", "chosen": "a", "rejected": "b"} for i in range(10)]
    write_jsonl(tmp_path / "labels.jsonl", rows)
    cfg = LoopConfig(output=str(tmp_path), simulated=False, max_steps=2, batch_size=2, stages=[0, 10])
    assert dpo_pairs(cfg, tmp_path, seed=3) == tmp_path / "labels.jsonl"  # by default DPO gets every label
    cfg = cfg.replace(dpo_subsample=True)
    path = dpo_pairs(cfg, tmp_path, seed=3)
    assert path == tmp_path / "dpo_pairs.jsonl"
    assert [r["id"] for r in _jsonl(path)] == [f"p{i}" for i in sorted(random.Random(3).sample(range(10), 4))]
    assert dpo_pairs(cfg.replace(max_steps=5), tmp_path, seed=3) == tmp_path / "labels.jsonl"  # 10 steps reach all
    assert rl_reward(cfg, "/x/reward/final") == ["python:alignloop.rewards:financebench_graded",
                                                 "rm:/x/reward/final:0.5"]
    assert rl_reward(cfg.replace(rm_weight=0.0), "/x/reward/final") == ["python:alignloop.rewards:financebench_graded"]


def test_loop_grpo_refuses_test_questions_as_prompts(tmp_path):
    from testutil import write_jsonl

    from alignloop.pipelines.loop_training import Inputs

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"id": f"q{i}", "question": f"What is {i} plus {i}?",
                                              "context": f"{i} plus {i} is {2 * i}.", "answer": str(2 * i)}
                                             for i in range(4)])
    pool = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "q", "chosen": "a", "rejected": "b"}])
    cfg = LoopConfig(output=str(tmp_path / "run"), simulated=False, data=str(pool), dev_data="", test_data=str(qa),
                     prompts=str(qa), prompts_split="all", methods=["dpo", "grpo"], rm_weight=0, stages=[0, 1],
                     model="tiny").validate()
    with pytest.raises(ConfigError, match="prompts: 4 of the questions GRPO would learn from are test_data questions"):
        Inputs(cfg)


def test_grounded_sft_demonstrations_decline_where_the_context_lacks_the_answer():
    """sft_targets: grounded keeps the gold where the built context holds it and puts decline_text elsewhere (the
    literal rows); gold keeps the gold always; the default decline text reads as a refusal to the scorer."""
    from alignloop.evaluate.qa import grade, is_refusal
    from alignloop.pipelines.config import DECLINE_TEXT
    from alignloop.pipelines.demo import sft_demonstrations

    rows = [{"id": "a", "question": "What was revenue in FY2022?", "context": "Revenue was $1,577 million.",
             "answer": "$1,577 million", "context_class": "in_context"},
            {"id": "b", "question": "What was the FY2022 operating margin?", "context": "Revenue 100, costs 80.",
             "answer": "20%", "context_class": "arithmetic"},
            {"id": "c", "question": "Who audits the company?", "context": "Revenue 100.", "answer": "KPMG",
             "context_class": "missing"}]
    grounded = sft_demonstrations(DemoConfig(sft_targets="grounded").validate(), rows)
    assert [r["completion"] for r in grounded] == ["$1,577 million", DECLINE_TEXT, DECLINE_TEXT]
    assert [r["id"] for r in grounded] == ["a", "b", "c"]
    assert "Context:\nRevenue was $1,577 million." in grounded[0]["prompt"][0]["content"]
    assert [r["completion"] for r in sft_demonstrations(DemoConfig(sft_targets="gold").validate(), rows)] == \
        ["$1,577 million", "20%", "KPMG"]
    assert is_refusal(DECLINE_TEXT) and grade(DECLINE_TEXT, "20%", rows[1]["question"])[0] == "refusal"
    with pytest.raises(ConfigError, match="decline_text: grounded SFT targets need"):
        DemoConfig(sft_targets="grounded", decline_text=" ").validate()
    with pytest.raises(ConfigError, match="sft_targets: 'all' is not one of gold, grounded, contrastive"):
        DemoConfig.from_dict({"sft_targets": "all"}).validate()


def test_contrastive_sft_pairs_each_in_context_question_with_its_context_without_the_answer():
    """sft_targets: contrastive: the in-context question is trained twice, with its context (the gold) and with the
    answer's line taken out of its evidence (decline_text, id ``a#without``); answers are repeated to balance the
    declines. context_without_answer drops exactly the line holding the figure and keeps the rest."""
    from alignloop.pipelines.config import DECLINE_TEXT
    from alignloop.pipelines.demo import context_without_answer, sft_demonstrations

    evidence = "Capital expenditures were $1,577 million.\nRevenue was $32,765 million.\nEmployees: 93,000."
    q = "What was the FY2018 capital expenditure?"
    assert context_without_answer(q, evidence, "$1,577 million", 800) == \
        "Revenue was $32,765 million.\nEmployees: 93,000."
    assert context_without_answer(q, "Capital expenditures were $1,577 million.", "$1,577 million", 800) is None
    rows = [{"id": "a", "question": q, "context": "Capital expenditures were $1,577 million.",
             "context_without_answer": "Revenue was $32,765 million.", "answer": "$1,577 million",
             "context_class": "in_context"},
            {"id": "b", "question": "What was the operating margin?", "context": "Revenue 100, costs 80.",
             "answer": "20%", "context_class": "arithmetic"},
            {"id": "c", "question": "Who audits the company?", "context": "Revenue 100.", "answer": "KPMG",
             "context_class": "missing"}]
    out = sft_demonstrations(DemoConfig(sft_targets="contrastive", sft_answer_share=0.5).validate(), rows)
    assert [(r["id"], r["completion"]) for r in out] == [
        ("a", "$1,577 million"), ("a", "$1,577 million"), ("a", "$1,577 million"),
        ("a#without", DECLINE_TEXT), ("b", DECLINE_TEXT), ("c", DECLINE_TEXT)]
    assert "Context:\nRevenue was $32,765 million." in out[3]["prompt"][0]["content"]
    three_quarters = sft_demonstrations(DemoConfig(sft_targets="contrastive", sft_answer_share=0.75).validate(), rows)
    assert [r["id"] for r in three_quarters] == ["a"] * 9 + ["a#without", "b", "c"]
    with pytest.raises(ConfigError, match="sft_answer_share: must be between 0 and 1"):
        DemoConfig(sft_answer_share=1.0).validate()


def test_demo_step_keys_chain_so_a_changed_setting_redoes_what_follows():
    """The SFT's key holds the data's, the judge's holds the SFT's: changing the SFT targets changes all three keys,
    a later setting (the decline candidate) only the judge's."""
    from alignloop.pipelines.demo import step_keys

    a = step_keys(DemoConfig().validate())
    b = step_keys(DemoConfig(sft_targets="grounded").validate())
    c = step_keys(DemoConfig(decline_candidate="I cannot tell.").validate())
    d = step_keys(DemoConfig(decline_candidate="I cannot tell.", judge_gold="in_context").validate())
    assert [c[k] != d[k] for k in ("data", "sft", "judge")] == [False, False, True]
    with pytest.raises(ConfigError, match="decline_candidate: judge_gold: in_context needs a declining candidate"):
        DemoConfig(judge_gold="in_context", decline_candidate="").validate()
    assert [a[k] != b[k] for k in ("data", "sft", "judge")] == [True, True, True]
    assert [a[k] != c[k] for k in ("data", "sft", "judge")] == [False, False, True]
    assert a["judge"]["sft"]["data"] == a["data"]
