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
    #: the file gave this prompt as one plain string (held as one user message); ``as_given`` returns the string.
    #: Not part of equality: the same conversation read from two shapes is the same prompt.
    text_given: bool = field(default=False, compare=False, repr=False)

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

    def as_given(self) -> Any:
        """The prompt in the shape its file gave it: a string (plain or raw text) or a list of messages."""
        if self.raw or self.text_given:
            return self.messages[0]["content"]
        return [dict(m) for m in self.messages]


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


# --------------------------------------------------------------------------------------------------
# Labeled tasks: what labeling tools export (alignloop.data.labeled reads them; the studio imports them)
# --------------------------------------------------------------------------------------------------

#: an answer as a labeling tool holds it: text, or a list of assistant messages
Answer = Any


@dataclass
class Judgment:
    """One labeler's answer to a task, as a labeling tool recorded it. Completions are named by their index in the
    task's ``completions``; ``choice`` "A" is the first of the judged completions."""

    #: who judged; None: the file's own labeler (a preference file's, named by the importer)
    labeler: str | None = None
    #: human | ai (a judge) | user (a served model's user)
    labeler_kind: str = "human"
    #: pairwise: "A" | "B" | "tie" | "both_bad"; binary: "good" | "bad"
    choice: str | None = None
    #: pairwise: "much_better" | "better" | "slightly_better"
    strength: str | None = None
    #: completion indices, best first (ties are not a ranking)
    ranking: list[int] | None = None
    #: {completion index: {criterion: score}}
    ratings: dict[int, dict[str, int]] | None = None
    #: {completion index: {flag: true/false}}
    flags: dict[int, dict[str, bool]] | None = None
    #: a written better answer
    rewrite: str | None = None
    #: a skip and its reason (no answer)
    skip_reason: str | None = None
    #: the completions this judgment's task held, when it held fewer than the record (one pair of K > 2, or one
    #: completion of a binary task); None: all of them, in order
    completions: list[int] | None = None
    duration_ms: int | None = None
    #: when it was made (ISO 8601), when the tool says
    created_at: str | None = None
    #: completion indices left to right as the labeler saw them, when the tool says
    display_order: list[int] | None = None
    #: where it came from, for errors: "file:line"
    where: str = ""


@dataclass
class LabeledTask:
    """A prompt with its completions and the judgments labelers made on them: a task of a labeling tool (a Label
    Studio task, an Argilla record, a preference row and its one judgment, or a prompt with candidates and none)."""

    prompt: Prompt
    completions: list[Answer]
    judgments: list[Judgment] = field(default_factory=list)
    #: the task type the file implies ("pairwise", "ranking", "binary", "rating", "rewrite"), None: any
    kind: str | None = None
    #: a known answer: {"choice": "A"} or {"ranking": [completion indices, best first]} (+ "note")
    gold: dict[str, Any] | None = None
    #: id, context, uncertainty, model / models, sampling and any other column; "_where" = "file:line"
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class LabeledFile:
    """A file of labeled tasks, the shape it was read as, and what it held that is not a task or a judgment,
    counted by reason (cancelled annotations, model predictions, ...)."""

    shape: str
    tasks: list[LabeledTask]
    skipped: dict[str, int] = field(default_factory=dict)
    rows: int = 0
