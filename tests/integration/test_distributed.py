"""Multi-process training (issue 9): real 2-process launches on CPU (gloo) through `alignloop launch`.

Each stage is launched with 2 processes of batch B and compared with one process of batch 2B (the same global
batch): the per-step losses agree within 1e-5 and the checkpoint, metrics and final model are written once.
The launches take 10-30 s each on 2 cores, so each runs 3-4 steps of the `tiny` model, one after the other.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from testutil import python_cmd, write_jsonl

from alignloop.cli.launch import LaunchConfig, accelerate_command, accelerate_config_problems

REPO = Path(__file__).resolve().parents[2]
ACCEL = REPO / "configs" / "accelerate"
ACCEL_CONFIGS = sorted(ACCEL.glob("*.yaml"))


def _losses(path: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def _steps(path: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def launch(config: Path, stage: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    proc = subprocess.run(python_cmd() + ["launch", "--config", str(config), "--", *stage],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


# ---- configs and the launch command (no processes started) -------------------------------------------------


@pytest.mark.parametrize("path", ACCEL_CONFIGS, ids=[p.name for p in ACCEL_CONFIGS])
def test_shipped_accelerate_configs_are_valid_for_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig

    assert accelerate_config_problems(str(path)) == []
    cfg = ClusterConfig.from_yaml_file(str(path))  # accelerate's own loader: rejects unknown top-level keys
    assert cfg.num_processes >= 2 and not cfg.use_cpu
    assert {p.name for p in ACCEL_CONFIGS} >= {"ddp_cpu.yaml", "ddp_gpu.yaml", "fsdp_cpu.yaml", "fsdp2_gpu.yaml",
                                                "deepspeed_zero2.yaml", "deepspeed_zero3.yaml", "multinode_2x8.yaml"}


def test_accelerate_config_problems_names_unknown_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: FSDP\nnum_procs: 2\nfsdp_config:\n  fsdp_versoin: 2\n")
    problems = accelerate_config_problems(str(bad))
    assert any("num_procs" in p for p in problems) and any("fsdp_versoin" in p for p in problems)


def test_launch_builds_the_accelerate_command():
    from alignloop.cli.main import parse

    cls, cfg = parse(["launch", "--num-processes", "2", "--", "sft", "--model", "tiny", "--config", "s.yaml"])
    assert cls is LaunchConfig and cfg.stage_args == ["sft", "--model", "tiny", "--config", "s.yaml"]
    assert accelerate_command(cfg)[1:] == [
        "-m", "accelerate.commands.launch", "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend",
        "no", "--multi_gpu", "--num_machines", "1", "-m", "alignloop", "sft", "--model", "tiny", "--config", "s.yaml"]
    # --config with an accelerate config file means that file; machine flags pass through
    _, cfg = parse(["launch", "--config", str(ACCEL / "multinode_2x8.yaml"), "--machine-rank", "1", "--", "dpo"])
    assert accelerate_command(cfg)[3:] == ["--config_file", str(ACCEL / "multinode_2x8.yaml"), "--machine_rank", "1",
                                          "-m", "alignloop", "dpo"]


def test_launch_rejects_a_missing_or_non_training_stage():
    from alignloop.cli.main import parse
    from alignloop.core.config import ConfigError

    for argv, needle in ((["launch", "--num-processes", "2"], "name the stage"),
                         (["launch", "--", "generate", "--prompts", "p"], "does not train"),
                         (["launch", "--", "nonsense"], "not an alignloop command"),
                         (["launch", "--num-processes", "0", "--", "sft"], "num_processes: must be > 0")):
        with pytest.raises(ConfigError, match=needle):
            parse(argv)


# ---- real 2-process runs --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory, tiny_path):
    """One process with batch 4 and two processes with batch 2 (DDP, then FSDP2), same global batches.

    13 rows in global batches of 4 with grad_accum 2: the 4th micro-batch holds one row, so rank 1's share of
    it is empty (the zero-weight step); 3 steps cross the epoch boundary; a checkpoint at step 2 and at the end;
    dev-set evaluation at the end (7 of 13 rows on rank 0, 6 on rank 1)."""
    from alignloop.trainers import sft
    from alignloop.trainers.config import SFTConfig

    tmp = tmp_path_factory.mktemp("sft-dist")
    rows = [{"prompt": f"What is {i} plus {i % 5}?", "completion": f"It is {i + i % 5}." + " ok" * (i % 4)}
            for i in range(13)]
    data = write_jsonl(tmp / "sft.jsonl", rows)
    common = dict(model="tiny", data=str(data), dev_data=str(data), max_steps=3, grad_accum=2, precision="fp32",
                  learning_rate=1e-3, save_every=2)
    sft.run(SFTConfig(**common, output=str(tmp / "one"), batch_size=4).validate())
    flags = ["--model", "tiny", "--data", str(data), "--dev-data", str(data), "--max-steps", "3", "--grad-accum", "2",
             "--precision", "fp32", "--learning-rate", "1e-3", "--save-every", "2", "--batch-size", "2"]
    ddp = launch(ACCEL / "ddp_cpu.yaml", ["sft", *flags, "--output", str(tmp / "ddp")])
    return tmp, ddp


def _same_model(a: Path, b: Path, tol: float = 1e-5) -> None:
    from safetensors.torch import load_file

    wa, wb = load_file(str(a)), load_file(str(b))
    assert set(wa) == set(wb)
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < tol


def test_sft_two_processes_match_one_process_with_the_same_global_batch(sft_runs):
    tmp, proc = sft_runs
    one, two = _losses(tmp / "one" / "metrics.jsonl"), _losses(tmp / "ddp" / "metrics.jsonl")
    assert len(one) == len(two) == 3
    assert max(abs(a - b) for a, b in zip(one, two)) < 1e-5
    eval_one = [r for r in map(json.loads, (tmp / "one" / "metrics.jsonl").read_text().splitlines())
                if "eval/loss" in r]
    eval_two = [r for r in map(json.loads, (tmp / "ddp" / "metrics.jsonl").read_text().splitlines())
                if "eval/loss" in r]
    assert abs(eval_one[0]["eval/loss"] - eval_two[0]["eval/loss"]) < 1e-5
    _same_model(tmp / "one" / "final" / "model.safetensors", tmp / "ddp" / "final" / "model.safetensors")


def test_sft_two_processes_write_once(sft_runs):
    tmp, proc = sft_runs
    out = tmp / "ddp"
    # one writer: each step logged once, one "saved", one resolved config, checkpoints without leftovers
    assert _steps(out / "metrics.jsonl") == [1, 2, 3]
    assert proc.stderr.count(f"saved {out / 'final'}") == 1
    assert proc.stderr.count("# alignloop sft — resolved config") == 1
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-0000002", "step-0000003"]
    assert sorted(p.name for p in out.iterdir()) == ["checkpoints", "config.yaml", "final", "metrics.jsonl"]
    _same_model(tmp / "one" / "checkpoints" / "step-0000003" / "trainable.safetensors",
                out / "checkpoints" / "step-0000003" / "trainable.safetensors")


def test_sft_fsdp_two_processes_match_ddp_and_resume(sft_runs):
    """FSDP2 (torch fully_shard over gloo on CPU): same losses as DDP, a whole (gathered) checkpoint and final
    model written once, and a resume from the sharded run's checkpoint."""
    import torch

    if not hasattr(torch.distributed, "fsdp") or not hasattr(torch.distributed.fsdp, "fully_shard"):
        pytest.skip(f"torch {torch.__version__} has no FSDP2 fully_shard")
    tmp, _ = sft_runs
    data = tmp / "sft.jsonl"
    flags = ["--model", "tiny", "--data", str(data), "--dev-data", str(data), "--grad-accum", "2", "--precision",
             "fp32", "--learning-rate", "1e-3", "--save-every", "2", "--batch-size", "2", "--output", str(tmp / "fsdp")]
    proc = launch(ACCEL / "fsdp_cpu.yaml", ["sft", *flags, "--max-steps", "3"])
    ddp, fsdp = _losses(tmp / "ddp" / "metrics.jsonl"), _losses(tmp / "fsdp" / "metrics.jsonl")
    assert max(abs(a - b) for a, b in zip(ddp, fsdp)) < 1e-5 and len(fsdp) == 3
    assert proc.stderr.count("saved ") == 1
    _same_model(tmp / "ddp" / "final" / "model.safetensors", tmp / "fsdp" / "final" / "model.safetensors")
    _same_model(tmp / "ddp" / "checkpoints" / "step-0000003" / "trainable.safetensors",
                tmp / "fsdp" / "checkpoints" / "step-0000003" / "trainable.safetensors")


