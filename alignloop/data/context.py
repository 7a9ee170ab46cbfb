"""The context a question is answered from: the passages of its evidence most relevant to the question, in
document order, within a character budget — not the first N characters.

The one owner of "evidence → context" for training and evaluation alike: the FinanceBench reader
(:func:`alignloop.data.readers.read_records`, so ``alignloop eval``, ``generate``, the trainers and the loop), and
the demo's data stage all call :func:`build_context`.

How (deterministic: the same question, evidence and budget always give the same text):

1. **Units.** The evidence (a string, or a list of passages / FinanceBench ``evidence`` items) is cut into lines; a
   line without letters (``$``, ``1,975``, ``(26)``: the cells of a flattened table) joins the line before it, so a
   table row ("Net income $ 1,503 $ 1,848 $ 273") is one unit and prose is one unit per line; a unit longer than
   :data:`WINDOW_CHARS` is cut at sentence ends, then at spaces. Each unit is rendered with its white space
   collapsed.
2. **Windows.** Every run of consecutive units of at most :data:`WINDOW_CHARS` characters (capped by the budget)
   is a window, scored against the question by BM25 (k1 = 1.5, b = 0.75, the windows of this evidence as the
   corpus).
3. **Selection.** Windows with a positive score, best first (ties: the earlier one), are taken while the rendered
   context stays within the budget — first only windows that share no unit with one already taken (distinct
   hits), then the overlapping ones (the neighbourhood of the hits); what budget is left is filled with the units
   from the start of the evidence (table titles and column headers sit there). The chosen units are rendered in
   document order: one unit a line, a blank line between passages, ``...`` on its own line where units were left
   out.

Tokens (:func:`tokens`) are lower-case words with a plural ``s`` dropped ("expenditures" → "expenditure") and
numbers as written without thousands separators ("1,577.00" → "1577.00"), so figures and years are terms of their
own; a mixed token also yields its parts ("FY2018" → "fy2018", "fy", "2018"); two words in a row make a term too
("net income" → "net_income"), so the line that names the question's phrase beats lines that share only its common
words; a few short forms are read in full ("capex" → "capital expenditure"); common question words are skipped.
BM25 is written out here (about 15 lines) rather than taken from ``rank_bm25``/``bm25s``: no dependency, and exact
control of this tokenisation and of tie-breaking.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Optional, Sequence

CONTEXT_CHARS = 800  # the default budget: the demo's, ``alignloop eval``'s and the reader's for raw evidence
WINDOW_CHARS = 240  # the longest window scored as one "document"
GAP = "\n...\n"  # between units that are not next to each other in the evidence
K1, B = 1.5, 0.75

_STOP = frozenset("""a an the and or of to in on for by with from at as is are was were be been being it its this
that these those than then there their they them which who whom whose what when where why how into over under
between during per vs versus about also has have had do does did not no yes so such can could would should will may
might company company's fy year years based answer using use""".split())
# the short forms filings and questions use for the same line items: each side is read in its long form
_ABBREVIATIONS = {"capex": "capital expenditure", "opex": "operating expense", "eps": "earnings per share",
                  "cogs": "cost of goods sold", "r&d": "research and development", "sg&a": "selling general and "
                  "administrative", "pp&e": "property plant and equipment", "d&a": "depreciation and amortization"}
_ABBREVIATION = re.compile(r"(?<![a-z&])(" + "|".join(map(re.escape, _ABBREVIATIONS)) + r")(?![a-z&])")
_TOKEN = re.compile(r"[a-z0-9]+(?:[.,]\d+)*")
_BREAK = re.compile(r"[.,;:!?()\[\]$%]")
_PART = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_LETTER = re.compile(r"[^\W\d_]")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


def tokens(text: str) -> list[str]:
    """Retrieval tokens of ``text``: lower-case words (stop words dropped, plural ``s`` stripped), numbers, and each
    pair of words that follow each other once stop words are dropped ("net income" → "net_income")."""
    out: list[str] = []
    prev, end = "", 0  # the word before and where it ended, for pairs; a number or punctuation between breaks a pair
    text = _ABBREVIATION.sub(lambda m: _ABBREVIATIONS[m.group()], text.lower())
    for m in _TOKEN.finditer(text):
        if _BREAK.search(text, end, m.start()):
            prev = ""
        end = m.end()
        tok = m.group().replace(",", "")
        if tok[0].isdigit() and _PART.fullmatch(tok):
            out.append(tok)  # a number or a year
            prev = ""
        elif tok.isalpha():
            if tok in _STOP or len(tok) < 2:
                continue
            word = tok[:-1] if len(tok) > 3 and tok.endswith("s") and not tok.endswith("ss") else tok
            out += [word, f"{prev}_{word}"] if prev else [word]
            prev = word
        else:  # letters and digits mixed: FY2018, Q2, 3M
            out.append(tok)
            out += [p for p in _PART.findall(tok) if p not in _STOP and (len(p) > 1 or p.isdigit())]
            prev = ""
    return out


