"""What every trainer shares: run setup on Accelerate, optimiser and schedule, atomic checkpoints and resume,
metrics (JSONL, TensorBoard when installed, a progress bar with ETA and tokens/s), and the NaN guard.

These are building blocks, not a base class: each trainer (``sft.py``, ``reward.py``, ``dpo.py``, ``ppo.py``)
is a loop you can read top to bottom that calls them. Accelerate handles device placement and multi-process
(DDP/FSDP/DeepSpeed) so the same loop runs on one CPU or many GPUs.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from alignloop.core.config import StageConfig
from alignloop.core.errors import TrainingError
from alignloop.core.files import replace_folder, write_text

CHECKPOINTS = "checkpoints"
FINAL = "final"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def autocast(precision: str, device_type: str = "cpu") -> Any:
    """bf16 autocast (fp32 master weights) for ``precision == "bf16"`` on ``device_type``; a no-op otherwise."""
    if precision != "bf16":
        return nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


@dataclass
class Run:
    """One stage run: its config, output folder, accelerator, precision and metrics."""

    cfg: Any
    output: Path
    accelerator: Any
    precision: str
    metrics: "Metrics"
    started: float = field(default_factory=time.time)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def autocast(self):
        """bf16 autocast (fp32 master weights) when the run uses bf16; fp32 otherwise."""
        return autocast(self.precision, self.device.type)

    def log(self, message: str) -> None:
        if self.is_main:
            print(message, file=sys.stderr, flush=True)

    def reduce_sum(self, value: float | int) -> float:
        """Sum a number over processes (token counts, loss sums): every rank gets the same total."""
        if self.world == 1:
            return float(value)
        t = torch.tensor([float(value)], device=self.device, dtype=torch.float64)
        return float(self.accelerator.reduce(t, reduction="sum").item())

    def reduce_mean(self, metrics: dict[str, float]) -> dict[str, float]:
        """Average metrics over processes (one all-reduce for the whole dict)."""
        if self.world == 1 or not metrics:
            return metrics
        keys = sorted(metrics)
        t = torch.tensor([float(metrics[k]) for k in keys], device=self.device, dtype=torch.float64)
        t = self.accelerator.reduce(t, reduction="mean")
        return dict(zip(keys, t.tolist()))


def setup(cfg: StageConfig, output: str | os.PathLike | None = None) -> Run:
    """Create the accelerator and output folder, seed, save the resolved config, open the metrics log."""
    from accelerate import Accelerator

    from alignloop.models.load import pick_precision

    precision = pick_precision(getattr(cfg, "precision", "fp32"))
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    _enable_cpu_fsdp(accelerator)
    _fill_deepspeed_config(accelerator, cfg)
    out = Path(output or cfg.output)
    resume = bool(getattr(cfg, "resume", False))
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        old = out / CHECKPOINTS
        if not resume and old.exists() and any(old.iterdir()):
            # a fresh run into a used folder: keep the earlier run's checkpoints (nothing is lost) but out of the
            # way, so a later --resume can never pick up a step of the earlier run
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside, n = out / f"{CHECKPOINTS}.previous-{stamp}", 1
            while aside.exists():
                n += 1
                aside = out / f"{CHECKPOINTS}.previous-{stamp}-{n}"
            os.replace(old, aside)
            print(f"note: {out} held checkpoints of an earlier run; moved them to {aside}", file=sys.stderr)
        cfg.save(out)
    accelerator.wait_for_everyone()
    # the same seed on every rank for the model; ranks differ only where sampling needs it (see rank_seed)
    seed_everything(getattr(cfg, "seed", 0))
    metrics = Metrics(out / "metrics.jsonl", enabled=accelerator.is_main_process, append=resume)
    return Run(cfg, out, accelerator, precision, metrics)


def _enable_cpu_fsdp(accelerator: Any) -> None:
    """Run FSDP2 on CPU processes (gloo) when an FSDP accelerate config is launched on a machine without CUDA.

    Accelerate (<= 1.15) switches FSDP on only for accelerator devices and silently falls back to DDP on CPU,
    although torch's FSDP2 (``fully_shard``) runs on CPU with gloo. Turning it on here lets the same FSDP
    config be tried, and tested, without a GPU. Nothing changes on GPUs or in single-process runs.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if (os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true"
            or accelerator.distributed_type != DistributedType.MULTI_CPU):
        return
    plugin = FullyShardedDataParallelPlugin()  # reads the FSDP_* variables `accelerate launch` sets
    if plugin.fsdp_version != 2:
        raise TrainingError("FSDP on CPU needs fsdp_version: 2 in the accelerate config (FSDP1 needs a GPU)")
    from accelerate.state import PartialState

    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    # as accelerate does itself: AcceleratorState() re-reads the type from PartialState whenever it is created
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def _fill_deepspeed_config(accelerator: Any, cfg: Any) -> None:
    """DeepSpeed needs the micro-batch size up front; alignloop's loops accumulate gradients themselves
    (``micro_step(..., sync=False)`` on all but the last micro-batch), so DeepSpeed's own accumulation stays 1."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    ds = plugin.deepspeed_config
    for key, value in (("train_micro_batch_size_per_gpu", int(getattr(cfg, "batch_size", 1))),
                       ("gradient_accumulation_steps", 1),
                       ("gradient_clipping", float(getattr(cfg, "max_grad_norm", 0.0) or 0.0))):
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    if ds.get("train_batch_size", "auto") == "auto":
        ds["train_batch_size"] = ds["train_micro_batch_size_per_gpu"] * accelerator.num_processes


def is_sharded(run: Run) -> bool:
    """Whether the weights are split across processes (FSDP, DeepSpeed ZeRO-3): then gathering them for a
    checkpoint is a collective every rank must join."""
    from accelerate.utils import DistributedType

    if run.accelerator.distributed_type == DistributedType.FSDP:
        return True
    if run.accelerator.distributed_type == DistributedType.DEEPSPEED:
        return run.accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


@contextmanager
def micro_step(run: Run, model: Any, sync: bool = True) -> Iterator[None]:
    """Wrap the forward and backward of one micro-batch of a gradient-accumulated step. ``sync=False`` on all but
    the last micro-batch skips the cross-process gradient reduction until the last (DDP/FSDP ``no_sync``, which
    must enclose the forward too; DeepSpeed's accumulation boundary, where it also steps)."""
    acc = run.accelerator
    acc.gradient_state._set_sync_gradients(sync)
    try:
        with acc.no_sync(model) if (not sync and run.world > 1) else nullcontext():
            yield
    finally:
        acc.gradient_state._set_sync_gradients(True)


def reduce_gradients(run: Run, model: Any) -> None:
    """Sum gradients over processes, for loops whose model is not DDP-wrapped (the RL stages call the policy and
    the critic separately, so there is no single ``forward`` for DDP to hook). Their losses are normalised over
    the global batch, so the sum is the gradient of the global loss. One flat all-reduce; no-op on one process."""
    if run.world == 1:
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat, op=torch.distributed.ReduceOp.SUM)
    for g, reduced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(reduced)