@pytest.mark.slow
def test_sft_fsdp_resume_matches_ddp_resume(sft_runs):
    """Resuming a sharded run restores the gathered weights and optimiser state into the shards: the step
    after resuming equals the same step resumed under DDP."""
    tmp, _ = sft_runs
    data = tmp / "sft.jsonl"
    flags = ["--model", "tiny", "--data", str(data), "--grad-accum", "2", "--precision", "fp32", "--learning-rate",
             "1e-3", "--batch-size", "2", "--max-steps", "4", "--resume"]
    if not (tmp / "fsdp" / "final").exists():
        launch(ACCEL / "fsdp_cpu.yaml", ["sft", *flags[:-3], "--max-steps", "3", "--output", str(tmp / "fsdp")])
    launch(ACCEL / "fsdp_cpu.yaml", ["sft", *flags, "--output", str(tmp / "fsdp")])
    launch(ACCEL / "ddp_cpu.yaml", ["sft", *flags, "--output", str(tmp / "ddp")])
    ddp, fsdp = _losses(tmp / "ddp" / "metrics.jsonl"), _losses(tmp / "fsdp" / "metrics.jsonl")
    assert _steps(tmp / "fsdp" / "metrics.jsonl") == _steps(tmp / "ddp" / "metrics.jsonl") == [1, 2, 3, 4]
    assert abs(ddp[-1] - fsdp[-1]) < 1e-5


