"""PPO against a reward model (``alignloop ppo``): the InstructGPT recipe with the details that make it work for
language models ("The N Implementation Details of RLHF with PPO", Huang et al. 2024).

Each step, top to bottom:
1. rollout: sample answers for ``batch_size`` prompts from the current policy (KV-cached, length-bucketed);
2. score: reward sources → one score per answer (minus a penalty when it never emitted EOS); log-probs of the
   sampled tokens under the policy and the reference (the LoRA policy with its adapter off, or a frozen copy),
   and the critic's values, each from one forward over right-padded prompt + answer;
3. per-token rewards ``−β·KL_t`` with the score added at the last token (optionally whitened); GAE (γ=1, λ=0.95);
   advantages whitened;
4. ``ppo_epochs`` passes over the rollout in ``num_mini_batches`` optimizer steps: clipped policy objective +
   ``vf_coef`` × clipped value loss, normalised over the mini-batch's answer tokens (so grad accumulation gives
   the same gradient as one big batch);
5. the adaptive KL controller moves β toward ``target_kl``; metrics, sample answers, checkpoints; stop when the
   sequence KL exceeds ``kl_budget``.

The critic is a separate sequence-classification model initialised from the reward model (backbone and score
head; with LoRA, the reward model's backbone + an adapter + a trainable copy of its head). Dropout is off in
every model so rollout and training log-probs agree.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from alignloop.generation.rollout import pad_responses, sequence_logprobs, sequence_values
from alignloop.losses import (
    explained_variance,
    gae,
    kl_estimate,
    kl_penalized_rewards,
    masked_mean,
    masked_whiten,
    policy_clip_loss,
    value_clip_loss,
)
from alignloop.models.value import build_value_model, rl_head  # noqa: F401  (rl_head re-exported)
from alignloop.trainers import engine
from alignloop.trainers import rl_common as rl
from alignloop.trainers.config import PPOConfig
from alignloop.trainers.reward_sources import Rewards
from alignloop.trainers.rl_common import finish  # noqa: F401  (its old place)


class AdaptiveKLController:
    """Ziegler et al. (2019): ``β ← β·(1 + clip(KL/target − 1, ±0.2)·n/horizon)``."""

    def __init__(self, init: float, target: float | None, horizon: int):
        self.value, self.target, self.horizon = init, target, horizon

    def update(self, kl: float, n: int) -> None:
        if self.target is None or not math.isfinite(kl):
            return
        error = max(-0.2, min(0.2, kl / self.target - 1))
        self.value *= 1 + error * n / self.horizon


class PolicyAndCritic(torch.nn.Module):
    """One module holding both, so one optimizer and one checkpoint cover both."""

    def __init__(self, policy: Any, critic: Any):
        super().__init__()
        self.policy, self.critic = policy, critic


def build_critic(cfg: PPOConfig, rewards: Rewards, run: engine.Run) -> Any:
    """The value model (``models.value``): from the run's first reward model, or from the policy with a zero
    head when the rewards are functions only; with ``--lora`` its backbone gets an adapter."""
    rms = rewards.reward_models()
    lora = {"r": cfg.lora_r, "alpha": cfg.lora_alpha, "targets": cfg.lora_targets} if cfg.lora else None
    critic = build_value_model(cfg.model, rms[0].folder if rms else None, lora)
    return critic.to(run.device)


def run(cfg: PPOConfig) -> Path:
    r = engine.setup(cfg)
    stage = rl.setup_stage(cfg, r)
    policy, ref, tok, rewards, items = stage.policy, stage.ref, stage.tok, stage.rewards, stage.items
    critic = build_critic(cfg, rewards, r)

    both = PolicyAndCritic(policy, critic)
    optimizer = engine.build_optimizer([{"params": policy, "lr": cfg.learning_rate},
                                        {"params": critic, "lr": cfg.critic_learning_rate or cfg.learning_rate}],
                                       cfg.learning_rate, cfg.weight_decay)
    total = rl.total_rl_steps(cfg, len(items) // r.world)  # each step takes batch_size prompts per process
    scheduler = rl.build_scheduler(cfg, optimizer, total)
    kl_ctl = AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    start = 0
    recent_kl: list[float] = []  # training-batch KLs, for the --kl-budget stop (kept in checkpoints)
    if cfg.resume:
        state = engine.load_checkpoint(r, both, optimizer, scheduler)
        start, kl_ctl.value = state["step"], state.get("kl_coef", kl_ctl.value)
        recent_kl = list(state.get("recent_kl", []))
    r.metrics.truncate_after(start)
    if stage.dev is not None and start == 0:
        r.metrics.write(0, stage.evaluate(cfg, r, 0))

    k = cfg.num_generations
    stream = rl.prompt_stream(cfg, r, len(items), start)
    bar = engine.progress(r, total, initial=start, desc="ppo")
    step = start
    for step in range(start + 1, total + 1):
        t_step = time.perf_counter()
        # ---- 1. rollout, 2. score -------------------------------------------------------------------
        batch, ro, scores, parts, t0 = rl.sample_and_score(stage, cfg, r, next(stream), k)
        old_lp, entropy = rl.logprobs_of(policy, ro, cfg, r, with_entropy=True)
        with rl.reference(policy, ref) as m:
            ref_lp, _ = rl.logprobs_of(m, ro, cfg, r)
        critic.eval()
        with torch.no_grad():
            old_values = sequence_values(critic, ro.prompt_ids, ro.response_ids, r.autocast())
        critic.train()
        _, mask = pad_responses(ro.response_ids, tok.pad_token_id)
        mask, scores = mask.to(r.device), scores.to(r.device)  # beside the log-probs (GPU runs)
        t_score = time.perf_counter() - t0
        # ---- 3. rewards, advantages ----------------------------------------------------------------
        kl = kl_estimate(old_lp, ref_lp, cfg.kl_estimator) * mask
        token_rewards = kl_penalized_rewards(scores, kl, mask, kl_ctl.value)
        if cfg.whiten_rewards:
            token_rewards = masked_whiten(token_rewards, mask, shift_mean=False) * mask
        advantages, returns = gae(token_rewards, old_values, mask, cfg.gamma, cfg.lam)
        advantages = masked_whiten(advantages, mask) * mask
        # ---- 4. PPO epochs over mini-batches -------------------------------------------------------
        t0 = time.perf_counter()
        stats = {"pg": 0.0, "vf": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "ratio": 0.0, "vf_clipfrac": 0.0,
                 "tokens": 0.0}
        grad_norms = []
        policy.train()
        for micro_batches, denom in rl.update_batches(cfg, r, mask, step):
            for idx in micro_batches:
                prompts_i = [ro.prompt_ids[i] for i in idx]
                answers_i = [ro.response_ids[i] for i in idx]
                width = max(len(a) for a in answers_i)
                sl = (torch.tensor(idx), slice(0, width))
                lp, _ = sequence_logprobs(policy, prompts_i, answers_i, cfg.temperature, r.autocast())
                values = sequence_values(critic, prompts_i, answers_i, r.autocast())
                m_ = mask[sl]
                pg, st = policy_clip_loss(lp, old_lp[sl], advantages[sl], m_, cfg.cliprange)
                vf, vclip = value_clip_loss(values, old_values[sl], returns[sl], m_, cfg.cliprange_value)
                loss = (pg + cfg.vf_coef * vf) / denom
                r.accelerator.backward(loss)
                stats["pg"] += float(pg.detach())
                stats["vf"] += float(vf.detach())
                stats["clipfrac"] += float(st["clipfrac"])
                stats["approx_kl"] += float(st["approx_kl"])
                stats["ratio"] += float(st["ratio"])
                stats["vf_clipfrac"] += float(vclip)
                stats["tokens"] += float(m_.sum())
            engine.check_finite(r, stats["pg"] + stats["vf"], step)
            engine.reduce_gradients(r, both)  # the policy/critic are not DDP-wrapped: sum here
            grad_norms.append(engine.clip_and_step(r, both, optimizer, scheduler, cfg.max_grad_norm))
        t_train = time.perf_counter() - t0
        # ---- 5. metrics, KL control, checkpoints ---------------------------------------------------
        seq_kl = rl.sequence_kl(old_lp, ref_lp, mask)
        tok_n = max(stats["tokens"], 1.0)
        values = rl.rollout_metrics(ro, scores, seq_kl, entropy, mask)
        values.update(parts)
        values.update({
            "objective/non_score_reward": float((-kl_ctl.value * kl).sum(1).mean()),
            "objective/rlhf_reward": float(scores.mean() - kl_ctl.value * kl.sum(1).mean()),
            "objective/kl_coef": kl_ctl.value,
            "policy/loss": stats["pg"] / tok_n, "policy/clipfrac": stats["clipfrac"] / tok_n,
            "policy/approx_kl": stats["approx_kl"] / tok_n, "policy/ratio_mean": stats["ratio"] / tok_n,
            "value/loss": stats["vf"] / tok_n, "value/clipfrac": stats["vf_clipfrac"] / tok_n,
            "value/explained_variance": float(explained_variance(old_values, returns, mask)),
            "value/mean": float(masked_mean(old_values, mask)),
            "grad_norm": sum(grad_norms) / len(grad_norms), "learning_rate": scheduler.get_last_lr()[0],
            "time/generate": ro.seconds, "time/score": t_score, "time/train": t_train,
            "time/step": time.perf_counter() - t_step, "tokens/generated_per_s": ro.num_tokens / max(ro.seconds, 1e-9),
        })
        values = r.reduce_mean(values)  # every process logs/uses the means over all processes
        kl_ctl.update(values["objective/kl"], len(ro.response_ids) * r.world)
        if rl.finish_step(r, cfg, step, total, values, bar, policy=policy, ref=ref, tok=tok, rewards=rewards,
                          dev=stage.dev, batch=batch, rollout=ro, scores=scores, k=k, recent_kl=recent_kl):
            break
        if cfg.save_every and step % cfg.save_every == 0 and step != total:
            engine.save_checkpoint(r, step, both, optimizer, scheduler,
                                   {"kl_coef": kl_ctl.value, "recent_kl": recent_kl})
    bar.close()
    return rl.end_run(r, cfg, stage, step, both, optimizer, scheduler,
                      {"kl_coef": kl_ctl.value, "recent_kl": recent_kl})
