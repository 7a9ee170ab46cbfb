"""``alignloop launch``: run a training stage on several processes, GPUs or machines through Accelerate.

    alignloop launch --num-processes 2 -- sft --model tiny --data demos.jsonl --output runs/sft
    alignloop launch --config configs/accelerate/fsdp2_gpu.yaml -- dpo --model ... --precision bf16

This is a thin front for ``accelerate launch`` (the engine that starts and connects the processes: torchrun
for DDP/FSDP, DeepSpeed's launcher for DeepSpeed): it runs ``python -m accelerate.commands.launch [flags]
-m alignloop <stage> ...``. Every trainer is written for this: each global batch is split across ranks, losses
are normalised over the whole global batch, metrics are reduced across ranks, and only rank 0 writes
checkpoints, metrics and the final model. ``accelerate launch ... -m alignloop <stage>`` works the same.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional

from alignloop.core.config import ConfigError, StageConfig, existing_file, opt, positive
from alignloop.pipelines.stages import COMMANDS

#: stages that train and so make sense on several processes
TRAINING_STAGES = {("sft",), ("reward", "train"), ("dpo",), ("ppo",), ("grpo",), ("rloo",)}
#: top-level keys that mark a YAML file as an accelerate config rather than a file of launch flags
_ACCELERATE_KEYS = {"distributed_type", "compute_environment"}


@dataclass
class LaunchConfig(StageConfig):
    """Run a training stage on several processes (CPU or GPU), GPUs or machines through Accelerate
    (DDP, FSDP, DeepSpeed). Put the stage and its flags after `--`."""

    command: ClassVar[tuple[str, ...]] = ("launch",)
    runner: ClassVar[str] = "alignloop.cli.launch:run"
    #: the rest of the command line (after the launch flags) is the stage to run; see cli.parse
    rest_field: ClassVar[str] = "stage_args"

    num_processes: Optional[int] = opt(None, "Processes in all (all machines together); default: the accelerate "
                                       "config's num_processes, or 1 without a config.")
    accelerate_config: Optional[str] = opt(None, "An accelerate config file (see configs/accelerate/): DDP, FSDP, "
                                           "DeepSpeed, several machines. `--config FILE` works too when FILE is one.")
    num_machines: Optional[int] = opt(None, "Machines taking part (default: the accelerate config's, or 1).")
    machine_rank: Optional[int] = opt(None, "This machine's rank, 0 to num_machines - 1 (run the same launch on each).")
    main_process_ip: Optional[str] = opt(None, "Address of machine 0 (several machines).")
    main_process_port: Optional[int] = opt(None, "Port on machine 0 for the processes to meet (several machines).")
    dry_run: bool = opt(False, "Print the accelerate command instead of running it.")
    stage_args: list[str] = opt([], "The stage and its flags, e.g. `-- sft --model tiny --data x.jsonl --output out`.")

    @classmethod
    def load(cls, path: str | os.PathLike, overrides: dict[str, Any] | None = None) -> "StageConfig":
        """``--config`` takes either a YAML of these flags or, as the issue's users expect, an accelerate config."""
        import yaml

        p = Path(path)
        try:
            data = yaml.safe_load(p.read_text()) if p.exists() else None
        except yaml.YAMLError:
            data = None
        if isinstance(data, dict) and _ACCELERATE_KEYS & set(data):
            values = dict(overrides or {})
            values.setdefault("accelerate_config", str(p))
            return cls.from_dict(values, source="flags").validate()
        return super().load(path, overrides)

    def check(self) -> list[str]:
        p = positive(self, "num_processes", "num_machines", "main_process_port")
        p += positive(self, "machine_rank", allow_zero=True)
        p += existing_file(self, "accelerate_config")
        if self.accelerate_config and not p:
            p += _quick_config_problems(self.accelerate_config)
        if not self.stage_args:
            p.append("stage_args: name the stage to run after `--`, e.g. `alignloop launch --num-processes 2 -- "
                     "sft --model tiny --data demos.jsonl --output runs/sft`")
        else:
            stage = _stage(self.stage_args)
            if stage is None:
                p.append(f"stage_args: '{' '.join(self.stage_args[:2])}' is not an alignloop command")
            elif stage not in TRAINING_STAGES:
                names = ", ".join(" ".join(s) for s in sorted(TRAINING_STAGES))
                p.append(f"stage_args: '{' '.join(stage)}' does not train; launch runs one of: {names}")
        return p


