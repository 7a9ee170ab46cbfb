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
    """Weight of each pair in the loss: the given weight (1/C(K,2) for pairs from a K-way ranking, else 1), and 0
    for ties that are skipped."""
    w = torch.ones(n, device=device) if weight is None else weight.float()
    if tie is not None and tie_mode == "skip":
        w = w * (~tie.bool()).float()
    return w


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, weight: torch.Tensor | None = None,
                       margin: torch.Tensor | None = None, tie: torch.Tensor | None = None,
                       tie_mode: str = "skip") -> torch.Tensor:
    """Weighted mean Bradley-Terry loss ``Σ_i w_i ℓ_i / Σ_i w_i`` with ``ℓ_i`` from ``bradley_terry_losses``.

    Pairs expanded from a ranking of K completions carry ``w = 1/C(K,2)``, so one ranking weighs as much as one
    labelled pair (InstructGPT); skipped ties carry ``w = 0``. Trainers that accumulate gradients divide the
    weighted sum by the step's total weight instead (see ``train/reward.py``).
    """
    losses = bradley_terry_losses(chosen, rejected, margin, tie, tie_mode)
    w = pair_weights(weight, tie, tie_mode, losses.numel(), losses.device)
    return (w * losses).sum() / w.sum().clamp(min=1e-12)



# --------------------------------------------------------------------------------------------------
# DPO family (issue 4)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# PPO / GRPO / RLOO (issue 5)
# --------------------------------------------------------------------------------------------------
