"""Question-answering scores for the financial use case: FinanceBench-style grades and llmware RAG points.

Every answer gets one grade:

* ``correct``: the answer states the gold fact (rules below);
* ``refusal``: the answer declines ("not found", "cannot be determined", "I don't know", an empty answer …) and
  states no matching fact;
* ``incorrect``: anything else, a *hallucination* in FinanceBench's words (the model asserted something wrong).

For the llmware RAG benchmark points a finer grade is kept (:func:`grade`): ``partial`` (part of a long gold
answer) and, when the question's context is given, ``incorrect`` (a wrong claim built only from numbers that are
in the context) versus ``hallucination`` (a number that appears neither in the context nor in the gold). Points:
+1 correct, +0.5 partial or "not found", 0 incorrect, -1 hallucination. When the gold itself says the answer is
not in the context ("not found"), a refusal is the correct answer.

The rules, in order:

1. **Numbers** (:func:`numeric_match`). A number is read with its currency sign, thousands separators, sign or
   accounting parentheses, a percent sign and a scale word (thousand/k, million/mn/m, billion/bn/b,
   trillion/tn). Two numbers match when they are equal after rounding to the coarser precision of the two
   (``24.3`` matches ``24.26``; ``$1577.00`` matches ``1,577``) and differ by at most 5 % of the gold (so
   ``1`` does not match ``0.66``). A percent also matches its fraction (``65.4%`` = ``0.654``). A scale word
   multiplies (``1.6 billion`` = ``$1,600 million``); when only one side has a scale word, the bare numbers are
   also compared (a 10-K's tables are "in millions", so ``1,616`` answers ``$1,616 million``). Years
   (1900-2100 without decimals or units) are ignored as facts.
2. **Short numeric gold** (the gold is a number with at most a few words around it, e.g. ``$1616.00``,
   ``30.8%``): correct iff some number in the answer matches the gold number.
3. **Yes/no gold** (starts with "Yes" or "No"): correct iff the answer's first yes/no word has the same
   polarity; and if the gold then names numbers, an answer that names numbers must match at least one of them.
4. **Other text gold**: when the gold names non-year numbers, correct iff the answer matches the first of them
   (the headline figure); otherwise correct iff the answer contains at least 60 % of the gold's content words
   (lower-cased, stop words and punctuation dropped, a simple plural ``s`` stripped, and words the question
   already contains left out: restating the question says nothing); 30-60 % recall is ``partial`` (counted
   incorrect by :func:`score_answer`).
5. **Refusals**: a wrong answer that declines ("not found", "cannot be determined", "the context does not
   contain …", "I don't know", "I can't help", an empty answer) is a refusal. A mere "unable to" inside a claim
   ("the company was unable to retain …") is not.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

Grade = str  # "correct" | "partial" | "refusal" | "incorrect" | "hallucination"

LLMWARE_POINTS = {"correct": 1.0, "partial": 0.5, "refusal": 0.5, "incorrect": 0.0, "hallucination": -1.0}

_SCALES = {
    "thousand": 1e3, "thousands": 1e3, "k": 1e3,
    "million": 1e6, "millions": 1e6, "mn": 1e6, "mm": 1e6, "m": 1e6, "mil": 1e6,
    "billion": 1e9, "billions": 1e9, "bn": 1e9, "b": 1e9,
    "trillion": 1e12, "trillions": 1e12, "tn": 1e12, "t": 1e12,
}

# sign / parenthesis, currency, digits with optional thousands separators, decimals, then % or a scale word
_NUMBER = re.compile(
    r"(?P<open>\()?(?P<sign>[-−–])?\s?(?P<cur>[$€£¥]|usd\s?)?\s?(?P<sign2>[-−–])?"
    r"(?P<num>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<close>\))?\s?(?P<pct>%|\s?percent\b|\s?per cent\b)?"
    r"(?:\s?(?P<scale>thousands?|millions?|billions?|trillions?|mn|mm|bn|tn|mil|k|m|b|t)\b)?",
    re.IGNORECASE,
)

_REFUSAL = re.compile(
    r"(\bnot found\b|\bcannot (?:be )?(?:determined|answered)|\bcan ?not (?:be )?determine|"
    r"\b(?:can't|cannot|unable to|not able to) (?:answer|determine|find|say|tell|help|assist|provide)|"
    r"\bi (?:don'?t|do not) know\b|\bno (?:relevant )?information\b|\bnot enough information\b|"
    r"\binsufficient (?:information|data)\b|"
    r"\bnot (?:provided|available|mentioned|stated|specified|given|disclosed|included|present) in the "
    r"(?:context|document|text|filing|data|information)|"
    r"\b(?:context|document|text|question) (?:does not|doesn't) (?:contain|provide|mention|include|specify|state)|"
    r"\bi (?:won'?t|will not) (?:help|assist|provide)|\bi'?m sorry, (?:but )?i|\bas an ai\b)",
    re.IGNORECASE,
)

_STOP = set("""a an the and or of to in on for by with from at as is are was were be been being it its this that
these those than then there their they them which who whom whose what when where why how into over under
between during per vs versus about also has have had do does did not no yes so such can could would should
will may might company's company fy year years""".split())


