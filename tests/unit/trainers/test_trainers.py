"""What every trainer shares: the runner convention, the optimiser builder, the cached-examples helper, the autocast."""

import subprocess
import sys
from contextlib import nullcontext
from types import SimpleNamespace

import pytest
import torch

from alignloop.data.batching import cache_key, cached_examples, file_fingerprint
from alignloop.trainers import engine


def test_every_trainer_config_names_its_module_run_and_the_old_names_still_work():
    from alignloop.pipelines.stages import load_ref
    from alignloop.trainers import config

    runners = {c.__name__: c.runner for c in (config.SFTConfig, config.RewardTrainConfig, config.DPOConfig,
                                              config.PPOConfig, config.GRPOConfig, config.RLOOConfig)}
    assert runners == {"SFTConfig": "alignloop.trainers.sft:run", "RewardTrainConfig": "alignloop.trainers.reward:run",
                       "DPOConfig": "alignloop.trainers.dpo:run", "PPOConfig": "alignloop.trainers.ppo:run",
                       "GRPOConfig": "alignloop.trainers.grpo:run", "RLOOConfig": "alignloop.trainers.rloo:run"}
    assert all(callable(load_ref(r)) for r in runners.values())
    import alignloop.train.grpo
    import alignloop.train.reward

    assert alignloop.train.reward.run_train is alignloop.train.reward.run
    assert alignloop.train.grpo.run_grpo is alignloop.train.grpo.run_rloo is alignloop.train.grpo.run


def test_grpo_does_not_import_ppo():
    code = ("import sys, alignloop.trainers.grpo, alignloop.trainers.rloo; "
            "print('alignloop.trainers.ppo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------------------------------
# the optimiser builder
# --------------------------------------------------------------------------------------------------


def _net(d: int = 3) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.LayerNorm(d), torch.nn.Linear(d, 1, bias=False))


def test_build_optimizer_groups_spare_biases_and_norms_in_every_group():
    policy, critic = _net(), _net()
    opt = engine.build_optimizer([{"params": policy, "lr": 1e-3}, {"params": critic, "lr": 5e-3}], 2e-5,
                                 weight_decay=0.1)
    groups = [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups]
    # per model: two weight matrices decayed; the bias and the norm's weight and bias not
    assert groups == [(1e-3, 0.1, 2), (1e-3, 0.0, 3), (5e-3, 0.1, 2), (5e-3, 0.0, 3)]
    one = engine.build_optimizer(policy, 2e-5, weight_decay=0.1)
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in one.param_groups] == [(2e-5, 0.1, 2),
                                                                                          (2e-5, 0.0, 3)]


def test_a_checkpointed_optimiser_with_the_old_ppo_groups_resumes_into_the_new_ones():
    """PPO's optimiser had one group per model (everything decayed); its checkpoints still resume."""
    policy, critic = _net(), _net()
    both = torch.nn.ModuleDict({"policy": policy, "critic": critic})
    old = torch.optim.AdamW([{"params": list(policy.parameters()), "lr": 1e-3},
                             {"params": list(critic.parameters()), "lr": 5e-3}], weight_decay=0.1)
    old_sched = engine.build_scheduler(old, "linear", 0, 10)
    (policy(torch.ones(2, 3)).sum() + 2 * critic(torch.ones(2, 3)).sum()).backward()
    old.step()
    old_sched.step()
    groups = [{"params": policy, "lr": 1e-3}, {"params": critic, "lr": 5e-3}]
    with pytest.raises(ValueError):  # what loading it as it is does
        engine.build_optimizer(groups, 1e-3, 0.1).load_state_dict(old.state_dict())
    new = engine.build_optimizer(groups, 1e-3, 0.1)
    sched = engine.build_scheduler(new, "linear", 0, 10)
    optim_state, sched_state = engine.regrouped_states(old.state_dict(), old_sched.state_dict(), new, both)
    new.load_state_dict(optim_state)
    sched.load_state_dict(sched_state)
    for p in both.parameters():
        assert torch.equal(new.state[p]["exp_avg"], old.state[p]["exp_avg"])
        assert torch.equal(new.state[p]["exp_avg_sq"], old.state[p]["exp_avg_sq"])
    assert [(g["lr"], g["weight_decay"]) for g in new.param_groups] == [
        (1e-3 * 0.9, 0.1), (1e-3 * 0.9, 0.0), (5e-3 * 0.9, 0.1), (5e-3 * 0.9, 0.0)]
    sched.step()
    assert [g["lr"] for g in new.param_groups] == pytest.approx([1e-3 * 0.8] * 2 + [5e-3 * 0.8] * 2)
    same = engine.build_optimizer(policy, 1e-3, 0.1)
    state = same.state_dict()
    assert engine.regrouped_states(state, {}, same, policy) == (state, {})


# --------------------------------------------------------------------------------------------------
# the cached-examples helper
# --------------------------------------------------------------------------------------------------


