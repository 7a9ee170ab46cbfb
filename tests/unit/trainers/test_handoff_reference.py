"""Issue #17, items 3, 4 and 6: a trainer's reference is the model its config names, on the run's device, and a
trainer started from any folder alignloop writes (here: an unmerged LoRA adapter folder) trains, against a
reference equal to the policy it started from. Expected values come from plain forward passes of models loaded
independently of the trainers."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignloop.data.readers import write_jsonl
from alignloop.models import load
from alignloop.trainers.config import DPOConfig, GRPOConfig, PPOConfig, RLOOConfig, SFTConfig

IDS = torch.tensor([[1, 4093, 198, 26843, 30, 2, 7, 311]])
#: tiny's LoRA-able Linear layers per decoder layer as (in, out): q, k, v, o, gate, up, down (hidden 64,
#: intermediate 128, 4 heads of 16, 2 key/value heads → k and v project to 32)
TINY_LINEARS = [(64, 64), (64, 32), (64, 32), (64, 64), (64, 128), (64, 128), (128, 64)]
#: all of tiny's weights: the (tied) embedding 49152 x 64, per layer the 7 Linears and 2 norms, the final norm
TINY_PARAMS = 49152 * 64 + 2 * (sum(i * o for i, o in TINY_LINEARS) + 2 * 64) + 64


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh alignloop home (empty caches) that shares the built tiny model."""
    load.resolve_model("tiny")
    h = tmp_path / "home"
    h.mkdir()
    (h / "models").symlink_to(load.models_home())
    monkeypatch.setenv("ALIGNLOOP_HOME", str(h))
    return h


def perturbed_tiny(folder: Path, seed: int, scale: float = 0.05) -> Path:
    """tiny with every weight moved by seeded noise: a model the reference can differ from."""
    model, tok = load.load_causal_lm("tiny")
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale)
    return load.save_model(model, tok, folder)


def sft_adapter(folder: Path) -> Path:
    """What ``sft --lora --no-merge-lora`` writes: a peft adapter folder over tiny whose adapter changes the model."""
    model, tok = load.load_causal_lm("tiny")
    model = load.add_lora(model, r=4, alpha=8, dropout=0.0, targets=["q_proj", "v_proj", "down_proj"])
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    out = load.save_model(model, tok, folder, merge_lora=False, base_name="tiny")
    assert (out / "adapter_config.json").exists() and not (out / "config.json").exists()
    return out


def logprobs(model) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(input_ids=IDS).logits.float(), -1)


def n_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# --------------------------------------------------------------------------------------------------
# item 3: dpo --lora --reference X uses X, and the cache cannot hand X's entry the wrong model's log-probs
# --------------------------------------------------------------------------------------------------


