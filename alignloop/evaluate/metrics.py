"""Small, pure statistics shared by the stages' evaluations (no torch): bootstrap intervals and baselines."""

from __future__ import annotations

import random
from typing import Sequence


def bootstrap_ci(values: Sequence[float], seed: int = 0, n_resamples: int = 2000, level: float = 0.95
                 ) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (e.g. per-pair 0/1 correctness).

    Resamples ``values`` with replacement ``n_resamples`` times with a seeded generator, so the interval is
    reproducible; returns ``(low, high)``, or ``(nan, nan)`` for no values.
    """
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    vals = list(map(float, values))
    means = sorted(sum(vals[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))
    alpha = (1 - level) / 2
    lo = means[int(alpha * n_resamples)]
    hi = means[min(n_resamples - 1, int((1 - alpha) * n_resamples))]
    return lo, hi


def length_baseline(chosen_lengths: Sequence[float], rejected_lengths: Sequence[float]) -> float:
    """The better of the rules "the longer answer wins" and "the shorter answer wins" (equal lengths count half)
    on the same pairs: the bar a preference model must clear to show it learnt more than length. On the HH
    harmless data the shorter answer wins about 55% of the time."""
    if not chosen_lengths:
        return float("nan")
    longer = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen_lengths, rejected_lengths))
    longer /= len(chosen_lengths)
    return max(longer, 1.0 - longer)
