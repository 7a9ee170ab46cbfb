"""The typed records every stage shares, compatible with TRL's dataset formats.

TRL's formats (standard and conversational) map onto these records:

===================  ==========================================  ===========================
kind                 columns                                     record
===================  ==========================================  ===========================
language modelling   ``text`` or ``messages``                    ``TextRecord`` / ``PromptCompletion``
prompt-completion    ``prompt`` + ``completion``                 ``PromptCompletion``
prompt only          ``prompt`` (or ``question``)                ``PromptRecord``
preference           ``prompt`` + ``chosen`` + ``rejected``      ``Preference``
  implicit prompt    ``chosen`` + ``rejected`` (shared prefix)   ``Preference``
unpaired preference  ``prompt`` + ``completion`` + ``label``     ``Unpaired``
ranking              ``prompt`` + ``completions`` + ``ranks``    ``Ranking``
===================  ==========================================  ===========================

A prompt is always held as a list of chat messages (``{"role", "content"}``): a plain-string prompt becomes a
single user message, unless ``raw=True`` (plain text models, no chat template). Extra columns (``id``, ``context``,
``answer``, ``uncertainty`` …) are kept in ``meta`` so nothing a user brought is lost on the way through.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Message = dict[str, str]


@dataclass
class Prompt:
    """A conversation that ends where the model's answer begins."""

    messages: list[Message]
    #: True when the prompt is raw text to be fed as-is (no chat template): TRL's "standard" format
    raw: bool = False

    @property
    def text(self) -> str:
        """The prompt as plain text (raw prompts verbatim; chats with role labels)."""
        if self.raw:
            return self.messages[0]["content"]
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in self.messages)

    @property
    def last_user(self) -> str:
        for m in reversed(self.messages):
            if m["role"] == "user":
                return m["content"]
        return self.messages[-1]["content"] if self.messages else ""

    def to_json(self) -> Any:
        return self.messages[0]["content"] if self.raw else [dict(m) for m in self.messages]


@dataclass
class TextRecord:
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptRecord:
    prompt: Prompt
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PromptCompletion:
    prompt: Prompt
    completion: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Preference:
    prompt: Prompt
    chosen: str
    rejected: str
    #: how much better chosen is (e.g. 1.0 "much better", 0.25 "slightly better"); None = unspecified
    margin: float | None = None
    #: a tie: kept in the data, skipped by default in Bradley-Terry
    tie: bool = False
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Unpaired:
    prompt: Prompt
    completion: str
    label: bool
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class Ranking:
    prompt: Prompt
    completions: list[str]
    #: rank of each completion, 1 = best; equal ranks are ties
    ranks: list[int]
    meta: dict[str, Any] = field(default_factory=dict)

    def pairs(self, keep_ties: bool = False) -> list[tuple[int, int, bool]]:
        """``(better, worse, tie)`` index triples among the K·(K-1)/2 comparisons: tied completions are left out,
        or with ``keep_ties`` kept as ``(i, j, True)`` with ``i < j``."""
        out = []
        k = len(self.completions)
        for i in range(k):
            for j in range(i + 1, k):
                if self.ranks[i] < self.ranks[j]:
                    out.append((i, j, False))
                elif self.ranks[j] < self.ranks[i]:
                    out.append((j, i, False))
                elif keep_ties:
                    out.append((i, j, True))
        return out


Record = TextRecord | PromptRecord | PromptCompletion | Preference | Unpaired | Ranking