@dataclass(frozen=True)
class Number:
    """One number mention: ``value`` as written (percent points for percents), its ``scale`` (1 when none),
    the ``step`` of its last written digit (0.01 for ``24.26``), and whether it was a percent."""

    value: float
    scale: float
    step: float
    percent: bool
    text: str

    @property
    def is_year(self) -> bool:
        return (not self.percent and self.scale == 1 and self.step == 1 and 1900 <= self.value <= 2100
                and "$" not in self.text and "," not in self.text)


def extract_numbers(text: str) -> list[Number]:
    """Every number mention in ``text`` (see the module docstring for what is understood)."""
    out = []
    for m in _NUMBER.finditer(text or ""):
        raw = m.group("num")
        # a letter right before the digits (e.g. "Q2", "FY2022", "dg06") means an identifier, not a quantity
        start = m.start("num")
        if start > 0 and text[start - 1].isalpha():
            continue
        digits = raw.replace(",", "")
        value = float(digits)
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        negative = bool(m.group("sign") or m.group("sign2") or (m.group("open") and m.group("close")))
        scale_word = (m.group("scale") or "").lower()
        # single-letter scales only right after a number with a currency or no space ("$5m", "3.2b")
        if scale_word in ("m", "b", "t", "k") and not (m.group("cur") or text[m.end("num"):m.end("num") + 1].isalpha()):
            scale_word = ""
        out.append(Number(value=-value if negative else value, scale=_SCALES.get(scale_word, 1.0),
                          step=10.0 ** -decimals, percent=bool(m.group("pct")), text=m.group(0).strip()))
    return out


def _close(a: float, step_a: float, b: float, step_b: float, gold: float) -> bool:
    """Equal after rounding to the coarser precision, and within 5 % of the gold (see the module docstring)."""
    diff = abs(a - b)
    coarse = max(step_a, step_b)
    tol = 1e-9 * max(1.0, abs(a), abs(b))
    if diff > coarse / 2 + tol:
        return False
    return diff <= 0.05 * abs(gold) + tol


def numbers_match(answer: Number, gold: Number) -> bool:
    """Whether one answer number states the gold number (units, percent/fraction, rounding tolerated)."""
    pairs = []  # (answer value, answer step, gold value, gold step) in comparable units
    a_vals = [(answer.value * answer.scale, answer.step * answer.scale)]
    g_vals = [(gold.value * gold.scale, gold.step * gold.scale)]
    if (answer.scale == 1) != (gold.scale == 1):  # a unit said on one side only: compare the bare numbers too
        a_vals.append((answer.value, answer.step))
        g_vals.append((gold.value, gold.step))
    if answer.percent != gold.percent:  # 65.4% vs 0.654
        if answer.percent:
            a_vals += [(v / 100, s / 100) for v, s in a_vals]
        else:
            g_vals += [(v / 100, s / 100) for v, s in g_vals]
    for av, as_ in a_vals:
        for gv, gs in g_vals:
            pairs.append((av, as_, gv, gs))
    return any(_close(av, as_, gv, gs, gv) for av, as_, gv, gs in pairs)


def numeric_match(answer: str, gold: str) -> bool:
    """Whether ``answer`` states the gold's headline number (its first non-year number).

    ``numeric_match("1,577", "$1577.00")``, ``numeric_match("0.654", "65.4%")`` and
    ``numeric_match("$1,600 million", "1.6 billion")`` are all true.
    """
    golds = [n for n in extract_numbers(gold) if not n.is_year] or extract_numbers(gold)
    if not golds:
        return False
    target = golds[0]
    return any(numbers_match(a, target) for a in extract_numbers(answer))


