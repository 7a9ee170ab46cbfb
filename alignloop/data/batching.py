"""Tokenised examples, the over-long-row policy, and padding-free batches.

Batches are *flattened*: the sequences of a micro-batch are concatenated into one row with position ids that
restart at 0 for each sequence. transformers detects this from the position ids (with no attention mask) and
builds a block-diagonal causal mask, so no sequence sees another and no compute is spent on padding tokens
(``tests/unit/data/test_batching.py`` checks the logits equal those of separate forward passes).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

from alignloop.core.errors import DataError
from alignloop.core.files import atomic_path

T = TypeVar("T")


@dataclass
class Example:
    """One tokenised prompt + answer; ``labels`` marks the tokens the loss is computed on."""

    prompt_ids: list[int]
    answer_ids: list[int]
    index: int = 0  # position in the source data

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.answer_ids

    def __len__(self) -> int:
        return len(self.prompt_ids) + len(self.answer_ids)


@dataclass
class SkipReport:
    """Rows left out and why: reported at the start of every run, never silent."""

    reasons: Counter = field(default_factory=Counter)
    truncated: int = 0
    where: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str | None) -> None:
        self.reasons[reason] += 1
        if where:
            self.where.setdefault(reason, [])
            if len(self.where[reason]) < 5:
                self.where[reason].append(where)

    def merge(self, other: "SkipReport") -> "SkipReport":
        """Add ``other``'s skips (reasons, examples, truncations) to this report; returns it."""
        self.reasons.update(other.reasons)
        self.truncated += other.truncated
        for reason, where in other.where.items():
            self.where[reason] = (self.where.get(reason, []) + where)[:5]
        return self

    def summary(self, total: int) -> str:
        parts = [f"{total - sum(self.reasons.values())} of {total} rows used"]
        if self.truncated:
            parts.append(f"{self.truncated} prompts cut from the left to fit max_length")
        for reason, n in self.reasons.items():
            examples = ", ".join(self.where.get(reason, []))
            parts.append(f"{n} skipped: {reason}" + (f" (e.g. {examples})" if examples else ""))
        return "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.reasons), "truncated": self.truncated}


def fit_length(prompt_ids: list[int], answer_ids: list[int], max_length: int, policy: str,
               report: SkipReport, where: str | None = None) -> tuple[list[int], list[int]] | None:
    """Apply the over-long-row policy: ``left`` cuts the prompt from the left (never the answer), ``skip`` leaves
    the row out (counted), ``error`` stops. An answer that alone leaves no room for a prompt is skipped under
    every policy but ``error``: cutting the answer would train on a wrong target."""
    total = len(prompt_ids) + len(answer_ids)
    if total <= max_length:
        return prompt_ids, answer_ids
    if policy == "error":
        raise DataError(f"row is {total} tokens, longer than max_length={max_length} "
                        "(use --truncation left or skip, or raise --max-length)", path=where)
    if policy == "skip":
        report.skip("longer than max_length", where)
        return None
    keep = max_length - len(answer_ids)
    if keep < 1:
        report.skip("answer alone is longer than max_length", where)
        return None
    report.truncated += 1
    return prompt_ids[-keep:], answer_ids


@dataclass
class FlatBatch:
    """Sequences concatenated into one row (``[1, T]`` tensors) with restarting position ids."""

    input_ids: Any
    position_ids: Any
    #: start and end (exclusive) of each sequence in the row
    spans: list[tuple[int, int]]
    #: per token: 1 where the loss applies (answer tokens), as a float tensor ``[1, T]``
    loss_mask: Any
    num_tokens: int

    def logit_positions(self) -> Any:
        """Positions whose logits predict a loss token (the token before each answer token)."""
        target = self.loss_mask[0].nonzero().squeeze(-1)
        return target - 1

    def targets(self) -> Any:
        target = self.loss_mask[0].nonzero().squeeze(-1)
        return self.input_ids[0, target]


