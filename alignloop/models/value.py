"""The value model (PPO's critic): a backbone with a one-output score head, read at every answer token.

It starts from the reward model, read through the one reader of a reward-model folder
(``models.reward_model.load_reward_model``): its backbone and its score head folded into one output on the
reward's *normalised* scale, ``V = mean over heads of (W_h·h − offset_h) / scale_h``, so value and reward agree
from step 1. (Without the offset the values sat offset/scale above the rewards, and the last token of every
answer, the stop token of the ended ones, got a large negative advantage: a push against ending answers.) When
the rewards are functions only, the critic is the policy's backbone with a zero head. With LoRA the backbone gets
an adapter and the score head is trained in full.

The critic reads the policy's tokens at every answer position, so it needs a causal-LM backbone: an encoder
reward model (``reward train --backbone encoder``) or an encoder classifier folder (BERT, DeBERTa, ...) is refused
with a message that says so.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import torch

from alignloop.core.errors import ModelError


def critic_parts(critic: Any) -> tuple[Any, Any]:
    """(backbone, score head) of a sequence-classification model (plain or peft-wrapped)."""
    base = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    prefix = getattr(base, "base_model_prefix", "model")
    backbone = getattr(base, prefix, None) or base.model
    head = getattr(base, "score", None) or getattr(base, "classifier", None)
    if head is None:
        raise TypeError(f"{type(base).__name__} has no score head")
    return backbone, head


def rl_head(model: Any) -> Any:
    """The score head of a sequence-classification model (plain or peft-wrapped)."""
    return critic_parts(model)[1]


def _critic_from_reward_model(folder: str) -> Any:
    """The reward model's sequence-classification module with its heads folded into one normalised output."""
    from alignloop.models.reward_model import load_reward_model

    rm = load_reward_model(folder)
    if rm.info.backbone != "causal":
        what = (f"an encoder reward model ({rm.info.base_model or 'a sentence encoder'})"
                if rm.info.backbone == "encoder" else
                f"a {type(rm.model).__name__} scored with its own classifier on a pooled state")
        raise ModelError(f"{folder} is {what}; PPO's critic reads a value at every token of the policy's answer "
                         "and needs a causal-LM reward model (reward train --backbone causal). Use it with grpo or "
                         "rloo, or as a --reward rm:DIR next to a causal --reward-model")
    if rm.info.pooling == "mean":
        print(f"warning: {folder} pools the mean of the answer's tokens; the critic reads the head at each token, so "
              "at the start its value after the answer is not the reward (it is with --pooling last). PPO still "
              "learns the values; GRPO and RLOO need no critic.", file=sys.stderr)
    critic = rm.model
    head = rl_head(critic)
    n = head.weight.shape[0]
    offset = _per_head(rm.info.offset, n)
    scale = _per_head(rm.info.scale, n)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    folded = torch.nn.Linear(head.weight.shape[1], 1, bias=True)
    with torch.no_grad():
        folded.weight.copy_((head.weight.detach().float() / scale.view(-1, 1)).mean(0, keepdim=True))
        folded.bias.copy_(-(offset / scale).mean().reshape(1))
    setattr(critic, "score" if hasattr(critic, "score") else "classifier", folded)
    critic.config.num_labels = 1
    return critic


def _per_head(value: float | Sequence[float], n: int) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    return t.expand(n) if t.numel() == 1 else t


def _critic_from_policy(policy: str) -> Any:
    """The policy's backbone under a zero score head: V = 0 everywhere at the start."""
    from transformers import AutoModelForSequenceClassification

    from alignloop.models.load import quiet_transformers, resolve_model

    quiet_transformers()
    critic = AutoModelForSequenceClassification.from_pretrained(str(resolve_model(policy)), local_files_only=True,
                                                                dtype=torch.float32, num_labels=1)
    torch.nn.init.zeros_(rl_head(critic).weight)
    return critic


def build_value_model(policy: str, reward_model: str | None = None, lora: dict[str, Any] | None = None) -> Any:
    """PPO's critic: from ``reward_model`` (a reward-model folder) when given, else from ``policy``; dropout off.
    ``lora``: ``{"r", "alpha", "targets"}`` puts an adapter on the backbone (the score head stays trainable)."""
    from alignloop.models.load import disable_dropout

    critic = _critic_from_reward_model(reward_model) if reward_model else _critic_from_policy(policy)
    disable_dropout(critic)
    if lora:
        from peft import LoraConfig, get_peft_model

        names = {n.split(".")[-1] for n, _ in critic.named_modules()}
        critic = get_peft_model(critic, LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=0.0,
                                                   target_modules=[t for t in lora["targets"] if t in names],
                                                   task_type="SEQ_CLS"))
    return critic