def is_numeric_answer(gold: str, max_words: int = 4) -> bool:
    """Whether a gold answer *is* a number (``"$1616.00"``, ``"1.9%"``, ``"24.26"``), not a sentence holding one:
    the FinanceBench questions a rule-based numeric reward can judge."""
    return bool(extract_numbers(gold)) and len(gold.split()) <= max_words


def is_refusal(answer: str) -> bool:
    return not (answer or "").strip() or bool(_REFUSAL.search(answer))


def _words(text: str) -> list[str]:
    out = []
    for w in re.findall(r"[a-z][a-z&'-]*", (text or "").lower()):
        w = w.strip("'-")
        if len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        if w and w not in _STOP and len(w) > 1:
            out.append(w)
    return out


def content_recall(answer: str, gold: str, question: str | None = None) -> float:
    """Share of the gold's distinct content words found in the answer; words the question already contains
    do not count (an answer that restates the question has said nothing yet)."""
    g = set(_words(gold)) - set(_words(question or ""))
    if not g:
        g = set(_words(gold))
    if not g:
        return 0.0
    return len(g & set(_words(answer))) / len(g)


def _polarity(text: str) -> str | None:
    m = re.search(r"\b(yes|no)\b", (text or "").lower())
    return m.group(1) if m else None


def _is_short_numeric(gold: str, nums: list[Number]) -> bool:
    if not nums:
        return False
    rest = _NUMBER.sub(" ", gold)
    return len(re.findall(r"[A-Za-z]+", rest)) <= 3


def _gold_is_not_found(gold: str) -> bool:
    return bool(re.match(r"\s*(not found|not (?:in|provided|available)|none provided|n/?a\b)", gold.lower()))


def grade(answer: str, gold: str, question: str | None = None, context: str | None = None) -> tuple[Grade, str]:
    """The fine grade of one answer and a short reason (see the module docstring for the rules)."""
    answer = (answer or "").strip()
    if _gold_is_not_found(gold):
        return ("correct", "gold is 'not found' and the answer declines") if is_refusal(answer) else \
            ("hallucination", "gold is 'not found' but the answer claims something")
    gold_nums = [n for n in extract_numbers(gold) if not n.is_year]
    ans_nums = [n for n in extract_numbers(answer) if not n.is_year]
    verdict: tuple[Grade, str] | None = None
    if _is_short_numeric(gold, gold_nums):
        if any(numbers_match(a, gold_nums[0]) for a in ans_nums):
            return "correct", f"number {gold_nums[0].text} matched"
        verdict = ("incorrect", f"no number matching {gold_nums[0].text}")
    elif re.match(r"\s*(yes|no)\b", gold.lower()):
        want, got = _polarity(gold), _polarity(answer)
        if got == want:
            if gold_nums and ans_nums and not any(numbers_match(a, g) for a in ans_nums for g in gold_nums):
                verdict = ("partial", f"'{want}' right but its figures differ from the gold's")
            else:
                return "correct", f"'{want}' matched"
        else:
            verdict = ("incorrect", f"expected '{want}', got '{got or 'no yes/no'}'")
    else:
        recall = content_recall(answer, gold, question)
        headline = gold_nums[0] if gold_nums else None
        if headline is not None:
            # a gold that states a figure is answered only by that figure; words alone can't make it correct
            if any(numbers_match(a, headline) for a in ans_nums):
                return "correct", f"headline number {headline.text} matched"
            verdict = (("partial", f"word recall {recall:.2f} but no {headline.text}") if recall >= 0.6 else
                       ("incorrect", f"no number matching the headline {headline.text}"))
        elif recall >= 0.6:
            return "correct", f"word recall {recall:.2f}"
        else:
            verdict = ("partial" if recall >= 0.3 else "incorrect", f"word recall {recall:.2f}")
    if is_refusal(answer) and verdict[0] != "partial":
        return "refusal", "the answer declines"
    if verdict[0] == "incorrect" and context is not None and ans_nums:
        known = extract_numbers(context) + extract_numbers(gold) + extract_numbers(question or "")
        invented = [a for a in ans_nums if not any(numbers_match(a, k) for k in known)]
        if invented:
            return "hallucination", f"{verdict[1]}; {invented[0].text} is not in the context"
    if verdict[0] == "incorrect" and context is None:
        return "hallucination", verdict[1]
    return verdict


def score_answer(answer: str, gold: str, question: str | None = None) -> str:
    """FinanceBench grade: ``"correct"``, ``"incorrect"`` (a hallucination: a wrong claim) or ``"refusal"``."""
    return coarse_grade(grade(answer, gold, question)[0])