def _stage(args: list[str]) -> tuple[str, ...] | None:
    matches = [c for c in COMMANDS if tuple(args[:len(c)]) == c]
    return max(matches, key=len) if matches else None


def _quick_config_problems(path: str) -> list[str]:
    """What can be checked without importing torch (the launcher's parent process stays light; accelerate
    rejects unknown keys itself when it reads the file)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        return [f"accelerate_config: {path} is not valid YAML ({exc})"]
    if not isinstance(data, dict) or "distributed_type" not in data:
        return [f"accelerate_config: {path} is not an accelerate config (no distributed_type); see configs/accelerate/"]
    return []


def accelerate_config_problems(path: str) -> list[str]:
    """Keys accelerate would not understand: top-level keys against accelerate's ``ClusterConfig``, and the
    keys of ``fsdp_config``/``deepspeed_config`` against ``accelerate launch``'s own options (which is where
    accelerate maps them)."""
    import yaml
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType

    try:
        data = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as exc:
        return [f"accelerate_config: {path} is not valid YAML ({exc})"]
    if not isinstance(data, dict):
        return [f"accelerate_config: {path}: expected a mapping at the top level"]
    problems = []
    unknown = sorted(set(data) - set(ClusterConfig.__dataclass_fields__))
    if unknown:
        problems.append(f"accelerate_config: {path}: keys accelerate does not know: {', '.join(unknown)}")
    if data.get("distributed_type") not in {d.value for d in DistributedType}:
        problems.append(f"accelerate_config: {path}: distributed_type '{data.get('distributed_type')}' is not one of "
                        f"{', '.join(d.value for d in DistributedType)}")
    options = {a.dest for a in launch_command_parser()._actions}
    for section in ("fsdp_config", "deepspeed_config"):
        bad = sorted(k for k in (data.get(section) or {}) if k not in options)
        if bad:
            problems.append(f"accelerate_config: {path}: {section} keys accelerate does not know: {', '.join(bad)}")
    return problems


def accelerate_command(cfg: LaunchConfig) -> list[str]:
    """The ``accelerate launch`` command line for this launch."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if cfg.accelerate_config:
        cmd += ["--config_file", cfg.accelerate_config]
        if cfg.num_processes is not None:
            cmd += ["--num_processes", str(cfg.num_processes)]
    else:
        n = cfg.num_processes or 1
        # alignloop applies --precision itself; naming the defaults keeps accelerate from warning about them.
        # --multi_gpu is accelerate's name for "torchrun several processes": on a machine without CUDA they
        # form a gloo (CPU) process group, which is what `--cpu` would NOT do (it starts one process).
        cmd += ["--num_processes", str(n), "--mixed_precision", "no", "--dynamo_backend", "no"]
        if n > 1:
            cmd += ["--multi_gpu"]
        if cfg.num_machines is None:
            cmd += ["--num_machines", "1"]
    for name in ("num_machines", "machine_rank", "main_process_ip", "main_process_port"):
        value = getattr(cfg, name)
        if value is not None:
            cmd += [f"--{name}", str(value)]
    return cmd + ["-m", "alignloop", *cfg.stage_args]


def run(cfg: LaunchConfig) -> int:
    cmd = accelerate_command(cfg)
    print("$ " + shlex.join(cmd), file=sys.stderr, flush=True)
    if cfg.dry_run:
        print(shlex.join(cmd))
        return 0
    env = dict(os.environ)
    # the children import this same alignloop (a source checkout included), whatever their working directory
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return subprocess.run(cmd, env=env).returncode


__all__ = ["LaunchConfig", "accelerate_command", "accelerate_config_problems", "run", "ConfigError"]
