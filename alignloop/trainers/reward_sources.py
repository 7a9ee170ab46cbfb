"""Reward sources for the RL stages, named on the command line as ``--reward SPEC[:weight]`` (repeatable).

=========================  ===============================================================================
SPEC                       reward
=========================  ===============================================================================
``rm:DIR``                 a reward model from ``alignloop reward train`` (any folder that
                           ``AutoModelForSequenceClassification`` loads; score at the last token, or averaged
                           over the answer's tokens when the folder says ``"pooling": "mean"``), normalised with
                           the offset/scale in ``DIR/alignloop_reward.json`` (an ensemble: the mean over heads)
``python:module:function`` ``function(prompt, completion, **row) -> float`` from an importable module
``python:path.py:function`` the same from a file
=========================  ===============================================================================

``prompt`` is the prompt as plain text (``Prompt.text``), ``completion`` the decoded answer, and ``row`` holds
the prompt record's extra columns (e.g. FinanceBench's ``answer``), ``messages`` (the prompt as chat messages)
and ``ended`` (whether the answer emitted a stop token). Several sources are combined as the weighted sum
``Σ wᵢ·rᵢ``; each source's mean is logged as ``objective/reward/<name>``.

New kinds of source register themselves with ``register_source("judge", factory)`` (the AI-judge source of
issue 7 plugs in there): a factory takes the text after ``kind:`` and returns a ``RewardSource``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from alignloop.core.config import ConfigError
from alignloop.data.records import Prompt

#: the normalisation file a reward-model folder may carry (written by ``alignloop reward train``)
RM_NORMALISATION = "alignloop_reward.json"


class RewardSource(Protocol):
    """Scores a batch of answers; returns one float per answer."""

    name: str

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[float]:
        ...


#: kind → factory(argument) ; extended with ``register_source``
SOURCES: dict[str, Callable[[str], RewardSource]] = {}


def register_source(kind: str, factory: Callable[[str], RewardSource]) -> None:
    """Make ``--reward kind:ARG`` available (e.g. ``judge``)."""
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
        raise ConfigError([f"reward: unknown kind '{kind}' in '{spec}' (one of: {', '.join(sorted(_kinds()))})"])
    if kind == "python" and rest.count(":") < 1:
        raise ConfigError([f"reward: '{spec}' must name module:function, e.g. python:alignloop.rewards:financebench_numeric"])
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


def rm_pooling(folder: str | Path) -> str:
    """Where the folder's reward is read: ``"last"`` (the last token, as ``AutoModelForSequenceClassification``
    reads it) or ``"mean"`` (the score head averaged over the answer's tokens: ``alignloop reward train --pooling
    mean``), from ``alignloop_reward.json``; ``"last"`` when the file or the key is absent."""
    p = Path(folder) / RM_NORMALISATION
    pooling = json.loads(p.read_text()).get("pooling", "last") if p.exists() else "last"
    if pooling not in ("last", "mean"):
        raise ValueError(f"{p}: pooling: '{pooling}' is not one of last, mean")
    return str(pooling)


def rm_normalisation(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-head (offset, scale) from ``alignloop_reward.json``: reward = mean over heads of (raw − offset) / scale
    (the reward-model stage's contract); (0, 1) if the file is absent. ``mean``/``std`` keys are accepted too."""
    p = Path(folder) / RM_NORMALISATION
    if not p.exists():
        return torch.zeros(1), torch.ones(1)
    data = json.loads(p.read_text())
    offset, scale = data.get("offset", data.get("mean", 0.0)), data.get("scale", data.get("std", 1.0))
    offset = torch.tensor(offset if isinstance(offset, list) else [offset], dtype=torch.float32)
    scale = torch.tensor(scale if isinstance(scale, list) else [scale], dtype=torch.float32)
    return offset, torch.where(scale == 0, torch.ones_like(scale), scale)


