"""Every loss and RL estimator as a pure tensor function. Imports only torch.

Each function documents its formula; each has a test that computes the expected value by hand
(``tests/unit/test_losses*.py``). Sections: token-level (SFT), reward models, DPO family, PPO / GRPO / RLOO.
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
# Reward models
# --------------------------------------------------------------------------------------------------


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None,
                         tie: torch.Tensor | None = None, tie_mode: str = "skip") -> torch.Tensor:
    """Per-pair Bradley-Terry loss ``-log σ(r_w - r_l - m)`` (same shape as ``chosen``).

    ``margin`` m (optional, per pair) asks the chosen answer to win by at least m ("much better" > "slightly
    better", the Llama-2 recipe). Ties (``tie`` true): ``tie_mode="skip"`` gives them a loss of 0 (the caller also
    leaves them out of the normaliser, see ``bradley_terry_loss``); ``"equal"`` trains toward equal rewards with
    the BT cross-entropy against a target of ½: ``-½ log σ(d) - ½ log σ(-d)`` with ``d = r_w - r_l``, whose
    minimum is at d = 0.
    """
    chosen, rejected = chosen.float(), rejected.float()
    diff = chosen - rejected
    loss = -F.logsigmoid(diff - margin.float() if margin is not None else diff)
    if tie is not None:
        tie = tie.bool()
        if tie_mode == "equal":
            tied = -0.5 * (F.logsigmoid(diff) + F.logsigmoid(-diff))
        elif tie_mode == "skip":
            tied = torch.zeros_like(loss)
        else:
            raise ValueError(f"tie_mode must be 'skip' or 'equal', got {tie_mode!r}")
        loss = torch.where(tie, tied, loss)
    return loss


def pair_weights(weight: torch.Tensor | None, tie: torch.Tensor | None, tie_mode: str, n: int,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Weight of each pair in the loss: the given weight (for pairs from a K-way ranking its share of the ranking's
    weight 1, see ``data.readers.read_preferences``; else 1), and 0 for ties that are skipped."""
    w = torch.ones(n, device=device) if weight is None else weight.float()
    if tie is not None and tie_mode == "skip":
        w = w * (~tie.bool()).float()
    return w


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor | None = None,
                       margin: torch.Tensor | None = None, tie: torch.Tensor | None = None,
                       tie_mode: str = "skip") -> torch.Tensor:
    """Weighted mean Bradley-Terry loss ``Σ_i w_i ℓ_i / Σ_i w_i`` with ``ℓ_i`` from ``bradley_terry_losses``.

    Pairs expanded from a ranking of K completions carry ``w = 1/C(K,2)`` (1/(pairs kept) when its ties are left
    out), so one ranking weighs as much as one labelled pair (InstructGPT); skipped ties carry ``w = 0``. Trainers
    that accumulate gradients divide the weighted sum by the step's total weight instead (see ``train/reward.py``).
    """
    losses = bradley_terry_losses(chosen, rejected, margin, tie, tie_mode)
    w = pair_weights(weight, tie, tie_mode, losses.numel(), losses.device)
    return (w * losses).sum() / w.sum().clamp(min=1e-12)



# --------------------------------------------------------------------------------------------------
# DPO family
# --------------------------------------------------------------------------------------------------

# Inputs are summed log-probabilities of each answer ([B] tensors): ``pc``/``pr`` under the policy for the chosen /
# rejected answer, ``rc``/``rr`` under the reference. Each loss returns ``(losses [B], chosen_rewards [B],
# rejected_rewards [B])``; the rewards are the implicit rewards, detached, for the ``rewards/*`` metrics.


def dpo_logratio(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor) -> torch.Tensor:
    """``h = (log π(y_w) - log π(y_l)) - (log π_ref(y_w) - log π_ref(y_l))``: how much more the policy prefers the
    chosen answer than the reference does."""
    return (pc - pr) - (rc - rr)


def _rewards(pc, pr, rc, rr, beta):
    return (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float = 0.1,
             label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023), sigmoid loss: ``-log σ(β h)``; β = 0.1 as in the paper.

    With ``label_smoothing = ε > 0`` it is conservative DPO (cDPO, Mitchell 2023): the label is flipped with
    probability ε, ``-(1-ε) log σ(β h) - ε log σ(-β h)``.
    """
    z = beta * dpo_logratio(pc, pr, rc, rr)
    losses = -(1 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return (losses, *_rewards(pc, pr, rc, rr, beta))


def robust_dpo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float = 0.1,
                    label_smoothing: float = 0.1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Robust DPO (rDPO, Chowdhury et al. 2024): an unbiased loss under labels flipped with probability ε,
    ``((1-ε)(-log σ(β h)) - ε(-log σ(-β h))) / (1 - 2ε)``. (TRL's ``robust``; ε < 0.5.)"""
    z = beta * dpo_logratio(pc, pr, rc, rr)
    losses = (-(1 - label_smoothing) * F.logsigmoid(z) + label_smoothing * F.logsigmoid(-z)) / (1 - 2 * label_smoothing)
    return (losses, *_rewards(pc, pr, rc, rr, beta))


def ipo_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float = 0.1
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023): ``(h - 1/(2τ))²`` with τ = β. As in the paper's token-level form (and TRL), the
    log-probs passed in are *averaged* over each answer's tokens, not summed: the caller normalises."""
    h = dpo_logratio(pc, pr, rc, rr)
    return ((h - 1 / (2 * beta)) ** 2, *_rewards(pc, pr, rc, rr, beta))


def hinge_loss(pc: torch.Tensor, pr: torch.Tensor, rc: torch.Tensor, rr: torch.Tensor, beta: float = 0.1
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hinge / SLiC-HF calibration loss (Zhao et al. 2023) on the DPO log-ratio: ``max(0, 1 - β h)``."""
    h = dpo_logratio(pc, pr, rc, rr)
    return (torch.relu(1 - beta * h), *_rewards(pc, pr, rc, rr, beta))


def simpo_loss(pc_avg: torch.Tensor, pr_avg: torch.Tensor, beta: float = 2.0, gamma: float = 1.0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024), reference-free and length-normalised:
    ``-log σ(β/|y_w| log π(y_w) - β/|y_l| log π(y_l) - γ)``; inputs are *average* per-token log-probs.
    Defaults β = 2.0, γ = 1.0 (the paper's γ/β = 0.5)."""
    chosen, rejected = beta * pc_avg, beta * pr_avg
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return losses, chosen.detach(), rejected.detach()


def kto_loss(policy_logps: torch.Tensor, reference_logps: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor,
             beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024) for unpaired answers labelled desirable or not.

    ``r = log π(y|x) - log π_ref(y|x)``, ``z = max(0, KL)`` (a detached batch estimate of KL(π‖π_ref), from
    mismatched prompt/answer pairs); desirable: ``λ_D (1 - σ(β (r - z)))``, undesirable: ``λ_U (1 - σ(β (z - r)))``.
    Defaults β = 0.1, λ_D = λ_U = 1 (the paper's). Returns ``(losses [N], rewards β r [N], detached)``.
    """
    r = policy_logps - reference_logps
    z = kl.detach().clamp(min=0)
    desirable = desirable.bool()
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (r - z))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (z - r))))
    return losses, (beta * r).detach()



# --------------------------------------------------------------------------------------------------
# PPO / GRPO / RLOO
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
