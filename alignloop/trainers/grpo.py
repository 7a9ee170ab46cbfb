"""GRPO and RLOO (``alignloop grpo``, ``alignloop rloo``): K answers per prompt, a baseline from the other answers
to the same prompt, no critic. Same rollout engine and reward sources as PPO. One loop for both: they differ only
in the advantages (``trainers/rloo.py`` is RLOO's runner name).

Each step: sample K answers for each of ``batch_size`` prompts → score them → (KL in the reward: subtract
``β·Σ_t KL_t`` from each answer's score) → advantages per answer: group-relative ``(r − mean)/std`` (GRPO) or
leave-one-out ``r − mean(others)`` (RLOO), the same for every token of the answer → ``ppo_epochs`` passes of the
clipped surrogate (plus ``β·KL_t`` per token when the KL is a loss term), normalised over the step's answer
tokens. With one epoch and one mini-batch the ratio is exactly 1 and the old log-probs are simply the detached
current ones, which saves a forward pass.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from alignloop.generation.rollout import pad_responses, sequence_logprobs
from alignloop.losses import group_advantages, kl_estimate, leave_one_out_advantages, policy_clip_loss
from alignloop.trainers import engine
from alignloop.trainers import rl_common as rl
from alignloop.trainers.config import GRPOConfig, RLOOConfig


def advantages_for(kind: str, rewards: torch.Tensor, k: int, scale: bool) -> torch.Tensor:
    if kind == "grpo":
        return group_advantages(rewards, k, scale=scale)
    adv = leave_one_out_advantages(rewards, k)
    if scale and len(adv) > 1:
        adv = adv / (adv.std() + 1e-4)
    return adv


def run(cfg: GRPOConfig | RLOOConfig) -> Path:
    kind = cfg.command[0]  # "grpo" or "rloo": how the advantages are computed
    r = engine.setup(cfg)
    stage = rl.setup_stage(cfg, r)
    policy, ref, tok, rewards, items = stage.policy, stage.ref, stage.tok, stage.rewards, stage.items

    total = rl.total_rl_steps(cfg, len(items) // r.world)  # each step takes batch_size prompts per process
    optimizer = engine.build_optimizer(policy, cfg.learning_rate, cfg.weight_decay)
    scheduler = rl.build_scheduler(cfg, optimizer, total)
    state = engine.load_checkpoint(r, policy, optimizer, scheduler) if cfg.resume else {"step": 0}
    start = state["step"]
    recent_kl: list[float] = list(state.get("recent_kl", []))  # training-batch KLs, for --kl-budget (checkpointed)
    r.metrics.truncate_after(start)
    if stage.dev is not None and start == 0:
        r.metrics.write(0, stage.evaluate(cfg, r, 0))

    k = cfg.num_generations
    reuse_old = cfg.ppo_epochs == 1 and cfg.num_mini_batches == 1  # on-policy: ratio ≡ 1
    stream = rl.prompt_stream(cfg, r, len(items), start)
    bar = engine.progress(r, total, initial=start, desc=kind)
    step = start
    for step in range(start + 1, total + 1):
        t_step = time.perf_counter()
        batch, ro, scores, parts, t0 = rl.sample_and_score(stage, cfg, r, next(stream), k)
        _, mask = pad_responses(ro.response_ids, tok.pad_token_id)
        mask, scores = mask.to(r.device), scores.to(r.device)  # beside the log-probs (GPU runs)
        old_lp, entropy = (None, None) if reuse_old else rl.logprobs_of(policy, ro, cfg, r, with_entropy=True)
        with rl.reference(policy, ref) as m:
            ref_lp, _ = rl.logprobs_of(m, ro, cfg, r)
        t_score = time.perf_counter() - t0
        seq_reward = scores
        if cfg.kl_in == "reward":
            if old_lp is None:
                old_lp, entropy = rl.logprobs_of(policy, ro, cfg, r, with_entropy=True)
            seq_reward = scores - cfg.kl_coef * (kl_estimate(old_lp, ref_lp, "k1") * mask).sum(1)
        adv = advantages_for(kind, seq_reward, k, cfg.scale_rewards)

        t0 = time.perf_counter()
        st_sum = {"pg": 0.0, "kl": 0.0, "clipfrac": 0.0, "approx_kl": 0.0, "ratio": 0.0, "tokens": 0.0}
        new_lp_all = torch.zeros_like(mask)
        ent_all = torch.zeros_like(mask)
        grad_norms = []
        policy.train()
        for micro_batches, denom in rl.update_batches(cfg, r, mask, step, shuffle=not reuse_old):
            for idx in micro_batches:
                answers = [ro.response_ids[i] for i in idx]
                sl = (torch.tensor(idx), slice(0, max(len(a) for a in answers)))
                lp, ent = sequence_logprobs(policy, [ro.prompt_ids[i] for i in idx], answers, cfg.temperature,
                                            r.autocast(), with_entropy=reuse_old)
                m_ = mask[sl]
                old = lp.detach() if reuse_old else old_lp[sl]
                pg, st = policy_clip_loss(lp, old, adv[idx].unsqueeze(1).expand_as(lp), m_, cfg.cliprange)
                kl_t = (kl_estimate(lp, ref_lp[sl], cfg.kl_estimator) * m_).sum()
                loss = pg + (cfg.kl_coef * kl_t if cfg.kl_in == "loss" else 0.0)
                r.accelerator.backward(loss / denom)
                if reuse_old:
                    new_lp_all[sl] = lp.detach()
                    ent_all[sl] = ent
                st_sum["pg"] += float(pg.detach())
                st_sum["kl"] += float(kl_t.detach())
                for key in ("clipfrac", "approx_kl", "ratio"):
                    st_sum[key] += float(st[key])
                st_sum["tokens"] += float(m_.sum())
            engine.check_finite(r, st_sum["pg"], step)
            engine.reduce_gradients(r, policy)  # the policy/critic are not DDP-wrapped: sum here
            grad_norms.append(engine.clip_and_step(r, policy, optimizer, scheduler, cfg.max_grad_norm))
        t_train = time.perf_counter() - t0
        if reuse_old:
            old_lp, entropy = new_lp_all, ent_all
        seq_kl = rl.sequence_kl(old_lp, ref_lp, mask)
        tok_n = max(st_sum["tokens"], 1.0)
        values = rl.rollout_metrics(ro, scores, seq_kl, entropy, mask)
        values.update(parts)
        groups = scores.view(-1, k)
        values.update({
            "objective/kl_coef": cfg.kl_coef, "objective/group_reward_std": float(groups.std(1).mean()),
            "objective/solved_groups": float((groups.std(1) == 0).float().mean()),
            "policy/loss": st_sum["pg"] / tok_n, "policy/kl_loss": st_sum["kl"] / tok_n,
            "policy/clipfrac": st_sum["clipfrac"] / tok_n, "policy/approx_kl": st_sum["approx_kl"] / tok_n,
            "policy/ratio_mean": st_sum["ratio"] / tok_n,
            "grad_norm": sum(grad_norms) / len(grad_norms), "learning_rate": scheduler.get_last_lr()[0],
            "time/generate": ro.seconds, "time/score": t_score, "time/train": t_train,
            "time/step": time.perf_counter() - t_step, "tokens/generated_per_s": ro.num_tokens / max(ro.seconds, 1e-9),
        })
        values = r.reduce_mean(values)  # every process logs/uses the means over all processes
        if rl.finish_step(r, cfg, step, total, values, bar, policy=policy, ref=ref, tok=tok, rewards=rewards,
                          dev=stage.dev, batch=batch, rollout=ro, scores=scores, k=k, recent_kl=recent_kl):
            break
        if cfg.save_every and step % cfg.save_every == 0 and step != total:
            engine.save_checkpoint(r, step, policy, optimizer, scheduler, {"recent_kl": recent_kl})
    bar.close()
    return rl.end_run(r, cfg, stage, step, policy, optimizer, scheduler, {"recent_kl": recent_kl})


run_grpo = run_rloo = run  # the runners' names before every trainer's runner was called ``run``