def rank_seed(run: Run, seed: int) -> int:
    """A different sampling seed per process, so ranks do not draw the same samples."""
    return seed + 1000 * run.rank


# --------------------------------------------------------------------------------------------------
# Optimiser and schedule
# --------------------------------------------------------------------------------------------------


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def decay_groups(model: torch.nn.Module, weight_decay: float, **options: Any) -> list[dict[str, Any]]:
    """A model's trainable parameters as two optimiser groups: weights with ``weight_decay``, and biases and norms
    without (the usual transformer recipe). ``options`` (e.g. ``lr``) go into both; empty groups are left out."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, **options},
              {"params": no_decay, "weight_decay": 0.0, **options}]
    return [g for g in groups if g["params"]]


def build_optimizer(models: torch.nn.Module | Iterable[dict[str, Any]], lr: float,
                    weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """AdamW over one model, or over parameter groups ``{"params": model, "lr": ...}`` (e.g. PPO's policy and
    critic, each at its own learning rate). In every group biases and norms get no weight decay."""
    if isinstance(models, torch.nn.Module):
        models = [{"params": models}]
    groups = []
    for g in models:
        options = {k: v for k, v in g.items() if k not in ("params", "weight_decay")}
        groups += decay_groups(g["params"], g.get("weight_decay", weight_decay), **options)
    if not groups:
        raise TrainingError("the model has no trainable parameters")
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=False)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: str, warmup: int, total: int):
    """Linear warm-up, then cosine or linear decay to 0, or constant."""

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_and_step(run: Run, model: Any, optimizer: Any, scheduler: Any, max_grad_norm: float) -> float:
    """Clip gradients (when set), step, and return the pre-clip gradient norm."""
    params = trainable_parameters(model)
    # an infinite max norm measures without clipping; accelerate computes the norm over all ranks' shards
    norm = run.accelerator.clip_grad_norm_(params, max_grad_norm if max_grad_norm and max_grad_norm > 0 else math.inf)
    if norm is None:  # DeepSpeed clips inside its own step; its norm is read after the step
        norm = getattr(model, "get_global_grad_norm", lambda: float("nan"))() or float("nan")
    if hasattr(norm, "full_tensor"):  # a DTensor under FSDP2
        norm = norm.full_tensor()
    norm = float(norm)
    if not math.isfinite(norm):
        optimizer.zero_grad(set_to_none=True)
        return norm
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


# --------------------------------------------------------------------------------------------------
# Checkpoints: atomic (temp folder, then rename), resumable
# --------------------------------------------------------------------------------------------------


def _unwrap(run: Run, model: Any) -> Any:
    return run.accelerator.unwrap_model(model)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The weights that training changes (all of them, or the LoRA adapter and any new heads)."""
    return {n: p.detach().cpu().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def gathered_trainable_state(run: Run, model: Any) -> dict[str, torch.Tensor]:
    """``trainable_state`` of a prepared model, whole on the main process even when the weights are sharded.
    A collective under FSDP/ZeRO-3 (call it on every rank); other ranks may get an empty dict."""
    if not is_sharded(run):
        return trainable_state(_unwrap(run, model)) if run.is_main else {}
    names = {n for n, p in _unwrap(run, model).named_parameters() if p.requires_grad}
    full = full_state_dict(run, model)
    return {n: t.detach().cpu().clone().contiguous() for n, t in full.items() if n in names} if run.is_main else {}


def _full_options(run: Run) -> Any:
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # on GPUs the gathered tensors go to CPU memory on rank 0 only; torch's CPU offload path returns un-gathered
    # DTensors when the shards already live on the CPU, so CPU runs gather on every rank instead
    return StateDictOptions(full_state_dict=True, cpu_offload=run.device.type != "cpu")


def full_state_dict(run: Run, model: Any) -> dict[str, torch.Tensor]:
    """The whole model weights on the main process (a collective under FSDP/ZeRO-3; call it on every rank)."""
    if run.accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(_unwrap(run, model), options=_full_options(run))
    return run.accelerator.get_state_dict(model)


def _optimizer_state(run: Run, model: Any, optimizer: Any) -> dict[str, Any]:
    """The optimiser state to checkpoint: the whole state on the main process, also when FSDP shards it
    (torch's distributed-checkpoint helpers gather it; a collective)."""
    if run.accelerator.is_fsdp2:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return {"fsdp_full": get_optimizer_state_dict(_unwrap(run, model), optimizer.optimizer,
                                                      options=_full_options(run))}
    return {"optimizer": optimizer.state_dict()} if run.is_main else {}


def save_checkpoint(run: Run, step: int, model: Any, optimizer: Any, scheduler: Any,
                    state: dict[str, Any] | None = None, keep: int | None = None) -> Path | None:
    """Write ``checkpoints/step-N`` atomically; keep the newest ``keep`` (default: the run's
    ``keep_checkpoints``, 2 when it has none; 0 keeps all). Only the main process writes
    (under FSDP/ZeRO-3 every rank first joins in gathering the weights)."""
    from safetensors.torch import save_file

    run.accelerator.wait_for_everyone()
    folder = run.output / CHECKPOINTS / f"step-{step:07d}"
    weights = gathered_trainable_state(run, model)
    optim = _optimizer_state(run, model, optimizer)
    if run.is_main:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_file(weights, str(tmp / "trainable.safetensors"))
        torch.save({**optim, "scheduler": scheduler.state_dict()}, tmp / "optim.pt")
        torch.save({"python": random.getstate(), "torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **(state or {})}, indent=1))
        run.cfg.save(tmp)
        replace_folder(tmp, folder)  # the same step may be saved again (the final step after a resume)
        keep = getattr(run.cfg, "keep_checkpoints", 2) if keep is None else keep
        old = sorted(p for p in folder.parent.glob("step-*") if not p.name.endswith(".tmp"))
        for p in old[:-keep] if keep else []:
            shutil.rmtree(p, ignore_errors=True)
    run.accelerator.wait_for_everyone()
    return folder


def save_final(run: Run, model: Any, tokenizer: Any, folder: Path, merge_lora: bool = True,
               base_name: str | None = None) -> Path:
    """Save the final model as a plain Hugging Face folder, written once by the main process.

    Call it on every rank: under FSDP/ZeRO-3 the weights are gathered first (a collective)."""
    from alignloop.models.load import save_model

    run.accelerator.wait_for_everyone()
    state_dict = None
    if is_sharded(run):
        state_dict = full_state_dict(run, model)
        # tied weights (embeddings = LM head) come back once per name; save them once, as transformers does
        seen: dict[int, str] = {}
        for name, p in _unwrap(run, model).named_parameters(remove_duplicate=False):
            if id(p) in seen:
                state_dict.pop(name, None)
            seen.setdefault(id(p), name)
    if run.is_main:
        save_model(_unwrap(run, model), tokenizer, folder, merge_lora=merge_lora, base_name=base_name,
                   state_dict=state_dict)
    run.accelerator.wait_for_everyone()
    return folder


def finish(run: Run, model: Any, tokenizer: Any) -> Path:
    """The end of every trainer: the final model in ``OUTPUT/final`` (a plain Hugging Face folder, LoRA merged
    unless ``--no-merge-lora``) with the run's config beside it; the metrics log closed. Call it on every rank."""
    final = run.output / FINAL
    save_final(run, model, tokenizer, final, merge_lora=run.cfg.merge_lora, base_name=run.cfg.model)
    if run.is_main:
        run.cfg.save(final)
    run.metrics.close()
    return final


def latest_checkpoint(output: Path) -> Path | None:
    folder = output / CHECKPOINTS
    done = sorted(p for p in folder.glob("step-*") if not p.name.endswith(".tmp") and (p / "state.json").exists())
    return done[-1] if done else None


def load_checkpoint(run: Run, model: Any, optimizer: Any, scheduler: Any) -> dict[str, Any]:
    """Restore the newest checkpoint into model/optimizer/scheduler; returns its state (``{"step": 0}`` if none)."""
    from safetensors.torch import load_file

    ckpt = latest_checkpoint(run.output)
    if ckpt is None:
        run.log(f"--resume: no checkpoint in {run.output / CHECKPOINTS}; starting from step 0")
        return {"step": 0}
    weights = load_file(str(ckpt / "trainable.safetensors"))
    target = _unwrap(run, model)
    params = dict(target.named_parameters())
    missing = [n for n in weights if n not in params]
    if missing:
        raise TrainingError(f"{ckpt} does not match this model (e.g. {missing[0]}); was it made with other flags?")
    opt = torch.load(ckpt / "optim.pt", weights_only=False)
    if run.accelerator.is_fsdp2:
        # every rank read the whole files; torch's helpers keep each rank's shard of weights and optimiser
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        if "fsdp_full" not in opt:
            raise TrainingError(f"{ckpt} was not written by an FSDP run; resume it with the launch it was made with")
        set_state_dict(target, optimizer.optimizer, model_state_dict=weights, optim_state_dict=opt["fsdp_full"],
                       options=StateDictOptions(full_state_dict=True, strict=False))
    else:
        if "optimizer" not in opt:
            raise TrainingError(f"{ckpt} was written by an FSDP run; resume it under the same FSDP launch")
        with torch.no_grad():
            for n, w in weights.items():
                params[n].copy_(w.to(params[n].device, params[n].dtype))
        optim, sched = regrouped_states(opt["optimizer"], opt["scheduler"], optimizer, target)
        optimizer.load_state_dict(optim)
        opt["scheduler"] = sched
    scheduler.load_state_dict(opt["scheduler"])
    rng = torch.load(ckpt / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    state = json.loads((ckpt / "state.json").read_text())
    run.log(f"resumed from {ckpt} (step {state['step']})")
    return state


def regrouped_states(optim: dict[str, Any], sched: dict[str, Any], optimizer: Any,
                     model: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A checkpoint's optimiser and scheduler states, as they are when they have the optimiser's groups.

    Otherwise the checkpoint's optimiser grouped the same parameters differently (PPO's, written before its groups
    split biases and norms off: one group per model): its per-parameter state, numbered in the model's parameter
    order, is re-keyed onto the optimiser's groups, and each group takes the saved learning rates of the group its
    parameters were in (keeping its own weight decay)."""
    sizes = [len(g["params"]) for g in optim["param_groups"]]
    if sizes == [len(g["params"]) for g in optimizer.param_groups]:
        return optim, sched
    order = trainable_parameters(model)
    if sum(sizes) != len(order):
        raise TrainingError(f"the checkpoint's optimiser holds {sum(sizes)} parameters, this model trains {len(order)}")
    saved_id = {id(p): i for i, p in enumerate(order)}
    source = {i: n for n, g in enumerate(optim["param_groups"]) for i in g["params"]}
    state, groups, sources = {}, [], []
    for group in optimizer.param_groups:
        ids = [saved_id[id(p)] for p in group["params"]]
        k = sum(len(g["params"]) for g in groups)
        state.update({k + j: optim["state"][i] for j, i in enumerate(ids) if i in optim["state"]})
        sources.append(source[ids[0]])
        groups.append({**optim["param_groups"][sources[-1]], "weight_decay": group["weight_decay"],
                       "params": list(range(k, k + len(ids)))})
    per_group = {key: [sched[key][n] for n in sources] for key in ("base_lrs", "_last_lr", "lr_lambdas")
                 if isinstance(sched.get(key), list)}
    return {"state": state, "param_groups": groups}, {**sched, **per_group}


# --------------------------------------------------------------------------------------------------
# Metrics and progress
# --------------------------------------------------------------------------------------------------


class Metrics:
    """Per-step metrics as JSON lines (flushed each write, so a crash keeps them), plus TensorBoard if present."""

    def __init__(self, path: Path, enabled: bool = True, append: bool = False):
        self.path, self.enabled = path, enabled
        self._tb = None
        if not enabled:
            return
        if not append and path.exists():
            path.unlink()
        try:
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

            self._tb = SummaryWriter(str(path.parent / "tensorboard"))
        except Exception:
            self._tb = None

    def truncate_after(self, step: int) -> None:
        """On resume, drop lines logged after the checkpoint (they will be logged again)."""
        if not self.enabled or not self.path.exists():
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                                for k, v in values.items()}}
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def progress(run: Run, total: int, initial: int = 0, desc: str = "train", unit: str = "step"):
    """A progress bar with ETA (tqdm); silent on other ranks."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=not run.is_main, dynamic_ncols=True,
                file=sys.stderr, mininterval=1.0)


def check_finite(run: Run, loss: float, step: int) -> None:
    """Stop on a NaN/inf loss before it reaches the weights; the last good checkpoint stays untouched."""
    if math.isfinite(loss):
        return
    last = latest_checkpoint(run.output)
    kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet (use --save-every)"
    raise TrainingError(
        f"loss became {loss} at step {step}; the run stopped before updating the weights and {kept}. "
        "Try a lower --learning-rate, --precision fp32, or check the data for empty answers.")


class StepTimer:
    """Tokens/s and examples/s over a window of steps."""

    def __init__(self) -> None:
        self.t = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        dt, self.t = now - self.t, now
        return dt


def total_steps(num_batches_per_epoch: int, grad_accum: int, num_epochs: float, max_steps: int | None) -> int:
    if max_steps:
        return int(max_steps)
    return max(1, math.ceil(num_batches_per_epoch * num_epochs / grad_accum))


def micro_batch_stream(make_epoch: Any, start_micro: int = 0) -> Iterator[tuple[int, list[int]]]:
    """Endless (epoch, indices) micro-batches; ``make_epoch(e)`` returns that epoch's index batches. Skips the
    first ``start_micro`` micro-batches so a resumed run continues with exactly the data it would have seen."""
    epoch, seen = 0, 0
    while True:
        batches = make_epoch(epoch)
        if not batches:
            raise TrainingError("no training batches (is the data empty after filtering?)")
        for b in batches:
            if seen >= start_micro:
                yield epoch, b
            seen += 1
        epoch += 1


@dataclass
class Loop:
    """What a supervised loop (sft, reward, dpo) runs with: the prepared model and optimiser, the schedule, the
    step to start from, the stream of micro-batches, the progress bar and the step timer."""

    model: Any
    optimizer: Any
    scheduler: Any
    total: int
    start: int
    stream: Iterator[tuple[int, list[int]]]
    bar: Any
    timer: StepTimer


def start_loop(run: Run, model: Any, make_epoch: Callable[[int], list[list[int]]], desc: str) -> Loop:
    """Optimiser and schedule for ``run.cfg``, the accelerator's preparation, resume from the last checkpoint when
    asked (its later metrics dropped), and the micro-batches from there on."""
    cfg = run.cfg
    total = total_steps(len(make_epoch(0)), cfg.grad_accum, cfg.num_epochs, cfg.max_steps)
    optimizer = build_optimizer(model, cfg.learning_rate, cfg.weight_decay)
    scheduler = build_scheduler(optimizer, cfg.lr_schedule, cfg.warmup_steps, total)
    model, optimizer = run.accelerator.prepare(model, optimizer)
    model.train()
    start = load_checkpoint(run, model, optimizer, scheduler)["step"] if cfg.resume else 0
    run.metrics.truncate_after(start)
    stream = micro_batch_stream(make_epoch, start_micro=start * cfg.grad_accum)
    bar = progress(run, total, initial=start, desc=desc)
    return Loop(model, optimizer, scheduler, total, start, stream, bar, StepTimer())