def llmware_points(answer: str, gold: str, question: str | None = None, context: str | None = None) -> float:
    """llmware RAG-benchmark points: +1 correct, +0.5 partial or "not found", 0 incorrect, -1 hallucination."""
    return LLMWARE_POINTS[grade(answer, gold, question, context)[0]]


def summarize(grades: list[str], points: list[float] | None = None) -> dict[str, float]:
    """Counts and rates of a list of FinanceBench grades (and the llmware total when points are given)."""
    n = len(grades)
    out: dict[str, float] = {"n": n}
    for g in ("correct", "incorrect", "refusal"):
        c = sum(1 for x in grades if x == g)
        out[g] = c
        out[f"{g}_rate"] = c / n if n else math.nan
    if points is not None:
        out["llmware_points"] = float(sum(points))
        out["llmware_mean"] = float(sum(points) / n) if n else math.nan
    return out


# --------------------------------------------------------------------------------------------------
# What the context holds: three classes of question, and the answers' habits
# --------------------------------------------------------------------------------------------------

IN_CONTEXT, ARITHMETIC, MISSING = "in_context", "arithmetic", "missing"
CONTEXT_CLASSES = (IN_CONTEXT, ARITHMETIC, MISSING)

# what a question (or the gold's words) asks when its figure is computed rather than quoted
_DERIVED = re.compile(
    r"\b(ratio|margin|change[sd]?|growth|grow|grew|increase[sd]?|decrease[sd]?|decline[sd]?|drop(?:ped)?|rise|rose|"
    r"percentage|percent|proportion|share of|average|mean|median|difference|yoy|year[- ]over[- ]year|cagr|"
    r"turnover|days|return on|coverage|payout|ebitda|free cash flow)\b|%",
    re.IGNORECASE,
)
_YES_NO = re.compile(r"\s*(yes|no)\b[\s,.;:!-]*", re.IGNORECASE)
DERIVABLE_DIGITS = 3  # a gold figure counts as "derivable" from two context figures only with this many digits


def _significant_digits(n: Number) -> int:
    if n.value == 0:
        return 1
    return int(math.floor(math.log10(abs(n.value)))) - int(round(math.log10(n.step))) + 1


def _derivable(target: Number, figures: list[Number]) -> bool:
    """Whether one of ``a + b``, ``a - b``, ``a / b`` or ``a / b - 1`` of two figures states ``target`` by
    :func:`numbers_match` (sums and differences only of figures with the same unit; two equal figures give
    nothing: their ratio 1 and difference 0 would match a round gold by chance)."""
    for i, a in enumerate(figures):
        for j, b in enumerate(figures):
            if i == j or a.value * a.scale == b.value * b.scale:
                continue
            values: list[tuple[float, float]] = []  # (value, scale)
            if a.scale == b.scale and a.percent == b.percent:
                values += [(a.value + b.value, a.scale), (a.value - b.value, a.scale)]
            if b.value and a.percent == b.percent:
                ratio = a.value * a.scale / (b.value * b.scale)
                values += [(ratio, 1.0), (ratio - 1, 1.0)]
            for v, scale in values:
                derived = Number(value=v, scale=scale, step=0.0, percent=a.percent and scale != 1.0, text="")
                if numbers_match(derived, target):
                    return True
    return False


