"""Reward sources for the RL stages, named on the command line as ``--reward SPEC[:weight]`` (repeatable).

=========================  ===============================================================================
SPEC                       reward
=========================  ===============================================================================
``rm:DIR``                 a reward model from ``alignloop reward train`` (or any Hugging Face
                           ``*ForSequenceClassification`` folder), read by ``load_reward_model`` exactly as
                           ``alignloop reward score`` reads it: its own chat template setting, ``max_length``,
                           pooling (last token, or the answer's mean) and normalisation ``(raw - offset) /
                           scale`` (an ensemble: the mean over heads); causal-LM and encoder backbones alike,
                           and encoder classifiers (BERT, DeBERTa, ...) through their own logits
``python:module:function`` ``function(prompt, completion, **row) -> float`` from an importable module
``python:path.py:function`` the same from a file
=========================  ===============================================================================

``prompt`` is the prompt as plain text (``Prompt.text``), ``completion`` the decoded answer, and ``row`` holds
the prompt record's extra columns (e.g. FinanceBench's ``answer``), ``messages`` (the prompt as chat messages)
and ``ended`` (whether the answer emitted a stop token). Several sources are combined as the weighted sum
``Σ wᵢ·rᵢ``; each source's mean is logged as ``objective/reward/<name>``.

New kinds of source register themselves with ``register_source(kind, factory)``: a factory takes the text after
``kind:`` and returns a ``RewardSource``.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from alignloop.core.config import ConfigError
from alignloop.core.errors import TrainingError
from alignloop.data.records import Prompt
from alignloop.models.reward_model import Group, load_reward_model


class RewardSource(Protocol):
    """Scores a batch of answers; returns one float per answer."""

    name: str

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str],
              rows: Sequence[dict[str, Any]]) -> list[float]:
        ...


#: kind → factory(argument) ; extended with ``register_source``
SOURCES: dict[str, Callable[[str], RewardSource]] = {}


def register_source(kind: str, factory: Callable[[str], RewardSource]) -> None:
    """Make ``--reward kind:ARG`` available."""
    SOURCES[kind] = factory


@dataclass
class RewardSpec:
    kind: str
    arg: str
    weight: float = 1.0

    @property
    def name(self) -> str:
        stem = Path(self.arg).name if self.kind == "rm" else self.arg.rsplit(":", 1)[-1]
        return f"{self.kind}:{stem}"


_WEIGHT = re.compile(r"^(.*):([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)$")


def parse_spec(spec: str) -> RewardSpec:
    """``KIND:ARG[:weight]`` → RewardSpec; the weight is a trailing ``:number``."""
    kind, sep, rest = spec.partition(":")
    if not sep or not rest:
        raise ConfigError([f"reward: '{spec}' is not KIND:ARG[:weight] (kinds: {', '.join(sorted(_kinds()))})"])
    weight = 1.0
    m = _WEIGHT.match(rest)
    if m and m.group(1):
        rest, weight = m.group(1), float(m.group(2))
    if kind not in _kinds():
        kinds = ", ".join(sorted(_kinds()))
        raise ConfigError([f"reward: unknown kind '{kind}' in '{spec}' (one of: {kinds})"])
    if kind == "python" and rest.count(":") < 1:
        raise ConfigError([f"reward: '{spec}' must name module:function, "
                           "e.g. python:alignloop.rewards:financebench_numeric"])
    return RewardSpec(kind, rest, weight)


def _kinds() -> set[str]:
    return set(SOURCES)


def reward_specs(reward: Sequence[str], reward_model: str | None = None) -> list[RewardSpec]:
    """The run's reward sources: ``--reward-model DIR`` is short for ``--reward rm:DIR``."""
    specs = [parse_spec(s) for s in reward]
    if reward_model:
        specs.insert(0, RewardSpec("rm", reward_model, 1.0))
    return specs


# --------------------------------------------------------------------------------------------------
# rm: a reward model folder
# --------------------------------------------------------------------------------------------------


class RewardModelSource:
    """``rm:DIR``: a reward model read by ``load_reward_model``, the same reader as ``alignloop reward score``, so
    the reward of an answer is the number ``reward score`` gives for it (an answer that never emitted its stop
    token is read without it)."""

    def __init__(self, folder: str, device: Any = None, batch_size: int = 8, dtype: Any = None):
        rm = load_reward_model(folder, dtype or torch.float32)
        rm.requires_grad_(False)
        #: the reward model (``models.reward_model.RewardModel``); ``--reward-device`` moves it
        self.model = rm.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.folder = str(rm.folder)
        self.name = f"rm:{Path(folder).name}"
        self.batch_size = batch_size

    @property
    def tokenizer(self) -> Any:
        return self.model.tokenizer

    @property
    def pooling(self) -> str:
        return self.model.info.pooling

    def encode_parts(self, prompt: Prompt, completion: str, ended: bool = True) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) as the reward model reads them (cut to its ``max_length``)."""
        g = self.model.encode(prompt, [completion], policy="score", ended=[ended])
        return g.prompt_ids, g.answers[0]

    def encode(self, prompt: Prompt, completion: str, ended: bool = True) -> list[int]:
        prompt_ids, answer_ids = self.encode_parts(prompt, completion, ended)
        return prompt_ids + answer_ids

    def raw_scores(self, seqs: Sequence[Sequence[int]], answer_lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Unnormalised scores ``[n, heads]`` of token sequences whose last ``answer_lengths[i]`` tokens are the
        answer (a last-token reward model needs no lengths: the last token is read)."""
        if self.pooling == "mean" and answer_lengths is None:
            raise ValueError(f"{self.name}: a mean-pooled reward model needs the answers' lengths")
        lengths = answer_lengths if answer_lengths is not None else [1] * len(seqs)
        groups = [Group(list(s[:len(s) - n]), [list(s[len(s) - n:])], i)
                  for i, (s, n) in enumerate(zip(seqs, lengths))]
        return torch.cat(self.model.score_groups(groups, self.batch_size), 0)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str],
              rows: Sequence[dict[str, Any]]) -> list[float]:
        ended = [bool(r.get("ended", True)) for r in rows]
        return self.model.score(prompts, completions, self.batch_size, ended=ended)


