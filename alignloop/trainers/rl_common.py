"""What ppo, grpo and rloo share: prompts, policy + reference and reward sources, the schedule and the prompt
stream, the rollout → score step, evaluation on held-out prompts, sample tables, the end of a step and of a run,
the reward-vs-KL plot. Building blocks, not a base class: ``ppo.py`` and ``grpo.py`` are the loops.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from alignloop.core.errors import DataError, TrainingError
from alignloop.data.batching import batches
from alignloop.data.readers import public_meta, read_records, write_jsonl
from alignloop.data.records import Prompt
from alignloop.data.templates import encode_prompt
from alignloop.generation.rollout import Rollout, generate_rollout, pad_responses, sequence_logprobs
from alignloop.losses import kl_estimate
from alignloop.models.load import load_policy_and_reference
from alignloop.trainers import engine
from alignloop.trainers.reward_sources import Rewards, reward_specs

#: tokens kept from the start of an over-long prompt: the chat header and the instruction
PROMPT_HEAD = 48


@dataclass
class PromptItem:
    prompt: Prompt
    ids: list[int]
    row: dict[str, Any] = field(default_factory=dict)


def fit_prompt(ids: list[int], max_length: int, head: int = PROMPT_HEAD) -> list[int]:
    """Keep the first ``head`` and the last ``max_length − head`` tokens: the template header and instruction at
    the start and the question at the end survive; the middle of a long context goes."""
    if len(ids) <= max_length:
        return ids
    return ids[:head] + ids[len(ids) - (max_length - head):]


def load_prompts(path: str, tokenizer: Any, max_prompt_length: int, chat_template: bool = True,
                 limit: int | None = None) -> tuple[list[PromptItem], int]:
    """Prompts (and their extra columns, e.g. a gold ``answer``) → token ids; returns (items, number cut)."""
    records = read_records(path, kind="prompt", limit=limit)
    items, cut = [], 0
    for rec in records:
        ids = encode_prompt(tokenizer, rec.prompt, chat_template)
        if not ids:
            raise DataError("empty prompt", path=rec.meta.get("_where"))
        cut += len(ids) > max_prompt_length
        row = public_meta(rec.meta)
        row["messages"] = rec.prompt.messages
        items.append(PromptItem(rec.prompt, fit_prompt(ids, max_prompt_length), row))
    return items, cut


def build_policy(cfg: Any, run: engine.Run) -> tuple[Any, Any, Any]:
    """(policy, reference or None, tokenizer) on the run's device (``load_policy_and_reference``): with LoRA the
    reference is the policy with its adapter off, so one model sits in memory; otherwise a frozen copy."""
    return load_policy_and_reference(cfg, run.device)


@dataclass
class Stage:
    """What an RL run works with besides its optimiser: the policy, its reference (None: the LoRA policy with the
    adapter off), the tokenizer, the reward sources, and the training and held-out prompts."""

    policy: Any
    ref: Any
    tok: Any
    rewards: Rewards
    items: list[PromptItem]
    dev: list[PromptItem] | None

    def evaluate(self, cfg: Any, run: engine.Run, step: int) -> dict[str, float]:
        """``evaluate`` on the held-out prompts, averaged over processes."""
        return run.reduce_mean(evaluate(self.policy, self.ref, self.tok, self.rewards, self.dev, cfg, run, step))


def setup_stage(cfg: Any, run: engine.Run) -> Stage:
    """Policy and reference, the reward sources (placed per ``--reference-device`` / ``--reward-device``), the
    prompts and the held-out prompts."""
    policy, ref, tok = build_policy(cfg, run)
    rewards = Rewards.from_specs(reward_specs(cfg.reward, cfg.reward_model))
    place_frozen_models(cfg, run, ref, rewards)
    items, cut = load_prompts(cfg.prompts, tok, cfg.max_prompt_length, cfg.chat_template, cfg.limit)
    run.log(f"prompts: {cfg.prompts}: {len(items)} ({cut} longer than max_prompt_length={cfg.max_prompt_length} "
            "kept their head and tail)")
    dev = load_prompts(cfg.dev_data, tok, cfg.max_prompt_length, cfg.chat_template)[0] if cfg.dev_data else None
    return Stage(policy, ref, tok, rewards, items, dev)


def build_scheduler(cfg: Any, optimizer: Any, total: int) -> Any:
    """The learning-rate schedule counted in optimiser updates: ``ppo_epochs x num_mini_batches`` per step."""
    updates_per_step = cfg.ppo_epochs * cfg.num_mini_batches
    return engine.build_scheduler(optimizer, cfg.lr_schedule, cfg.warmup_steps * updates_per_step,
                                  total * updates_per_step)


def prompt_stream(cfg: Any, run: engine.Run, n_prompts: int, start: int) -> Iterator[list[int]]:
    """The global prompt batch of each step from ``start`` on; each process samples its own share of it, with its
    own seed."""
    stream = prompt_batches(n_prompts, cfg.batch_size * run.world, cfg.seed, start)
    if run.world > 1:
        if n_prompts < cfg.batch_size * run.world:
            raise TrainingError(f"{n_prompts} prompts cannot fill batch_size x processes = "
                                f"{cfg.batch_size} x {run.world}; lower --batch-size")
        engine.seed_everything(engine.rank_seed(run, cfg.seed + start))
    return stream


def place_frozen_models(cfg: Any, run: engine.Run, ref: Any, rewards: Any) -> None:
    """``--reference-device`` / ``--reward-device``: move the models that only run forward passes off the policy's
    device (another GPU, or the CPU), so they do not share its memory. Inputs follow each model's own device and
    the results come back to the run's device."""
    if ref is not None and getattr(cfg, "reference_device", None):
        ref.to(cfg.reference_device)
        run.log(f"reference model on {cfg.reference_device}")
    if getattr(cfg, "reward_device", None):
        for rm in rewards.reward_models():
            rm.model.to(cfg.reward_device)
        run.log(f"reward model(s) on {cfg.reward_device}")