class RewardModelSource:
    """A sequence-classification reward model; prompt and answer are tokenised as in training (chat template +
    answer + end-of-turn token), so the score is read where the reward model learned to put it."""

    def __init__(self, folder: str, device: Any = None, batch_size: int = 8, dtype: Any = None):
        from transformers import AutoModelForSequenceClassification

        from alignloop.core.errors import ModelError
        from alignloop.models.load import load_tokenizer, quiet_transformers, resolve_model

        quiet_transformers()
        where = resolve_model(folder)
        try:
            # the folder's own num_labels: an ensemble reward model has one score per head
            self.model = AutoModelForSequenceClassification.from_pretrained(str(where), local_files_only=True,
                                                                            dtype=dtype or torch.float32)
        except (OSError, ValueError) as exc:
            raise ModelError(f"rm:{folder}: not a reward model folder ({exc})") from None
        self.tokenizer = load_tokenizer(str(where))
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.eval().requires_grad_(False)
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.offset, self.scale = rm_normalisation(where)
        self.pooling = rm_pooling(where)
        self.folder = str(where)
        self.name = f"rm:{Path(folder).name}"
        self.batch_size = batch_size

    def encode_parts(self, prompt: Prompt, completion: str, ended: bool = True) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids); the answer ends in EOS only when it ``ended``."""
        from alignloop.data.templates import encode_answer, encode_prompt

        return encode_prompt(self.tokenizer, prompt), encode_answer(self.tokenizer, completion, add_eos=ended)

    def encode(self, prompt: Prompt, completion: str, ended: bool = True) -> list[int]:
        prompt_ids, answer_ids = self.encode_parts(prompt, completion, ended)
        return prompt_ids + answer_ids

    @torch.no_grad()
    def raw_scores(self, seqs: Sequence[Sequence[int]], answer_lengths: Sequence[int] | None = None) -> torch.Tensor:
        """Unnormalised scores ``[n, heads]`` of token sequences, right-padded: the score head at the last token
        (as transformers reads it), or, for a ``pooling: mean`` folder, the head averaged over each sequence's
        last ``answer_lengths[i]`` tokens (the answer, as the reward model was trained)."""
        from alignloop.generation.rollout import critic_parts, pad_responses

        if self.pooling == "mean" and answer_lengths is None:
            raise ValueError(f"{self.name}: a mean-pooled reward model needs the answers' lengths")
        device = next(self.model.parameters()).device
        out = []
        for s in range(0, len(seqs), self.batch_size):
            chunk = seqs[s:s + self.batch_size]
            ids, mask = pad_responses(chunk, self.tokenizer.pad_token_id, device)
            if self.pooling == "last":
                out.append(self.model(input_ids=ids, attention_mask=mask.long()).logits.float().cpu())
                continue
            backbone, head = critic_parts(self.model)
            per_token = head(backbone(input_ids=ids, attention_mask=mask.long()).last_hidden_state).float()
            ends = mask.sum(1)
            starts = ends - torch.tensor(answer_lengths[s:s + self.batch_size], device=device)  # type: ignore[index]
            cols = torch.arange(ids.shape[1], device=device)
            answer = ((cols >= starts[:, None]) & (cols < ends[:, None])).float()
            out.append(((per_token * answer[..., None]).sum(1) / answer.sum(1, keepdim=True)).cpu())
        return torch.cat(out)

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[float]:
        parts = [self.encode_parts(p, c, bool(r.get("ended", True))) for p, c, r in zip(prompts, completions, rows)]
        raw = self.raw_scores([p + a for p, a in parts], [len(a) for _, a in parts])
        return ((raw - self.offset) / self.scale).mean(-1).tolist()


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

    def score(self, prompts: Sequence[Prompt], completions: Sequence[str], rows: Sequence[dict[str, Any]]) -> list[float]:
        out = []
        for p, c, r in zip(prompts, completions, rows):
            v = self.fn(p.text, c, **r)
            try:
                out.append(float(v))
            except (TypeError, ValueError):
                from alignloop.core.errors import TrainingError

                raise TrainingError(f"reward function {self.name} returned {v!r}, not a number") from None
        return out


register_source("rm", lambda arg: RewardModelSource(arg))
register_source("python", lambda arg: PythonSource(arg))
# register_source("judge", ...)  ← the AI-judge source (issue 7) registers here


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
