"""A local Hugging Face causal LM prompted as a pairwise judge.

The judge prompt (principles + prompt + responses A and B) goes through the model's chat template with the
assistant turn opened; the next-token logits of "A" and "B" give the preference (softmax over the two), so no
free text is parsed and the probability is usable. Both orders are asked (see :mod:`alignloop.judges.base`).
"""

from __future__ import annotations

from typing import Sequence

import torch

from alignloop.data.records import Prompt
from alignloop.judges.base import PairwiseLetterJudge


def letter_ids(tokenizer) -> tuple[int, int]:
    """Token ids of the answers "A" and "B" (the first token of each, as the model would start its answer)."""
    a = tokenizer("A", add_special_tokens=False)["input_ids"]
    b = tokenizer("B", add_special_tokens=False)["input_ids"]
    if not a or not b or a[0] == b[0]:
        raise ValueError("the tokenizer cannot tell 'A' from 'B' in one token")
    return a[0], b[0]


class LocalJudge(PairwiseLetterJudge):
    name = "local"

    def __init__(self, model: str | tuple, principles: str | None = None, max_length: int = 2048,
                 batch_size: int = 4, chat_template: bool = True):
        super().__init__(principles)
        from alignloop.models.load import load_causal_lm

        if isinstance(model, tuple):
            self.model, self.tokenizer = model
            self.identity = getattr(self.model, "name_or_path", "") or "local-model"
        else:
            self.model, self.tokenizer = load_causal_lm(model)
            self.identity = str(model)
        self.model.eval()
        self.max_length, self.batch_size, self.chat_template = max_length, batch_size, chat_template
        self.ids = letter_ids(self.tokenizer)

    def encode(self, request: str) -> list[int]:
        from alignloop.data.templates import encode_prompt

        ids = encode_prompt(self.tokenizer, Prompt([{"role": "user", "content": request}]), self.chat_template)
        return ids[-self.max_length:]

    @torch.no_grad()
    def letter_probs_many(self, requests: Sequence[str]) -> list[tuple[float, float]]:
        # one sequence per forward: no padding, so a request's probabilities never depend on its batch-mates
        # (exact order-symmetry of the debiased verdict needs bit-identical forwards)
        out = []
        device = next(self.model.parameters()).device
        for req in requests:
            ids = torch.tensor([self.encode(req)], device=device)
            logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].float()
            two = torch.softmax(logits[list(self.ids)], dim=-1)
            out.append((float(two[0]), float(two[1])))
        return out

    def letter_probs(self, request: str) -> tuple[float, float]:
        return self.letter_probs_many([request])[0]
