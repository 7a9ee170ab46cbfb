"""What the context holds: how many FinanceBench questions of each split fall in each class of
:func:`alignloop.evaluate.qa.context_class` (``in_context``, ``arithmetic``, ``missing``) with the contexts
``alignloop eval`` builds (:func:`alignloop.data.context.build_context` within ``--chars``), classed exactly as
``score_qa`` classes them (the whole prompt as the context). No model runs; about a second.

    python benchmarks/context_classes.py [--data data/financebench/questions.jsonl] [--chars 800] [--show]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from alignloop.evaluate.qa import CONTEXT_CLASSES, context_class
from alignloop.evaluate.qa_run import context_of, qa_items, question_of

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT / "data" / "financebench" / "questions.jsonl"))
    ap.add_argument("--chars", type=int, default=800)
    ap.add_argument("--show", action="store_true", help="one line per question: class, id, question, gold")
    args = ap.parse_args()
    for split in ("test", "train"):
        records = qa_items(args.data, split=split, context_chars=args.chars)
        classes = [context_class(context_of(r), r.meta["answer"], question_of(r)) for r in records]
        counts = Counter(classes)
        print(f"{split}: {json.dumps({'n': len(records), **{c: counts[c] for c in CONTEXT_CLASSES}})}")
        if args.show:
            for r, c in zip(records, classes):
                print(f"  {c:10s} {r.meta['id']} | {question_of(r)[:70]} | {r.meta['answer'][:50]!r}")


if __name__ == "__main__":
    main()
