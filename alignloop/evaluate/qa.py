"""Scoring answers to financial questions (FinanceBench): does the answer contain the right number?

``numeric_match(answer, gold)`` is deliberately simple and documented, so its mistakes are easy to predict:

* Numbers are read with their decoration: ``$``, thousands commas, ``%``, accounting negatives ``(2,724)``,
  and a scale word right after them (``thousand``/``k``, ``million``/``mn``/``m``, ``billion``/``bn``/``b``,
  ``trillion``). The sign is ignored (``-0.02`` and "a decline of 0.02" both match ``-0.02``): answers state
  decreases in words as often as with a minus sign.
* The gold's *target* numbers are its numbers that are not bare years (1900-2100, no decimals, no ``$``/``%``),
  unless a year is all it has. A gold with no number is not a numeric question: nothing matches it.
* An answer matches when one of its numbers equals one target number up to a unit change (× 10^±3, ^±6, ^±9:
  FinanceBench golds are often "in millions" without saying so; × 100 for a ratio given as a percentage) and
  rounding: within 1% relative, or equal once the gold is rounded to the answer's decimals when the answer
  has at least two significant digits.

The evaluation work extends this module (issue 7); the RL reward ``alignloop.rewards:financebench_numeric``
uses it as is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_SCALES = {"thousand": 1e3, "k": 1e3, "million": 1e6, "mn": 1e6, "mm": 1e6, "m": 1e6, "billion": 1e9,
           "bn": 1e9, "b": 1e9, "trillion": 1e12, "tn": 1e12}
_NUMBER = re.compile(
    r"(?P<open>\()?\s*(?P<sign>[-−–])?\s*(?P<dollar>\$)?\s*(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"\s*(?P<close>\))?\s*(?P<pct>%|percent\b)?\s*(?P<scale>thousand|million|billion|trillion|mn|mm|bn|tn|k|m|b)?\b",
    re.IGNORECASE)


@dataclass(frozen=True)
class Number:
    value: float  # absolute value after the scale word
    decimals: int  # digits after the decimal point as written
    percent: bool
    year_like: bool


def extract_numbers(text: str) -> list[Number]:
    """Every number in ``text`` with its scale applied (sign dropped; see the module notes)."""
    out = []
    for m in _NUMBER.finditer(text or ""):
        raw = m.group("num").replace(",", "")
        try:
            v = float(raw)
        except ValueError:
            continue
        scale = (m.group("scale") or "").lower()
        v *= _SCALES.get(scale, 1.0)
        decimals = len(raw.split(".")[1]) if "." in raw else 0
        year_like = ("." not in raw and not m.group("dollar") and not m.group("pct") and not scale
                     and 1900 <= float(raw) <= 2100)
        out.append(Number(abs(v), decimals, bool(m.group("pct")), year_like))
    return out


def target_numbers(gold: str) -> list[Number]:
    nums = extract_numbers(gold)
    targets = [n for n in nums if not n.year_like]
    return targets or nums


def _close(a: Number, g: float) -> bool:
    if g == 0:
        return a.value == 0
    if abs(a.value - g) <= 0.01 * abs(g):
        return True
    # rounding: the gold rounded to the answer's precision, if the answer has at least 2 significant digits
    # ("12" for 11.6 matches, "2%" for 1.9% does not)
    significant = len(f"{a.value:.{a.decimals}f}".replace(".", "").lstrip("0"))
    return significant >= 2 and round(g, a.decimals) == round(a.value, a.decimals)


def numeric_match(answer: str, gold: str) -> bool:
    """True when ``answer`` contains a number equal to one of ``gold``'s target numbers (see the module notes)."""
    targets = target_numbers(gold)
    if not targets:
        return False
    found = extract_numbers(answer)
    for g in targets:
        candidates = [g.value * 10.0 ** e for e in (0, 3, -3, 6, -6, 9, -9)] + [g.value * 100, g.value / 100]
        for a in found:
            if any(_close(a, c) for c in candidates if math.isfinite(c)):
                return True
    return False


def is_numeric_answer(gold: str, max_words: int = 4) -> bool:
    """Whether a gold answer *is* a number (``"$1616.00"``, ``"1.9%"``, ``"24.26"``), not a sentence holding one:
    the FinanceBench questions a rule-based numeric reward can judge."""
    return bool(target_numbers(gold)) and len(gold.split()) <= max_words