# ---- reward, DPO and PPO on 2 processes ------------------------------------------------------------------------


def _stage_module(name: str):
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not merged into this branch yet")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pairs")
    # 9 pairs in global batches of 4 with grad_accum 2: the step with the 1-pair batch gives rank 1 an empty share
    rows = [{"prompt": [{"role": "user", "content": f"question {i}?"}],
             "chosen": [{"role": "assistant", "content": f"a helpful answer number {i}" + " yes" * (i % 3)}],
             "rejected": [{"role": "assistant", "content": "no" + " not" * (i % 2)}]} for i in range(9)]
    return write_jsonl(tmp / "pairs.jsonl", rows)


def _compare(one: Path, two: Path, keys: tuple[str, ...]) -> None:
    rows1 = [r for r in map(json.loads, one.read_text().splitlines()) if "loss" in r]
    rows2 = [r for r in map(json.loads, two.read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2] == [1, 2, 3]
    for a, b in zip(rows1, rows2):
        for k in keys:
            assert abs(a[k] - b[k]) < 1e-5, (k, a[k], b[k])


@pytest.mark.parametrize("stage", ["reward", "dpo"])
def test_reward_and_dpo_two_processes_match_one_process(stage, tmp_path, pairs_file, tiny_path):
    module = _stage_module({"reward": "alignloop.trainers.reward", "dpo": "alignloop.trainers.dpo"}[stage])
    from alignloop.trainers.config import DPOConfig, RewardTrainConfig

    cls, runner = (RewardTrainConfig, module.run_train) if stage == "reward" else (DPOConfig, module.run)
    common = dict(model="tiny", data=str(pairs_file), max_steps=3, grad_accum=2, precision="fp32",
                  learning_rate=1e-3, max_length=64)
    fine_tune = dict(freeze_backbone=False, pooling="last") if stage == "reward" else {}
    runner(cls.from_dict({**common, **fine_tune, "output": str(tmp_path / "one"), "batch_size": 4}).validate())
    words = ["reward", "train", "--no-freeze-backbone", "--pooling", "last"] if stage == "reward" else ["dpo"]
    flags = ["--model", "tiny", "--data", str(pairs_file), "--max-steps", "3", "--grad-accum", "2", "--precision",
             "fp32", "--learning-rate", "1e-3", "--max-length", "64", "--batch-size", "2"]
    proc = launch(ACCEL / "ddp_cpu.yaml", [*words, *flags, "--output", str(tmp_path / "two")])
    keys = ("loss", "grad_norm", "rewards/margins") + (("rewards/accuracies", "logps/chosen") if stage == "dpo" else
                                                       ("rewards/accuracy",))
    _compare(tmp_path / "one" / "metrics.jsonl", tmp_path / "two" / "metrics.jsonl", keys)
    assert proc.stderr.count(f"saved {tmp_path / 'two' / 'final'}") == 1
    assert sorted(p.name for p in (tmp_path / "two" / "checkpoints").iterdir()) == ["step-0000003"]


def test_ppo_two_processes_complete_with_metrics_reduced_across_ranks(tmp_path, tiny_path):
    _stage_module("alignloop.trainers.ppo")
    # a reward that is the process's rank: rank 0's answers score 0, rank 1's score 1, so the logged mean
    # reward is exactly 0.5 only when the metric is reduced over both processes
    (tmp_path / "rank_reward.py").write_text(
        "import os\n\ndef score(prompt, completion, **row):\n    return float(os.environ['RANK'])\n")
    prompts = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"Question {i}: what is {i} plus {i}?"} for i in range(4)])
    out = tmp_path / "ppo"
    proc = launch(ACCEL / "ddp_cpu.yaml", [
        "ppo", "--model", "tiny", "--reward", f"python:{tmp_path / 'rank_reward.py'}:score", "--prompts", str(prompts),
        "--output", str(out), "--max-steps", "2", "--batch-size", "2", "--max-new-tokens", "4", "--ppo-epochs", "1",
        "--num-mini-batches", "1", "--learning-rate", "1e-3", "--precision", "fp32"])
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert [r["objective/reward"] for r in rows] == [0.5, 0.5]
    assert proc.stderr.count(f"saved {out / 'final'}") == 1 and (out / "final" / "model.safetensors").exists()


def test_rl_reference_and_reward_device_placement(tmp_path):
    _stage_module("alignloop.trainers.ppo")
    from types import SimpleNamespace
    from unittest import mock

    from alignloop.trainers import rl_common as rl
    from alignloop.trainers.config import PPOConfig

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    base = dict(prompts=str(prompts), output="x", reward_model="rm")
    assert PPOConfig(**base, reference_device="cuda:1", reward_device="cpu").check() == []
    assert any("reward_device: 'gpu1' is not a device" in p for p in PPOConfig(**base, reward_device="gpu1").check())
    ref, rm_model = mock.Mock(), mock.Mock()
    rewards = SimpleNamespace(reward_models=lambda: [SimpleNamespace(model=rm_model)])
    run = SimpleNamespace(log=lambda *_: None)
    rl.place_frozen_models(SimpleNamespace(reference_device="cuda:1", reward_device="cpu"), run, ref, rewards)
    ref.to.assert_called_once_with("cuda:1")
    rm_model.to.assert_called_once_with("cpu")
    rl.place_frozen_models(SimpleNamespace(reference_device=None, reward_device=None), run, mock.Mock(), rewards)
    assert rm_model.to.call_count == 1  # unset: nothing moves