# --------------------------------------------------------------------------------------------------
# python: a function
# --------------------------------------------------------------------------------------------------


def load_function(ref: str) -> Callable[..., float]:
    """``module:function`` or ``path/to/file.py:function`` → the function."""
    module, _, name = ref.rpartition(":")
    try:
        if module.endswith(".py") or "/" in module:
            path = Path(module)
            if not path.exists():
                raise ConfigError([f"reward: python file not found: {path}"])
            spec = importlib.util.spec_from_file_location(path.stem, path)
            mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(mod)  # type: ignore[union-attr]
        else:
            mod = importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError([f"reward: cannot import '{module}' ({exc})"]) from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise ConfigError([f"reward: '{module}' has no function '{name}'"])
    return fn


class PythonSource:
    def __init__(self, ref: str):
        self.fn = load_function(ref)
        self.name = f"python:{ref.rsplit(':', 1)[-1]}"

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str],
              rows: Sequence[dict[str, Any]]) -> list[float]:
        out = []
        for p, c, r in zip(prompts, completions, rows):
            v = self.fn(p.text, c, **r)
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                raise TrainingError(f"reward function {self.name} returned {v!r}, not a number") from None
        return out


register_source("rm", lambda arg: RewardModelSource(arg))
register_source("python", lambda arg: PythonSource(arg))


# --------------------------------------------------------------------------------------------------
# The weighted sum the trainers use
# --------------------------------------------------------------------------------------------------


@dataclass
class Rewards:
    """Several weighted sources; ``__call__`` returns the total per answer and each source's values."""

    sources: list[Any]
    weights: list[float]
    names: list[str] = field(default_factory=list)

    @classmethod
    def from_specs(cls, specs: Sequence[RewardSpec]) -> "Rewards":
        if not specs:
            raise ConfigError(["reward: give at least one --reward SPEC or --reward-model DIR"])
        sources = [SOURCES[s.kind](s.arg) for s in specs]
        names = []
        for s, src in zip(specs, sources):
            n = getattr(src, "name", s.name)
            names.append(n if n not in names else f"{n}#{len(names)}")
        return cls(sources, [s.weight for s in specs], names)

    def reward_models(self) -> list[RewardModelSource]:
        return [s for s in self.sources if isinstance(s, RewardModelSource)]

    def __call__(self, prompts: Sequence[Prompt], completions: Sequence[str],
                 rows: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, dict[str, float]]:
        total = torch.zeros(len(completions))
        parts = {}
        for name, src, w in zip(self.names, self.sources, self.weights):
            v = torch.tensor(src.score(prompts, completions, rows), dtype=torch.float32)
            total += w * v
            parts[f"objective/reward/{name}"] = float(v.mean())
        return total, parts


# --------------------------------------------------------------------------------------------------
# Built-in reward functions (usable as --reward python:alignloop.rewards:NAME)
# --------------------------------------------------------------------------------------------------


def financebench_numeric(prompt: str, completion: str, answer: str = "", **row: Any) -> float:
    """1.0 when the answer contains the gold answer's number (``alignloop.evaluate.qa.numeric_match``), else 0."""
    from alignloop.evaluate.qa import numeric_match

    return 1.0 if numeric_match(completion, str(answer or "")) else 0.0


def financebench_graded(prompt: str, completion: str, answer: str = "", question: str | None = None,
                        **row: Any) -> float:
    """The answer's llmware points (``alignloop.evaluate.qa.llmware_points``): 1 correct, 0.5 partial or declining,
    0 incorrect (a wrong figure copied from the context), -1 hallucination (a figure found in neither the context
    nor the gold). The prompt is the context, as the reference judge and the QA scorer read it, so declining beats
    inventing and a guessed bare figure is not paid; ``question`` (a row column, else the prompt's text after its
    last "Question: ") keeps restated question words from counting as content."""
    from alignloop.evaluate.qa import llmware_points

    if question is None and "Question: " in prompt:
        question = prompt.rsplit("Question: ", 1)[-1].strip()
    return llmware_points(completion, str(answer or ""), question, context=prompt)
