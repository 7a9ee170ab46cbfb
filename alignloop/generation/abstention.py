"""Declining when the policy is unsure of its own answer: selective answering by the answer's confidence.

A 135M policy tuned on a few dozen questions moves as one dial between answering and declining (benchmarks/README.md,
"Choosing the SFT targets by cross-validation"): taught to decline, it declines questions whose context holds the
figure as often as those whose context does not; and a reward model on frozen features of the same model did not
tell a right answer from a wrong one on unseen questions (AUC 0.44, benchmarks/README.md, "Declining when unsure").
What did: the policy's own confidence in the answer it gave. An answer quoted from the context is a copy the model
is sure of, token by token; a figure it invents is not. Out of fold on the 70 training questions, the mean
log-probability per token of the SFT model's greedy answer separates its right answers from its wrong ones with an
AUC of 0.84, and every right answer scored above -0.6.

So the policy answers, its confidence in that answer is measured (one forward pass: the mean log-probability of the
answer's tokens, end-of-turn included, given the prompt), and where it falls below ``min_confidence`` the answer is
replaced by the declining text. This is selective prediction (Geifman & El-Yaniv 2017; Kadavath et al. 2022,
"Language models (mostly) know what they know"); the threshold is a setting, chosen by cross-validation on the
training questions (benchmarks/README.md).

The decision travels with the model: ``abstention.json`` in the policy's folder holds ``min_confidence`` and the
declining text, and everything that answers through :func:`alignloop.evaluate.qa_run.answer` (``alignloop eval``,
the loop, the demo), ``model.predict`` and the model server's ``/v1/predict`` answers as the stage did. A folder
without the file answers as it always has. The server's chat and text completions stream tokens as they come and do
not apply it (docs/loop-and-evaluation.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from alignloop.core.errors import DataError

#: the file in a policy's folder that turns abstention on
ABSTENTION_FILE = "abstention.json"


@dataclass(frozen=True)
class Abstention:
    """Decline (answer ``decline``) where the policy's mean log-probability per answer token is below
    ``min_confidence``."""

    min_confidence: float
    decline: str

    def declines(self, confidence: float) -> bool:
        """Whether an answer of this confidence is replaced by the declining text."""
        return confidence < self.min_confidence

    def to_json(self) -> dict[str, Any]:
        return {"min_confidence": self.min_confidence, "decline": self.decline}

    def apply(self, model: Any, tokenizer: Any, prompts: Sequence[Any], answers: Sequence[Sequence[str]],
              max_prompt_length: int = 512) -> tuple[list[list[str]], list[list[float]]]:
        """:func:`apply` with this rule."""
        return apply(self, model, tokenizer, prompts, answers, max_prompt_length)


def write_abstention(folder: str | os.PathLike, abstention: Abstention) -> Path:
    """Record ``abstention`` in the policy's model folder."""
    path = Path(folder) / ABSTENTION_FILE
    path.write_text(json.dumps(abstention.to_json(), indent=2) + "\n")
    return path


def read_abstention(policy: Any) -> Abstention | None:
    """The abstention recorded with ``policy`` (a model folder, or an ``--output`` folder holding ``final``), or
    None: no record, an alias, or an already loaded model."""
    if not isinstance(policy, (str, os.PathLike)):
        return None
    p = Path(policy).expanduser()
    path = next((q / ABSTENTION_FILE for q in (p, p / "final") if (q / ABSTENTION_FILE).is_file()), None)
    if path is None:
        return None
    try:
        raw = json.loads(path.read_text())
        out = Abstention(float(raw["min_confidence"]), str(raw["decline"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"not a valid abstention record ({exc.__class__.__name__}: {exc}); it needs "
                        f"min_confidence (a number) and decline (the declining text)", path=str(path)) from None
    if not out.decline.strip():
        raise DataError("the declining text is empty", path=str(path), field="decline")
    return out


def confidence(model: Any, tokenizer: Any, prompts: Sequence[Any], answers: Sequence[str],
               max_prompt_length: int = 512, batch_size: int = 8) -> list[float]:
    """Per answer, the mean log-probability of its tokens (end-of-turn included) given its prompt (a ``Prompt``
    record) under ``model`` at temperature 1: the answer's sum of log-probabilities
    (:func:`alignloop.generation.rollout.answer_logprobs`, the RL stages' forward pass) over its token count."""
    from alignloop.generation.rollout import answer_logprobs

    return answer_logprobs(model, tokenizer, prompts, answers, max_prompt_length, batch_size, mean=True)


def apply(abstention: Abstention, model: Any, tokenizer: Any, prompts: Sequence[Any],
          answers: Sequence[Sequence[str]], max_prompt_length: int = 512) -> tuple[list[list[str]], list[list[float]]]:
    """``answers`` (per prompt, one or more) with each answer whose confidence is below the threshold replaced by
    the declining text; and every answer's confidence."""
    flat_p = [p for p, group in zip(prompts, answers) for _ in group]
    flat_a = [a for group in answers for a in group]
    conf = confidence(model, tokenizer, flat_p, flat_a, max_prompt_length) if flat_a else []
    out: list[list[str]] = []
    confs: list[list[float]] = []
    k = 0
    for group in answers:
        c = conf[k:k + len(group)]
        out.append([abstention.decline if abstention.declines(x) else a for a, x in zip(group, c)])
        confs.append(c)
        k += len(group)
    return out, confs