def flatten(sequences: Sequence[tuple[list[int], list[int]]], device: Any = "cpu") -> FlatBatch:
    """Build a padding-free batch from ``(input_ids, loss_mask)`` pairs."""
    import torch

    ids: list[int] = []
    pos: list[int] = []
    mask: list[int] = []
    spans = []
    for seq, m in sequences:
        spans.append((len(ids), len(ids) + len(seq)))
        ids += seq
        pos += list(range(len(seq)))
        mask += m
    t = lambda x, dt=torch.long: torch.tensor([x], dtype=dt, device=device)  # noqa: E731
    return FlatBatch(t(ids), t(pos), spans, t(mask, torch.float32), len(ids))


def answer_mask(ex: Example, completion_only: bool = True) -> list[int]:
    """1 on tokens the loss applies to. The first token never has a prediction, so it is never in the loss."""
    if completion_only:
        m = [0] * len(ex.prompt_ids) + [1] * len(ex.answer_ids)
    else:
        m = [1] * len(ex)
    m[0] = 0
    return m


def batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True) -> list[list[int]]:
    """Index batches for one epoch; the order depends only on (seed, epoch), so a resumed run sees the same."""
    order = list(range(n))
    if shuffle:
        random.Random(seed * 100_003 + epoch).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, n, batch_size)]


def packed_batches(lengths: Sequence[int], token_budget: int, seed: int, epoch: int) -> list[list[int]]:
    """Index batches that fill ``token_budget`` tokens each (first-fit in shuffled order)."""
    order = batches(len(lengths), len(lengths), seed, epoch)[0] if lengths else []
    return fill_batches(order, lengths, token_budget)


def fill_batches(order: Sequence[int], lengths: Sequence[int], max_tokens: int,
                 max_items: int | None = None) -> list[list[int]]:
    """Indices taken in ``order`` and cut into consecutive batches of about ``max_tokens`` tokens (and at most
    ``max_items`` indices); an index longer than the budget gets a batch of its own."""
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        if cur and (used + lengths[i] > max_tokens or (max_items is not None and len(cur) >= max_items)):
            out.append(cur)
            cur, used = [], 0
        cur.append(i)
        used += lengths[i]
    if cur:
        out.append(cur)
    return out


# --------------------------------------------------------------------------------------------------
# Tokenisation cache: tokenise once, reuse across epochs, resumes and later stages
# --------------------------------------------------------------------------------------------------


def cache_key(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """Size + mtime + hash of the first MiB: cheap and changes whenever the file does in practice."""
    p = Path(path)
    if p.is_dir():
        return {"dir": str(p.resolve()), "files": sorted((f.name, f.stat().st_size) for f in p.iterdir())}
    st = p.stat()
    with open(p, "rb") as fh:
        head = hashlib.sha256(fh.read(1 << 20)).hexdigest()
    return {"size": st.st_size, "mtime": int(st.st_mtime), "head": head}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_cached(key: str, folder: Path) -> Any | None:
    import torch

    f = folder / f"{key}.pt"
    if f.exists():
        try:
            return torch.load(f, weights_only=False)
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            return None
    return None


def save_cached(key: str, folder: Path, value: Any) -> None:
    import torch

    with atomic_path(folder / f"{key}.pt") as tmp:
        torch.save(value, tmp)


def cached_examples(key_parts: Sequence[Any], folder: Path, build: Callable[[], T], is_main: bool | None = None) -> T:
    """``build()``'s value, tokenised (or computed) once and kept in ``folder`` under the key of ``key_parts``.

    Only the main process writes the file; every process that misses the cache builds the value itself (no
    process waits on another, so a long build cannot time out a collective, and a cache folder that is not shared
    between machines still works). ``is_main``: whether this process writes; by default the launcher's ``RANK``
    is 0 (a plain single-process run is the main process)."""
    key = cache_key(*key_parts)
    hit = load_cached(key, folder)
    if hit is not None:
        return hit
    value = build()
    if (os.environ.get("RANK", "0") == "0") if is_main is None else is_main:
        save_cached(key, folder, value)
    return value
