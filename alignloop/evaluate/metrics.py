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


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> dict[str, Any]:
    """Exact McNemar test of two paired 0/1 outcomes on the same items (e.g. "answer incorrect" for the base and
    for a stage): only the items where they differ count, ``only_a`` (true for ``a`` only) against ``only_b``,
    and the two-sided p is the binomial test of ``min(only_a, only_b)`` out of their sum at 1/2
    (``statsmodels.stats.contingency_tables.mcnemar(table, exact=True)``; 1.0 when they never differ).
    Returns ``n``, ``only_a``, ``only_b``, ``both``, ``neither`` and ``p_value``."""
    from statsmodels.stats.contingency_tables import mcnemar

    if len(a) != len(b):
        raise ValueError(f"mcnemar_exact needs the same items: {len(a)} outcomes vs {len(b)}")
    pairs = [(bool(x), bool(y)) for x, y in zip(a, b)]
    both = sum(x and y for x, y in pairs)
    only_a = sum(x and not y for x, y in pairs)
    only_b = sum(y and not x for x, y in pairs)
    neither = len(pairs) - both - only_a - only_b
    p = float(mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue)
    return {"n": len(pairs), "only_a": only_a, "only_b": only_b, "both": both, "neither": neither,
            "p_value": min(p, 1.0)}


def proportion_ci(k: int, n: int, level: float = 0.95) -> tuple[float | None, float | None]:
    """The Wilson score interval of ``k`` out of ``n`` (``statsmodels ... proportion_confint(method="wilson")``);
    ``(None, None)`` for ``n == 0``. See :func:`rate_ci` for why Wilson."""
    from statsmodels.stats.proportion import proportion_confint

    if n == 0:
        return None, None
    lo, hi = proportion_confint(k, n, alpha=1 - level, method="wilson")
    return float(lo), float(hi)


def rate_ci(flags: Sequence[bool]) -> dict[str, Any]:
    """A rate (e.g. of correct answers) with its 95 % **Wilson** score interval: ``k``, ``n``, ``rate`` and
    ``ci95`` ``[low, high]`` (``None`` for no items).

    Wilson, not :func:`bootstrap_ci`: for a count out of 30 and rates near 0 or 1 (refusals, a model that is
    rarely right) the percentile bootstrap collapses — 0 of 30 resamples to ``[0, 0]``, as if certain — and
    under-covers at small n, while Wilson's interval stays honest (0 of 30: ``[0, 0.114]``), needs no seed, and
    has a closed form. Every rate of a count in the reports uses it; the bootstrap stays for means of graded
    values (llmware points) and the eval summary's ``correct_rate_ci95``."""
    k, n = sum(bool(f) for f in flags), len(flags)
    lo, hi = proportion_ci(k, n)
    return {"k": k, "n": n, "rate": k / n if n else None, "ci95": [lo, hi]}
