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