def context_class(context: str, gold: str, question: str | None = None) -> str:
    """Which of :data:`CONTEXT_CLASSES` a question falls in, given the context the model answers from.

    The rule reuses the scorer's own reading of numbers and words (:func:`extract_numbers`, :func:`numbers_match`,
    :func:`content_recall`), so "in the context" means "an answer quoting the context can be graded correct":

    * the gold says the answer is not there ("not found") → ``missing``;
    * a gold that names a figure (a non-year number; a leading "Yes"/"No" is set aside): its headline figure (the
      first one, the number :func:`grade` checks) is ``in_context`` when some number of the context matches it;
      otherwise ``arithmetic`` when the context holds at least two figures and either the question or the gold's
      words ask for a computed quantity (ratio, margin, change, growth, percentage, average, difference, YoY,
      turnover, days, return on, coverage, payout, EBITDA, free cash flow or a ``%``: :data:`_DERIVED`)
      or the figure is one sum, difference, ratio or relative change of two context figures (only for a gold
      written with at least :data:`DERIVABLE_DIGITS` significant digits: a coarse figure is hit by chance);
      otherwise ``missing``;
    * a text gold: ``in_context`` when the context holds at least 60 % of the gold's content words (the
      scorer's "correct" threshold, words of the question left out), else ``missing``. A bare "Yes"/"No" gold
      has nothing to look for and counts as ``missing``: the class is what the context *demonstrably* holds.

    ``context`` may be the whole prompt (as :func:`grade` gets it): the question's own figures are then counted as
    quotable too.
    """
    if _gold_is_not_found(gold):
        return MISSING
    rest = _YES_NO.sub("", gold, count=1) if _YES_NO.match(gold) else gold
    gold_nums = [n for n in extract_numbers(rest) if not n.is_year]
    if not gold_nums:
        return IN_CONTEXT if rest.strip() and content_recall(context, rest, question) >= 0.6 else MISSING
    target = gold_nums[0]
    figures = [n for n in extract_numbers(context) if not n.is_year]
    if any(numbers_match(n, target) for n in figures):
        return IN_CONTEXT
    if len(figures) < 2:
        return MISSING
    if _DERIVED.search(f"{question or ''} {_NUMBER.sub(' ', gold)}"):
        return ARITHMETIC
    if _significant_digits(target) >= DERIVABLE_DIGITS and _derivable(target, figures):
        return ARITHMETIC
    return MISSING


def is_bare_figure(answer: str, max_words: int = 3) -> bool:
    """Whether ``answer`` is just a figure (``"$1.11"``, ``"12.4%"``, ``"1,577 million"``): at least one number
    and at most ``max_words`` words besides the numbers (scale words and currency signs belong to the number)."""
    nums = extract_numbers(answer)
    return bool(nums) and len(re.findall(r"[A-Za-z]+", _NUMBER.sub(" ", answer))) <= max_words


def answer_habits(answers: Sequence[str], grades: Sequence[str], classes: Sequence[str] | None = None
                  ) -> dict[str, Any]:
    """How a model answers, beside how often it is right: ``bare_figure_share`` (answers that are just a figure,
    :func:`is_bare_figure`), ``mean_length_words`` (white-space words), ``refusal_rate`` (answers graded
    ``refusal``) and, given each item's :func:`context_class`, ``refusal_rate_in_context`` (refusals among the
    ``in_context`` items: declining when the answer was there to quote; ``None`` without such items), with the
    counts behind each share (``n``, ``bare_figure``, ``refusal``, ``n_in_context``, ``refusal_in_context``).
    ``grades`` are :func:`grade`'s or :func:`score_answer`'s strings. Rates of no items are ``None``."""
    n = len(answers)
    if len(grades) != n or (classes is not None and len(classes) != n):
        raise ValueError(f"answer_habits: {n} answers but {len(grades)} grades"
                         + ("" if classes is None else f" and {len(classes)} classes"))
    unknown = sorted(set(grades) - set(LLMWARE_POINTS))
    if unknown:
        raise ValueError(f"answer_habits: unknown grade {unknown[0]!r} (expected one of {sorted(LLMWARE_POINTS)})")
    bad = sorted(set(classes or ()) - set(CONTEXT_CLASSES))
    if bad:
        raise ValueError(f"answer_habits: unknown context class {bad[0]!r} (expected one of {CONTEXT_CLASSES})")
    bare = sum(map(is_bare_figure, answers))
    refusals = sum(g == "refusal" for g in grades)
    in_ctx = [g for g, c in zip(grades, classes or ()) if c == IN_CONTEXT]
    refused_in_ctx = sum(g == "refusal" for g in in_ctx)

    def share(k: int, m: int) -> float | None:
        return k / m if m else None

    return {"n": n, "bare_figure": bare, "bare_figure_share": share(bare, n),
            "mean_length_words": share(sum(len(a.split()) for a in answers), n),
            "refusal": refusals, "refusal_rate": share(refusals, n),
            "n_in_context": len(in_ctx), "refusal_in_context": refused_in_ctx,
            "refusal_rate_in_context": share(refused_in_ctx, len(in_ctx))}


def coarse_grade(fine: str) -> str:
    """FinanceBench's grade of a fine :func:`grade`: ``partial`` and ``hallucination`` count as ``incorrect``."""
    if fine not in LLMWARE_POINTS:
        raise ValueError(f"unknown grade {fine!r} (expected one of {sorted(LLMWARE_POINTS)})")
    return {"partial": "incorrect", "hallucination": "incorrect"}.get(fine, fine)
