"""Every loss and RL estimator as a pure tensor function. Imports only torch.

Each function documents its formula; each has a test that computes the expected value by hand
(``tests/test_losses*.py``). Sections: token-level (SFT), reward models, DPO family, PPO / GRPO / RLOO.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --------------------------------------------------------------------------------------------------
# Token level
# --------------------------------------------------------------------------------------------------


def masked_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of ``targets`` ([N]) under ``logits`` ([N, V]): ``-Σ log p(y_i)``.

    The caller divides by the number of loss tokens of the whole step (see ``train/sft.py``).
    """
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / T)[target]`` per position; same shape as ``targets``.

    Computed as ``logit[y] - logsumexp(logits)`` to avoid materialising the full log-softmax.
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    picked = torch.gather(logits, -1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is 1."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``(x - mean) / sqrt(var + 1e-8)`` over masked positions; ``shift_mean=False`` keeps the mean (reward
    whitening in the N-implementation-details recipe keeps it)."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    out = (values - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        out = out + mean
    return out


# --------------------------------------------------------------------------------------------------
# Reward models (issue 3)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# DPO family (issue 4)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# PPO / GRPO / RLOO (issue 5)
# --------------------------------------------------------------------------------------------------


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π‖π_ref) from samples of π, with ``r = log π_ref − log π`` (Schulman's notes):

    * ``k1 = −r = log π − log π_ref``: unbiased, can be negative per token; its sum over an answer is the
      sequence log-ratio, the KL the InstructGPT recipe penalises.
    * ``k3 = (e^r − 1) − r``: unbiased, always ≥ 0, lower variance; the usual choice as a loss term (GRPO).
    """
    log_ratio = ref_logprobs.float() - logprobs.float()
    if kind == "k1":
        return -log_ratio
    if kind == "k3":
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator '{kind}' (k1 or k3)")


def kl_penalized_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> torch.Tensor:
    """Per-token rewards ``r_t = −β·KL_t``, plus the sequence score at the last answer token (InstructGPT).

    ``scores`` [B], ``kl`` and ``mask`` [B, T] (answers right-padded). Returns [B, T], zero on padding.
    """
    mask = mask.to(kl.dtype)
    rewards = -beta * kl * mask
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards * mask


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over right-padded answers ([B, T]); returns (advantages, returns).

    ``δ_t = r_t + γ·V_{t+1} − V_t`` (``V`` after the last token is 0: the episode ends), ``A_t = δ_t + γλ·A_{t+1}``,
    ``returns = A + V``. Padding positions get 0 and do not leak into the answer.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        adv[:, t] = last
    return adv, (adv + values) * mask


def policy_clip_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
                     mask: torch.Tensor, clip: float = 0.2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped surrogate, summed over masked tokens (the caller divides by the step's token count):

    ``ρ = exp(log π − log π_old)``, ``L = Σ max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε))``.
    Also returns per-token sums for ``policy/clipfrac``, ``policy/approx_kl`` (k3 of old vs new, Schulman)
    and ``policy/ratio_mean``, each summed over the mask.
    """
    mask = mask.to(logprobs.dtype)
    log_ratio = logprobs - old_logprobs
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = (torch.maximum(unclipped, clipped) * mask).sum()
    with torch.no_grad():
        stats = {"clipfrac": ((clipped > unclipped).to(mask.dtype) * mask).sum(),
                 "approx_kl": ((torch.expm1(-log_ratio) + log_ratio) * mask).sum(),
                 "ratio": (ratio * mask).sum()}
    return loss, stats


def value_clip_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                    clip: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, summed over masked tokens: ``½ Σ max((V − R)², (clip(V, V_old ± ε) − R)²)``.

    Returns (loss sum, count of tokens where the clipped branch was taken).
    """
    mask = mask.to(values.dtype)
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    a, b = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * (torch.maximum(a, b) * mask).sum()
    return loss, ((b > a).to(mask.dtype) * mask).sum().detach()


def group_advantages(rewards: torch.Tensor, k: int, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: ``A_i = (r_i − mean_group) / (std_group + ε)`` over groups of ``k`` consecutive samples of one
    prompt (``scale=False``: Dr. GRPO, no division by the std). ``rewards`` [B·k] → [B·k]."""
    g = rewards.float().view(-1, k)
    adv = g - g.mean(1, keepdim=True)
    if scale:
        adv = adv / (g.std(1, keepdim=True, unbiased=True if k > 1 else False) + eps)
    return adv.view(-1)


def leave_one_out_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """RLOO: ``A_i = r_i − (Σ_{j≠i} r_j)/(k−1)`` over groups of ``k`` samples of one prompt (k ≥ 2)."""
    if k < 2:
        raise ValueError("RLOO needs at least 2 samples per prompt")
    g = rewards.float().view(-1, k)
    baseline = (g.sum(1, keepdim=True) - g) / (k - 1)
    return (g - baseline).view(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of ``softmax(logits)`` per position: ``logsumexp(z) − Σ p·z``."""
    logits = logits.float()
    p = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def explained_variance(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 − Var(target − pred) / Var(target)`` over masked positions (1: perfect critic, ≤0: useless)."""
    var_t = masked_var(target, mask, unbiased=False)
    return 1 - masked_var(target - pred, mask, unbiased=False) / var_t.clamp(min=1e-8)