def _pairs(tmp_path: Path) -> Path:
    rows = [{"prompt": [{"role": "user", "content": f"question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"a helpful answer number {i}"}],
             "rejected": [{"role": "assistant", "content": "no"}]} for i in range(4)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _dpo(tmp_path: Path, name: str, **kw) -> float:
    """One DPO step over all 4 pairs (``_pairs`` wrote them); its loss."""
    from alignloop.trainers.dpo import run

    fields = dict(model="tiny", data=str(tmp_path / "pairs.jsonl"), output=str(tmp_path / name), max_steps=1,
                  batch_size=4, learning_rate=1e-3, lr_schedule="constant", max_length=64, precision="fp32")
    fields.update(kw)
    run(DPOConfig.from_dict(fields).validate())
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return next(r["loss"] for r in rows if r["step"] == 1 and "loss" in r)


def expected_step1_loss(tmp_path: Path, policy: str, reference: str, beta: float = 0.1) -> float:
    """Mean DPO loss of the 4 pairs from plain, one-sequence-at-a-time forwards of the two models."""
    from alignloop.data.readers import read_preferences
    from alignloop.trainers.dpo import tokenize_pairs

    pol, tok = load.load_causal_lm(policy)
    ref, _ = load.load_causal_lm(reference)
    segs, _ = tokenize_pairs(read_preferences(str(tmp_path / "pairs.jsonl")), tok, 64, "left")
    assert len(segs) == 4

    def logp(model, prompt, answer):
        with torch.no_grad():
            lp = torch.log_softmax(model(input_ids=torch.tensor([prompt + answer])).logits[0].float(), -1)
        return sum(lp[len(prompt) - 1 + j, t].item() for j, t in enumerate(answer))

    losses = []
    for s in segs:
        (pc, pr), (rc, rr) = [[logp(m, s.prompt_ids, a) for a in s.answers] for m in (pol, ref)]
        losses.append(-math.log(1 / (1 + math.exp(-beta * ((pc - rc) - (pr - rr))))))
    return sum(losses) / len(losses)


def test_dpo_lora_reference_is_the_named_model_and_its_cache_agrees(home, tmp_path, capsys):
    _pairs(tmp_path)
    x = str(perturbed_tiny(tmp_path / "x", seed=1))
    want = expected_step1_loss(tmp_path, "tiny", x)
    assert abs(want - math.log(2)) > 1e-3  # X differs from the policy: not DPO's log 2 of policy == reference
    # --lora starts as the identity (B = 0), so step 1's policy is tiny itself, as in the full fine-tune
    assert _dpo(tmp_path, "lora", lora=True, reference=x) == pytest.approx(want, abs=1e-5)
    capsys.readouterr()
    # the case: a full fine-tune with the same --reference read 0.693147 from the --lora run's cache
    # against 0.619341 recomputed
    from_cache = _dpo(tmp_path, "full", reference=x)
    assert "reference log-probs for train: from cache" in capsys.readouterr().err
    recomputed = _dpo(tmp_path, "full-nocache", reference=x, cache_reference=False)
    assert from_cache == pytest.approx(recomputed, abs=1e-6)
    assert from_cache == pytest.approx(want, abs=1e-5)


def test_dpo_reference_key_names_the_reference_its_adapter_state_and_the_tokens(home, tmp_path):
    from alignloop.trainers.dpo import Segment, reference_key

    x = str(perturbed_tiny(tmp_path / "x", seed=1))
    adapter = str(sft_adapter(tmp_path / "adapter"))
    segs = [Segment([1, 2, 3], [[4, 5], [6]])]

    def key(**kw):
        cfg = DPOConfig(data="d", output="o", **{"model": "tiny", **kw})
        return reference_key(cfg, "train", segs, "fp32")

    # the reference is the model named: X, whatever the policy and however it is trained
    assert key(reference=x) == key(reference=x, lora=True) == key(model=adapter, reference=x)
    # X's log-probs are the same function whether X is trained (full or --lora) or only named: one entry
    assert key(model=x) == key(model=x, lora=True) == key(reference=x)
    # ... and none of them is the entry of the starting model (a --lora run's adapter-off policy)
    assert key(reference=x) != key() == key(lora=True)
    # adapter state: the adapter folder (merged into tiny) is not tiny, and names its base
    a = key(model=adapter)
    assert a != key() and a[2]["reference"][-1]["adapter"] == "merged into its base"
    assert a[2]["reference"][-1]["base"] == key()[2]["reference"]
    # the tokenisation: other token ids, another key; and never the old (0.2.0) layout
    other = reference_key(DPOConfig(model="tiny", data="d", output="o"), "train", [Segment([1, 2, 3], [[4], [6]])],
                          "fp32")
    assert other != key() and key()[0] == "dpo-ref/2"


# --------------------------------------------------------------------------------------------------
# item 6: a --reference model runs on the run's device
# --------------------------------------------------------------------------------------------------


def test_dpo_reference_model_is_moved_to_the_runs_device(home, tmp_path, monkeypatch):
    from alignloop.trainers import engine

    _pairs(tmp_path)
    x = str(perturbed_tiny(tmp_path / "x", seed=1))
    moved, runs = [], []
    real_load, real_setup = load.load_causal_lm, engine.setup

    def spy_load(name, *a, **kw):
        model, tok = real_load(name, *a, **kw)
        if str(name) == x:  # the reference: record where it is sent
            to = model.to
            model.to = lambda *args, **kwargs: (moved.append(args[0] if args else kwargs["device"]),
                                                to(*args, **kwargs))[1]
        return model, tok

    def spy_setup(cfg):
        runs.append(real_setup(cfg))
        return runs[-1]

    monkeypatch.setattr(load, "load_causal_lm", spy_load)
    monkeypatch.setattr(engine, "setup", spy_setup)
    _dpo(tmp_path, "run", reference=x, cache_reference=False)
    assert [str(d) for d in moved] == [str(runs[0].device)]


# --------------------------------------------------------------------------------------------------
# item 4: every trainer from an unmerged LoRA folder trains, against the policy it started from
# --------------------------------------------------------------------------------------------------


def _cfg(cls, adapter: str, lora: bool, tmp_path: Path):
    common = dict(model=adapter, output=str(tmp_path / "o"), lora=lora, lora_r=8, lora_alpha=16)
    if cls in (PPOConfig, GRPOConfig, RLOOConfig):
        return cls(prompts="p", reward=["python:x.py:f"], **common)
    return cls(data="d", **common)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
@pytest.mark.parametrize("cls", [PPOConfig, GRPOConfig, RLOOConfig, DPOConfig, SFTConfig],
                         ids=["ppo", "grpo", "rloo", "dpo", "sft"])
def test_start_from_unmerged_lora_folder_trains_against_the_starting_policy(home, tmp_path, cls, lora):
    from alignloop.trainers.dpo import reference_mode
    from alignloop.trainers.rl_common import build_policy, reference

    adapter = str(sft_adapter(tmp_path / "adapter"))
    start, _ = load.load_causal_lm(adapter)  # base + SFT adapter, loaded apart from any trainer
    start.eval()
    want = logprobs(start)
    assert not torch.allclose(want, logprobs(load.load_causal_lm("tiny")[0]), atol=1e-3)  # the adapter matters
    cfg = _cfg(cls, adapter, lora, tmp_path)
    if cls in (PPOConfig, GRPOConfig, RLOOConfig):
        policy, ref, _ = build_policy(cfg, SimpleNamespace(device="cpu"))
        assert (ref is None) == lora
        with reference(policy, ref) as m:
            m.eval()
            got_ref = logprobs(m)
    else:
        policy, ref, _ = load.load_policy_and_reference(cfg, "cpu", keep_reference=False)
        assert ref is None
        with reference_mode(policy):
            got_ref = logprobs(policy)
    # a fresh LoRA adapter of rank 8 on every Linear of both layers: r x (in + out) each; else all of tiny
    assert n_trainable(policy) == (2 * sum(8 * (i + o) for i, o in TINY_LINEARS) if lora else TINY_PARAMS)
    assert torch.allclose(got_ref, want, atol=1e-5)
    policy.eval()
    assert torch.allclose(logprobs(policy), want, atol=1e-5)  # the policy starts as the SFT model too


def test_unmerged_output_of_a_run_started_from_an_adapter_folder_reloads(home, tmp_path):
    """``--lora --no-merge-lora`` from an adapter folder saves an adapter over the merged (base + SFT) model; its
    base is that folder, which loading merges first."""
    adapter = str(sft_adapter(tmp_path / "adapter"))
    policy, tok = load.load_trainable(_cfg(DPOConfig, adapter, True, tmp_path))
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    policy.eval()
    want = logprobs(policy)
    out = load.save_model(policy, tok, tmp_path / "out", merge_lora=False, base_name=adapter)
    reloaded, _ = load.load_causal_lm(str(out))
    reloaded.eval()
    assert torch.allclose(logprobs(reloaded), want, atol=1e-5)


def test_reward_model_from_an_unmerged_lora_folder_starts_from_base_plus_adapter(home, tmp_path):
    """``reward train --model <sft --no-merge-lora output>``: the reward model's backbone is the SFT policy
    (base + adapter merged), not a failed load of the adapter folder nor the bare base."""
    from alignloop.models.reward_model import build_reward_model

    folder = sft_adapter(tmp_path / "sft")
    rm = build_reward_model(str(folder), backbone="causal")
    merged, _ = load.load_causal_lm(str(folder), merge_adapter=True)
    bare, _ = load.load_causal_lm("tiny")
    want = dict(merged.base_model.named_parameters())
    got = dict(rm.model.base_model.named_parameters())
    assert sorted(got) == sorted(want)
    for name, p in got.items():
        assert torch.equal(p, want[name]), name
    q = "layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q], dict(bare.base_model.named_parameters())[q])  # the adapter is in
