"""Reward-model judge: the completion with the higher reward wins; P(A better) = sigmoid(r_A - r_B), the
Bradley-Terry probability the reward model was trained to predict. A difference within ``margin`` is a tie."""

from __future__ import annotations

import math
from typing import Any, Sequence

from alignloop.judges.base import Verdict


class RewardModelJudge:
    name = "reward-model"

    def __init__(self, scorer: Any, margin: float = 0.0, identity: str = ""):
        """``scorer``: anything with ``score(prompts, completions) -> list[float]`` (``load_reward_model(dir)``)."""
        self.scorer = scorer
        self.margin = margin
        self.identity = identity or getattr(scorer, "path", "") or type(scorer).__name__

    @classmethod
    def from_dir(cls, folder: str, margin: float = 0.0) -> "RewardModelJudge":
        from alignloop.models.reward_model import load_reward_model

        return cls(load_reward_model(folder), margin, identity=str(folder))

    def judge_many(self, items: Sequence[tuple[Any, Sequence[str], str | None]]) -> list[Verdict]:
        prompts, comps = [], []
        for prompt, cs, _ in items:
            if len(cs) != 2:
                raise ValueError(f"a pairwise judge compares 2 completions, got {len(cs)}")
            prompts += [prompt, prompt]
            comps += list(cs)
        scores = [float(s) for s in self.scorer.score(prompts, comps)]
        out = []
        for i in range(len(items)):
            a, b = scores[2 * i], scores[2 * i + 1]
            d = a - b
            prob = 1 / (1 + math.exp(-max(min(d, 50), -50)))
            detail = {"rewards": [a, b]}
            if abs(d) <= self.margin:
                out.append(Verdict(None, "tie", prob, detail))
            else:
                out.append(Verdict(0 if d > 0 else 1, "A" if d > 0 else "B", prob, detail))
        return out

    def judge(self, prompt: Any, completions: Sequence[str], reference: str | None = None) -> Verdict:
        return self.judge_many([(prompt, completions, reference)])[0]