@contextmanager
def reference(policy: Any, ref: Any) -> Iterator[Any]:
    """The reference model: the frozen copy, or the LoRA policy with its adapter disabled."""
    if ref is not None:
        yield ref
    else:
        with policy.disable_adapter():
            yield policy


@torch.no_grad()
def logprobs_of(model: Any, rollout: Rollout, cfg: Any, run: engine.Run, idx: Sequence[int] | None = None,
                with_entropy: bool = False, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad log-probs ``[B, T]`` (and entropy) of a rollout's answers, in chunks to bound memory."""
    idx = list(range(len(rollout.response_ids))) if idx is None else list(idx)
    was = model.training
    model.eval()
    width = max(len(rollout.response_ids[i]) for i in idx)
    lps, ents = [], []
    for s in range(0, len(idx), chunk):
        part = idx[s:s + chunk]
        lp, ent = sequence_logprobs(model, [rollout.prompt_ids[i] for i in part],
                                    [rollout.response_ids[i] for i in part], cfg.temperature, run.autocast(),
                                    with_entropy)
        lps.append(torch.nn.functional.pad(lp, (0, width - lp.shape[1])))
        if ent is not None:
            ents.append(torch.nn.functional.pad(ent, (0, width - ent.shape[1])))
    if was:
        model.train()
    # back on the run's device: the reference may sit elsewhere (--reference-device)
    return torch.cat(lps).to(run.device), (torch.cat(ents).to(run.device) if ents else None)


def sample(policy: Any, tok: Any, items: Sequence[PromptItem], cfg: Any, k: int) -> Rollout:
    """k answers per prompt (consecutive rows)."""
    ids = [it.ids for it in items for _ in range(k)]
    return generate_rollout(policy, tok, ids, cfg.max_new_tokens, cfg.temperature, cfg.generation_batch_size,
                            cfg.backend)


def score(rewards: Any, items: Sequence[PromptItem], rollout: Rollout, k: int,
          missing_eos_penalty: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Total reward per answer (weighted sources, minus the missing-EOS penalty) and per-source means."""
    prompts = [it.prompt for it in items for _ in range(k)]
    rows = [{**it.row, "ended": e} for it, e in zip([it for it in items for _ in range(k)], rollout.ended)]
    total, parts = rewards(prompts, rollout.texts, rows)
    if missing_eos_penalty:
        total = total - missing_eos_penalty * (~torch.tensor(rollout.ended)).float()
    return total, parts


def sample_and_score(stage: Stage, cfg: Any, run: engine.Run, prompt_idx: Sequence[int], k: int
                     ) -> tuple[list[PromptItem], Rollout, torch.Tensor, dict[str, float], float]:
    """The start of every RL step: this process's share of the step's prompts, ``k`` answers sampled for each,
    and their scores. Returns (prompts, rollout, total scores, per-source means, the time scoring began)."""
    batch = [stage.items[i] for i in prompt_idx][run.rank::run.world]
    ro = sample(stage.policy, stage.tok, batch, cfg, k)
    t_score = time.perf_counter()
    scores, parts = score(stage.rewards, batch, ro, k, cfg.missing_eos_penalty)
    return batch, ro, scores, parts, t_score


def update_batches(cfg: Any, run: engine.Run, mask: torch.Tensor, step: int,
                   shuffle: bool = True) -> Iterator[tuple[list[list[int]], float]]:
    """The optimiser steps of one rollout: ``ppo_epochs`` passes over its answers (shuffled each pass), each in
    ``num_mini_batches`` mini-batches of ``grad_accum`` micro-batches. Yields each mini-batch's micro-batches of
    answer indices and its answer-token count over all processes (the loss's denominator)."""
    n = mask.shape[0]
    mb = n // cfg.num_mini_batches
    micro = mb // cfg.grad_accum
    gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
    for _ in range(cfg.ppo_epochs):
        perm = torch.randperm(n, generator=gen).tolist() if shuffle else list(range(n))
        for s in range(0, n, mb):
            mb_idx = perm[s:s + mb]
            denom = max(run.reduce_sum(float(mask[mb_idx].sum())), 1.0)
            yield [mb_idx[m0:m0 + micro] for m0 in range(0, len(mb_idx), micro)], denom


def rollout_metrics(rollout: Rollout, scores: torch.Tensor, seq_kl: torch.Tensor, entropy: torch.Tensor | None,
                    mask: torch.Tensor) -> dict[str, float]:
    n = mask.sum().clamp(min=1)
    out = {"objective/reward": float(scores.mean()),
           "objective/reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
           "objective/kl": float(seq_kl.mean()),
           "val/response_length": float(mask.sum(1).mean()),
           "val/eos_fraction": sum(rollout.ended) / max(1, len(rollout.ended))}
    if entropy is not None:
        out["objective/entropy"] = float((entropy * mask).sum() / n)
    return out


def sequence_kl(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ over answer tokens of log π − log π_ref (k1): the sequence KL the acceptance criteria bound."""
    return (kl_estimate(logprobs, ref_logprobs, "k1") * mask).sum(1)


def write_samples(run: engine.Run, step: int, items: Sequence[PromptItem], rollout: Rollout, scores: torch.Tensor,
                  k: int, n: int = 4, path: str = "samples.jsonl") -> None:
    """A few sample answers (prompt's last user turn, answer, reward), appended to samples.jsonl."""
    if not run.is_main:
        return
    with open(run.output / path, "a") as fh:
        for i in range(0, min(len(rollout.texts), n * k), k):
            fh.write(json.dumps({"step": step, "prompt": items[i // k].prompt.last_user[-400:],
                                 "completion": rollout.texts[i], "reward": round(float(scores[i]), 4),
                                 "ended": rollout.ended[i]}) + "\n")


@torch.no_grad()
def evaluate(policy: Any, ref: Any, tok: Any, rewards: Any, items: Sequence[PromptItem], cfg: Any,
             run: engine.Run, step: int) -> dict[str, float]:
    """Sample ``eval_samples`` answers per held-out prompt; reward, sequence KL, length, EOS rate. Every answer is
    written to ``eval/step-N.jsonl`` so reward hacking can be checked afterwards (other reward models, length
    correlation, refusals)."""
    k = cfg.eval_samples
    t0 = time.perf_counter()
    rollouts, all_scores = [], []
    for s in range(0, len(items), cfg.generation_batch_size):
        part = items[s:s + cfg.generation_batch_size]
        ro = sample(policy, tok, part, cfg, k)
        sc, _ = score(rewards, part, ro, k)
        rollouts.append(ro)
        all_scores.append(sc)
    ro = Rollout([p for r in rollouts for p in r.prompt_ids], [a for r in rollouts for a in r.response_ids],
                 [e for r in rollouts for e in r.ended], [t for r in rollouts for t in r.texts])
    scores = torch.cat(all_scores)
    lp, _ = logprobs_of(policy, ro, cfg, run)
    with reference(policy, ref) as m:
        ref_lp, _ = logprobs_of(m, ro, cfg, run)
    _, mask = pad_responses(ro.response_ids, 0)
    mask = mask.to(lp.device)
    kl = sequence_kl(lp, ref_lp, mask)
    out = {"eval/reward": float(scores.mean()), "eval/reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
           "eval/kl": float(kl.mean()), "eval/response_length": float(mask.sum(1).mean()),
           "eval/eos_fraction": sum(ro.ended) / max(1, len(ro.ended)), "eval/seconds": time.perf_counter() - t0}
    if run.is_main:
        folder = run.output / "eval"
        folder.mkdir(exist_ok=True)
        rows = [{"prompt": items[i // k].prompt.to_json(), "completion": ro.texts[i], "reward": float(scores[i]),
                 "kl": float(kl[i]), "length": int(mask[i].sum()), "ended": ro.ended[i],
                 **{c: v for c, v in items[i // k].row.items() if c not in ("messages", "prompt")}}
                for i in range(len(ro.texts))]
        write_jsonl(folder / f"step-{step:07d}.jsonl", rows)
    return out


KL_WINDOW = 4  # training batches averaged for the --kl-budget stop


def finish_step(r: engine.Run, cfg: Any, step: int, total: int, values: dict[str, float], bar: Any, *,
                policy: Any, ref: Any, tok: Any, rewards: Any, dev: Any, batch: Sequence[PromptItem],
                rollout: Rollout, scores: torch.Tensor, k: int, recent_kl: list[float]) -> bool:
    """The end of one step, the same for PPO, GRPO and RLOO: held-out evaluation every ``eval_every`` steps,
    metrics, sample answers every ``sample_every`` steps, the progress bar, and the two early stops
    (``--max-minutes`` and ``--kl-budget``). ``recent_kl`` is the caller's list of the last ``KL_WINDOW``
    training-batch KLs, which this updates in place. Returns True when the run must stop."""
    evaluated = dev is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != total
    if evaluated:
        values.update(r.reduce_mean(evaluate(policy, ref, tok, rewards, dev, cfg, r, step)))
    if step % cfg.log_every == 0 or step == total:
        r.metrics.write(step, values)
    if step == 1 or step % cfg.sample_every == 0:
        write_samples(r, step, batch, rollout, scores, k)
    bar.set_postfix(reward=f"{values['objective/reward']:.3f}", kl=f"{values['objective/kl']:.2f}")
    bar.update(1)
    recent_kl.append(values["objective/kl"])  # before any stop: the final checkpoint keeps this step's KL
    del recent_kl[:-KL_WINDOW]  # only the window is used, and checkpointed as it is
    if cfg.max_minutes is not None and r.reduce_sum(time.time() - r.started > 60 * cfg.max_minutes):
        r.log(f"step {step}: --max-minutes {cfg.max_minutes} reached; stopping")
        return True
    over = kl_over_budget(cfg.kl_budget, recent_kl, values.get("eval/kl") if evaluated else None)
    if over:
        r.log(f"step {step}: {over}; stopping")
        return True
    return False


def kl_over_budget(budget: float | None, recent_kl: Sequence[float], heldout_kl: float | None) -> str | None:
    """Why the run must stop for ``--kl-budget``, or None. One 8-answer batch's KL is noisy (10.9 where the
    held-out KL was 5.7 in a benchmark run), so the stop uses the held-out KL when this step measured it, else the
    mean of the last ``KL_WINDOW`` training batches."""
    if budget is None:
        return None
    window = list(recent_kl[-KL_WINDOW:])
    kl, what = ((heldout_kl, "held-out sequence KL") if heldout_kl is not None else
                (sum(window) / max(len(window), 1), f"sequence KL (mean of the last {len(window)} batches)"))
    return f"{what} {kl:.2f} > kl_budget {budget}" if kl > budget else None


def plot_reward_vs_kl(metrics_path: Path, out: Path) -> Path | None:
    """The run's reward against its KL to the reference (training rollouts, and eval points when present)."""
    import matplotlib  # here, not at the top: only the end of a run draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = engine.read_metrics(metrics_path) if metrics_path.exists() else []
    train = [(r["objective/kl"], r["objective/reward"]) for r in rows
             if "objective/kl" in r and "objective/reward" in r]
    ev = [(r["eval/kl"], r["eval/reward"]) for r in rows if "eval/kl" in r]
    if not train and not ev:
        return None
    fig, ax = plt.subplots(figsize=(5, 4))
    if train:
        # one batch is noisy: its points, and a running mean over 5 steps as the curve
        ax.plot([t[0] for t in train], [t[1] for t in train], ".", alpha=0.35, color="C0", label="rollout batches")
        w = min(5, len(train))
        smooth = [[sum(v) / w for v in zip(*train[i:i + w])] for i in range(len(train) - w + 1)]
        ax.plot([t[0] for t in smooth], [t[1] for t in smooth], "-", color="C0", label=f"rollouts, mean of {w} steps")
    if ev:
        ax.plot([t[0] for t in ev], [t[1] for t in ev], "o-", color="C3", label="held-out prompts")
    ax.set_xlabel("sequence KL to the reference (nats)")
    ax.set_ylabel("reward (rollouts: minus any missing-EOS penalty)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def prompt_batches(n: int, batch_size: int, seed: int, start_step: int) -> Iterator[list[int]]:
    """Prompt indices per step, reshuffled each epoch; a resumed run continues where it stopped."""

    def make_epoch(epoch: int) -> list[list[int]]:
        every = batches(n, batch_size, seed, epoch)
        return [b for b in every if len(b) == batch_size] or every

    for _, b in engine.micro_batch_stream(make_epoch, start_micro=start_step):
        yield b


def total_rl_steps(cfg: Any, n_prompts: int) -> int:
    return engine.total_steps(max(1, n_prompts // cfg.batch_size), 1, cfg.num_epochs, cfg.max_steps)


def finish(r: engine.Run, cfg: Any, policy: Any, tok: Any) -> Path:
    """Save the policy as a plain Hugging Face folder and the reward-vs-KL plot."""
    final = engine.finish(r, policy, tok)
    plot = plot_reward_vs_kl(r.output / "metrics.jsonl", r.output / "reward_vs_kl.png") if r.is_main else None
    r.log(f"saved {final}" + (f"; plot {plot}" if plot else ""))
    return final


def end_run(r: engine.Run, cfg: Any, stage: Stage, step: int, model: Any, optimizer: Any, scheduler: Any,
            state: dict[str, Any]) -> Path:
    """After the last step: a held-out evaluation, the checkpoint of the last step (with ``state``, e.g. the KL
    window), the final policy and the plot."""
    if stage.dev is not None:
        r.metrics.write(step, stage.evaluate(cfg, r, step))
    engine.save_checkpoint(r, step, model, optimizer, scheduler, state)
    return finish(r, cfg, stage.policy, stage.tok)