def test_cache_key_scheme_is_unchanged():
    # literal: a user's existing token and reference caches must still be found
    assert cache_key("sft", {"size": 10, "mtime": 5, "head": "ab"}, "tiny", 49152, 512, "left", True, None) == \
        "4bb80a1c997bcf99fabc"
    assert cache_key("dpo-ref", "train", ["x"], {"size": 1}, 64, "left", True, None, "fp32", False, 8) == \
        "fe272653993b3a57e44c"


def test_cached_examples_are_written_by_the_main_process_only(tmp_path, monkeypatch):
    built = []

    def build():
        built.append(1)
        return {"n": len(built)}

    assert cached_examples(("k", 1), tmp_path, build, is_main=False) == {"n": 1}
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "1")  # under a launcher, rank 1 by default does not write either
    assert cached_examples(("k", 1), tmp_path, build) == {"n": 2}
    assert not list(tmp_path.iterdir())
    monkeypatch.setenv("RANK", "0")
    assert cached_examples(("k", 1), tmp_path, build) == {"n": 3}
    assert [p.name for p in tmp_path.iterdir()] == [f"{cache_key('k', 1)}.pt"]
    assert cached_examples(("k", 1), tmp_path, build, is_main=False) == {"n": 3}  # a hit: not built again
    assert len(built) == 3


def _home(tmp_path, monkeypatch):
    from alignloop.models.load import models_home, resolve_model

    resolve_model("tiny")
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").symlink_to(models_home())
    monkeypatch.setenv("ALIGNLOOP_HOME", str(home))
    return home


def test_dpo_token_cache_is_written_by_the_main_process_only_under_its_old_key(tmp_path, monkeypatch):
    from alignloop.data.readers import write_jsonl
    from alignloop.models.load import load_causal_lm
    from alignloop.trainers.config import DPOConfig
    from alignloop.trainers.dpo import load_segments

    home = _home(tmp_path, monkeypatch)
    data = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q {i}?", "chosen": "yes", "rejected": "no"}
                                                  for i in range(3)])
    _, tok = load_causal_lm("tiny")
    cfg = DPOConfig(model="tiny", data=str(data), output="x", max_length=64)
    monkeypatch.setenv("RANK", "1")
    segs, _, n = load_segments(cfg, tok, str(data), None)
    assert n == 3 and len(segs) == 3
    assert not (home / "cache" / "tokens").exists()
    monkeypatch.setenv("RANK", "0")
    load_segments(cfg, tok, str(data), None)
    key = cache_key("dpo", "pairs", file_fingerprint(data), tok.name_or_path, len(tok), 64, "left", True, None,
                    "rank-weights-2", "ties-left-out")
    assert [p.name for p in (home / "cache" / "tokens").iterdir()] == [f"{key}.pt"]


def test_dpo_reference_cache_keeps_its_key_and_is_written_by_the_main_process(tmp_path, monkeypatch, capsys):
    from alignloop.models.load import load_causal_lm
    from alignloop.trainers.config import DPOConfig
    from alignloop.trainers.dpo import Segment, model_fingerprint, reference_logps, tokens_digest

    home = _home(tmp_path, monkeypatch)
    data = tmp_path / "pairs.jsonl"
    data.write_text("{}\n")
    model, _ = load_causal_lm("tiny")
    segs = [Segment([1, 2, 3], [[4, 5], [6]]), Segment([7, 8], [[9], [10, 11]])]
    cfg = DPOConfig(model="tiny", data=str(data), output="x", max_length=64)
    logs = []
    run = SimpleNamespace(is_main=False, device="cpu", autocast=nullcontext, precision="fp32", log=logs.append)
    ref = reference_logps(cfg, run, model, segs, "train", 128, 0)
    assert ref.shape == (2, 2) and not (home / "cache" / "reference").exists()
    run.is_main = True
    assert torch.equal(reference_logps(cfg, run, model, segs, "train", 128, 0), ref)
    # the key names the reference, the token ids and the precision (changed after 0.2.0: CHANGELOG)
    key = cache_key("dpo-ref/2", "train", {"reference": model_fingerprint("tiny")}, tokens_digest(segs), "fp32")
    assert [p.name for p in (home / "cache" / "reference").iterdir()] == [f"{key}.pt"]
    assert not logs
    assert torch.equal(reference_logps(cfg, run, model, segs, "train", 128, 0), ref)
    assert logs == [f"reference log-probs for train: from cache ({home / 'cache' / 'reference' / key}.pt)"]


# --------------------------------------------------------------------------------------------------
# one autocast
# --------------------------------------------------------------------------------------------------


def test_one_autocast_for_runs_and_reward_scoring():
    from alignloop.trainers.reward import scoring_autocast

    assert isinstance(engine.autocast("fp32", "cpu"), nullcontext)
    ac = engine.autocast("bf16", "cpu")
    assert isinstance(ac, torch.autocast) and ac.fast_dtype == torch.bfloat16 and ac.device == "cpu"
    rm = torch.nn.Linear(2, 1)  # any module: the autocast follows its parameters' device (a classifier has no head)
    assert isinstance(scoring_autocast(rm, "fp32"), nullcontext)
    assert scoring_autocast(rm, "bf16").fast_dtype == torch.bfloat16
