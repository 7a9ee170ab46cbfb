"""Batched sampling with a KV cache, shared by ``alignloop generate``, serving, evaluation, the judges and the
library API (``alignloop.load_model(...).generate / .predict``).

transformers' ``generate`` does the decoding (KV cache, temperature / top-p / top-k, position ids computed from
the attention mask so left padding does not shift positions); this module batches prompts by length
(left-padded, so every row's next token sits at the same position), stops each row at its first stop token, and
returns token ids with the answer cut right after the stop token. The RL rollouts (``generation.rollout``) sample
through ``sample_ids`` too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from alignloop.data.records import Prompt
from alignloop.models.load import DEFAULT_MODEL, load_causal_lm

#: temperatures below this decode greedily: they would pick the most likely token anyway, and dividing the logits
#: by a temperature this close to 0 overflows them to inf (NaN probabilities, and ``generate`` fails)
GREEDY_BELOW = 1e-4


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature < GREEDY_BELOW:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k if self.top_k > 0 else None}


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for a batch of prompts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def pad_responses(responses: Sequence[Sequence[int]], pad_id: int,
                  device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded answer ids ``[B, T]`` and their mask (1 on answer tokens, the stop token included)."""
    width = max(1, max((len(r) for r in responses), default=1))
    ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(responses), width), dtype=torch.float32)
    for i, r in enumerate(responses):
        if len(r):
            ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, :len(r)] = 1.0
    return ids.to(device), mask.to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token (left padding must not shift them)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


def truncate_after_stop(tokens: Sequence[int], stop_ids: Sequence[int],
                        pad_id: int | None = None) -> tuple[list[int], bool]:
    """Cut an answer right after its first stop token (kept: the model must learn to emit it); drop padding.

    Returns ``(tokens, ended)`` where ``ended`` says whether a stop token was emitted.
    """
    out: list[int] = []
    for t in tokens:
        t = int(t)
        out.append(t)
        if t in stop_ids:
            return out, True
    if pad_id is not None:
        while out and out[-1] == pad_id:
            out.pop()
    return out, False



@torch.no_grad()
def sample_ids(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], params: SamplingParams,
               batch_size: int = 16, progress: Any = None, keep_pad: bool = False,
               **generate_kwargs: Any) -> list[tuple[list[int], bool]]:
    """Sample one answer per prompt (repeat a prompt K times for K answers); returns (answer ids, ended) per
    prompt, in the input order. Prompts are batched by length so little compute goes to padding.
    An answer that never stops loses its trailing pad tokens unless ``keep_pad`` (the RL rollouts keep them: a
    pad token the policy sampled is part of its answer).
    ``generate_kwargs`` go to ``generate`` as they are (the server passes a streamer and stopping criteria)."""
    from alignloop.data.templates import stop_token_ids

    stop = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[tuple[list[int], bool] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    gen_kwargs = params.generate_kwargs()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], tokenizer.pad_token_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                             eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **gen_kwargs,
                             **generate_kwargs)
        new = out[:, ids.shape[1]:].tolist()
        for i, row in zip(idx, new):
            results[i] = truncate_after_stop(row, stop, None if keep_pad else tokenizer.pad_token_id)
        if progress is not None:
            progress.update(len(idx))
    if was_training:
        model.train()
    return results  # type: ignore[return-value]


def sample_texts(model: Any, tokenizer: Any, prompts: Sequence[Prompt], num_completions: int,
                 params: SamplingParams, chat_template: bool = True, batch_size: int = 16,
                 max_prompt_length: int = 1024, progress: Any = None) -> list[list[str]]:
    """``num_completions`` decoded answers per prompt (prompts cut from the left to ``max_prompt_length``)."""
    from alignloop.data.templates import encode_prompt

    if params.seed is not None:
        torch.manual_seed(params.seed)
    encoded = [encode_prompt(tokenizer, p, chat_template)[-max_prompt_length:] for p in prompts]
    flat = [e for e in encoded for _ in range(num_completions)]
    answers = sample_ids(model, tokenizer, flat, params, batch_size, progress)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a, _ in answers]
    return [texts[i * num_completions:(i + 1) * num_completions] for i in range(len(prompts))]


def as_prompts(prompts: Sequence[Any]) -> list[Prompt]:
    """Prompt records from strings (one user turn), message lists or ``Prompt`` records."""
    return [p if isinstance(p, Prompt) else Prompt(p) if isinstance(p, list) else
            Prompt([{"role": "user", "content": str(p)}]) for p in prompts]


# --------------------------------------------------------------------------------------------------
# The library API: alignloop.load_model(...)
# --------------------------------------------------------------------------------------------------


@dataclass
class AlignModel:
    """A loaded policy with the library API: ``predict`` and ``generate``."""

    model: Any
    tokenizer: Any
    name: str
    #: an ``Abstention`` (``alignloop.load_model`` reads the folder's record): ``predict`` declines where unsure
    abstention: Any = None

    def generate(self, prompts: list[Any], num_completions: int = 1, **sampling: Any) -> list[list[str]]:
        """Completions for each prompt (strings, message lists or ``Prompt`` records)."""
        params = SamplingParams(**sampling)
        return sample_texts(self.model, self.tokenizer, as_prompts(prompts), num_completions, params)

    def predict(self, question: str, context: str | None = None, max_new_tokens: int = 256, **sampling: Any) -> str:
        """The model's answer to a question, optionally grounded in a context (greedy by default); with an
        abstention (``alignloop.load_model`` reads the folder's record) it declines where the model is unsure, as
        ``alignloop eval`` does."""
        from alignloop.data.readers import qa_prompt

        sampling.setdefault("temperature", 0.0)
        prompt = qa_prompt(question, context)
        answers = self.generate([prompt], max_new_tokens=max_new_tokens, **sampling)
        if self.abstention is not None:
            with torch.no_grad():
                answers = self.abstention.apply(self.model, self.tokenizer, [prompt], answers)[0]
        return answers[0][0]


def load_model(name_or_path: str = DEFAULT_MODEL, **kwargs: Any) -> AlignModel:
    """A policy by alias, folder, GGUF file or cached hub id, ready for ``predict`` and ``generate``."""
    model, tok = load_causal_lm(name_or_path, **kwargs)
    model.eval()
    return AlignModel(model, tok, str(name_or_path))
