"""Does the context keep the answer? FinanceBench questions whose gold answer holds a number: in how many does
that figure appear in the full evidence, in its first N characters (the old cut), and in the context
:func:`alignloop.data.context.build_context` gives within N characters. No model runs; a second or so.

The gold figure is the first number of the gold answer (``extract_numbers(gold)[0]``, the rule issue 18 counted
with); it "appears" in a text when one of the text's numbers states it by the QA scorer's own rule
(:func:`alignloop.evaluate.qa.numbers_match`: units, percent/fraction and rounding tolerated). The ``headline``
line repeats the count with the scorer's headline number (the first non-year number, as ``numeric_match`` takes).

    python benchmarks/context_recall.py [--data data/financebench/questions.jsonl] [--chars 800] [--show]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from alignloop.data.context import build_context, evidence_passages
from alignloop.evaluate.qa import extract_numbers, numbers_match

ROOT = Path(__file__).resolve().parents[1]


def holds(text: str, figure) -> bool:
    return any(numbers_match(n, figure) for n in extract_numbers(text))


def count(rows: list[dict], chars: int, headline: bool, show: bool = False) -> dict[str, int]:
    out = {"numeric gold": 0, "in full evidence": 0, f"in first {chars} chars": 0, f"in builder's {chars} chars": 0}
    for r in rows:
        numbers = extract_numbers(r["answer"])
        if headline:
            numbers = [n for n in numbers if not n.is_year] or numbers
        if not numbers:
            continue
        out["numeric gold"] += 1
        full = "\n\n".join(p.strip() for p in evidence_passages(r.get("context") or r.get("evidence")))
        if not holds(full, numbers[0]):
            continue
        out["in full evidence"] += 1
        first, built = holds(full[:chars], numbers[0]), holds(build_context(r["question"], full, chars), numbers[0])
        out[f"in first {chars} chars"] += first
        out[f"in builder's {chars} chars"] += built
        if show and first != built:
            print(f"  {r.get('financebench_id')}: first {chars} chars {first}, builder {built}, "
                  f"gold {numbers[0].text!r}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "financebench" / "questions.jsonl"))
    ap.add_argument("--chars", type=int, default=800)
    ap.add_argument("--show", action="store_true", help="name the questions where the two cuts differ")
    args = ap.parse_args()
    rows = [json.loads(line) for line in Path(args.data).read_text().splitlines() if line.strip()]
    for rule, headline in (("first number", False), ("headline", True)):
        print(f"{rule}: {json.dumps(count(rows, args.chars, headline, args.show and not headline))}")


if __name__ == "__main__":
    main()
