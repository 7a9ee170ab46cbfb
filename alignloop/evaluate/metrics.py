"""Small, pure statistics shared by the stages' evaluations (no torch): the one bootstrap interval, the one
expected calibration error, the length baseline, refusal rates and the win rate."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from alignloop.evaluate.qa import is_refusal


def bootstrap_ci(values: Sequence[float], seed: int = 0, n_resamples: int = 2000, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-item 0/1 correctness).

    ``n_resamples`` resamples of ``values`` with replacement, drawn at once from ``numpy.random.default_rng(seed)``
    (so the interval is reproducible); the interval is the ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles
    (linear interpolation) of the resampled means. Returns ``(low, high)``, or ``(nan, nan)`` for no values.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def expected_calibration_error(prob: Sequence[float], correct: Sequence[float], bins: int = 10) -> float:
    """ECE of the predicted winner: bins of confidence max(p, 1-p); Σ_b |B|/n · |accuracy(B) - confidence(B)|."""
    p = np.asarray(prob, dtype=float)
    if len(p) == 0:
        return float("nan")
    conf = np.maximum(p, 1 - p)
    hit = np.asarray(correct, dtype=float)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            ece += sel.mean() * abs(hit[sel].mean() - conf[sel].mean())
    return float(ece)


def length_baseline(chosen_lengths: Sequence[float], rejected_lengths: Sequence[float]) -> float:
    """The better of the rules "the longer answer wins" and "the shorter answer wins" (equal lengths count half)
    on the same pairs: the bar a preference model must clear to show it learnt more than length. On the HH
    harmless data the shorter answer wins about 55% of the time."""
    if not chosen_lengths:
        return float("nan")
    longer = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_lengths, rejected_lengths))
    longer /= len(chosen_lengths)
    return max(longer, 1.0 - longer)


def refusal_rates(harmful_answers: Sequence[str], harmless_answers: Sequence[str]) -> dict[str, float]:
    """Refusals among answers to harmful prompts (wanted) and to harmless ones (over-refusal)."""
    def rate(xs: Sequence[str]) -> float:
        return sum(map(is_refusal, xs)) / len(xs) if xs else math.nan

    return {"refusal_rate_harmful": rate(harmful_answers), "over_refusal_rate_harmless": rate(harmless_answers)}


def win_rate(verdicts: Sequence[Any]) -> dict[str, float]:
    """Win rate of model A (completions[0]) over B; ties and inconsistent verdicts count half."""
    n = len(verdicts)
    wins = sum(1 for v in verdicts if v.winner == 0)
    losses = sum(1 for v in verdicts if v.winner == 1)
    ties = n - wins - losses
    return {"n": n, "wins": wins, "losses": losses, "ties": ties,
            "win_rate": (wins + 0.5 * ties) / n if n else math.nan}