def evidence_passages(evidence: Any) -> list[str]:
    """The passages of ``evidence``: ``None`` → none, a string → itself, a list of strings or of FinanceBench items
    (``{"evidence_text": ...}``) → their texts. Anything else raises ``ValueError`` naming the bad item."""
    if evidence is None:
        return []
    if isinstance(evidence, str):
        return [evidence]
    if not isinstance(evidence, (list, tuple)):
        raise ValueError(f"expected a string or a list of passages, got {type(evidence).__name__}")
    out = []
    for i, item in enumerate(evidence):
        text = item.get("evidence_text") if isinstance(item, dict) else item
        if not isinstance(text, str):
            raise ValueError(f"item {i} needs an 'evidence_text' string")
        out.append(text)
    return out


def _split_long(text: str, limit: int) -> list[str]:
    """``text`` in pieces of at most ``limit`` characters: at sentence ends where possible, else at spaces."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        while len(sentence) > limit:
            cut = sentence.rfind(" ", 0, limit + 1)
            cut = cut if cut > 0 else limit
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if pieces and len(pieces[-1]) + 1 + len(sentence) <= limit:
            pieces[-1] += " " + sentence  # short sentences share a unit
        elif sentence:
            pieces.append(sentence)
    return pieces


def _units(passages: Sequence[str], limit: int) -> list[tuple[int, str]]:
    """``(passage index, text)`` per unit: a line with letters and the letterless lines after it, white space
    collapsed, cut to ``limit`` characters."""
    units: list[tuple[int, str]] = []
    for p, passage in enumerate(passages):
        rows: list[str] = []
        for line in passage.splitlines():
            line = " ".join(line.split())
            if not line:
                continue
            if rows and not _LETTER.search(line):
                rows[-1] += " " + line
            else:
                rows.append(line)
        units += [(p, piece) for row in rows for piece in _split_long(row, limit)]
    return units


def _bm25(query: list[str], docs: list[list[str]]) -> list[float]:
    """Okapi BM25 of each document (a token list) for the query terms, idf over ``docs``."""
    n = len(docs)
    avg = sum(len(d) for d in docs) / max(n, 1) or 1.0
    df = Counter(t for d in docs for t in set(d))
    terms = sorted(set(query))
    idf = {t: math.log(1.0 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in terms if df[t]}
    scores = []
    for d in docs:
        tf = Counter(d)
        norm = K1 * (1.0 - B + B * len(d) / avg)
        scores.append(sum(idf[t] * tf[t] * (K1 + 1.0) / (tf[t] + norm) for t in terms if tf[t] and t in idf))
    return scores


def _render(units: list[tuple[int, str]], chosen: Sequence[int]) -> str:
    out: list[str] = []
    for k, i in enumerate(chosen):
        if k:
            prev = chosen[k - 1]
            out.append(GAP if i != prev + 1 else ("\n\n" if units[i][0] != units[prev][0] else "\n"))
        out.append(units[i][1])
    return "".join(out)


def _length(units: list[tuple[int, str]], chosen: Sequence[int]) -> int:
    """``len(_render(units, chosen))`` without building the string."""
    total = sum(len(units[i][1]) for i in chosen)
    for prev, i in zip(chosen, chosen[1:]):
        total += len(GAP) if i != prev + 1 else (2 if units[i][0] != units[prev][0] else 1)
    return total


def _windows(units: list[tuple[int, str]], size: int) -> list[range]:
    """For each unit, the longest run of units starting there whose rendering fits ``size`` (at least the unit)."""
    out = []
    for start in range(len(units)):
        end = start + 1
        while end < len(units) and _length(units, range(start, end + 1)) <= size:
            end += 1
        out.append(range(start, end))
    return out


def build_context(question: str, evidence: Any, budget: Optional[int] = CONTEXT_CHARS) -> str:
    """The context for ``question`` from ``evidence`` (see the module docstring): at most ``budget`` characters
    (``None`` or 0: all of it, one unit a line), the passages most relevant to the question in document order.
    Empty or ``None`` evidence gives ``""``."""
    if budget is not None and budget < 0:
        raise ValueError(f"context budget must be >= 0 characters, got {budget}")
    passages = evidence_passages(evidence)
    limit = min(WINDOW_CHARS, budget) if budget else WINDOW_CHARS
    units = _units(passages, limit)
    everything = list(range(len(units)))
    if not budget or _length(units, everything) <= budget:
        return _render(units, everything)
    windows = _windows(units, limit)
    scores = _bm25(tokens(question or ""), [[t for i in w for t in tokens(units[i][1])] for w in windows])
    ranked = sorted((k for k, s in enumerate(scores) if s > 0), key=lambda k: (-scores[k], k))
    chosen: set[int] = set()

    def take(idx: Sequence[int]) -> bool:
        candidate = sorted(chosen.union(idx))
        if _length(units, candidate) > budget:
            return False
        chosen.update(idx)
        return True

    for k in ranked:  # distinct hits first
        if chosen.isdisjoint(windows[k]):
            take(windows[k])
    for k in ranked:  # then around them
        take(windows[k])
    for i in everything:  # the rest of the budget: the start of the evidence
        if i not in chosen and not take([i]):
            break
    return _render(units, sorted(chosen))
