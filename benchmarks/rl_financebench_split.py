"""Fixed FinanceBench split for the RL benchmarks: a question is held out when sha256(financebench_id) % 100 < 30.

Only questions whose gold answer holds a number (``alignloop.evaluate.qa.extract_numbers``) are kept: the numeric
reward cannot judge the others. Writes ``train.jsonl`` and ``heldout.jsonl`` (the original rows) to a folder, and
``train-extractive.jsonl``: the train questions whose gold number appears in their own prompt (question and
evidence, as ``read_records`` builds it; ``numeric_match``), the ones a small model can answer by quoting its
context rather than computing a ratio. GRPO learns only from groups whose answers differ in reward, so training on
these wastes fewer samples; the held-out set is never filtered.

    python benchmarks/rl_financebench_split.py OUT_DIR
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from alignloop.data.readers import read_records
from alignloop.evaluate.qa import extract_numbers, numeric_match

SOURCE = Path(__file__).resolve().parents[1] / "data" / "financebench" / "questions.jsonl"


def held_out(financebench_id: str) -> bool:
    return int(hashlib.sha256(financebench_id.encode()).hexdigest(), 16) % 100 < 30


def main(out: str) -> dict[str, int]:
    rows = [json.loads(ln) for ln in SOURCE.read_text().splitlines() if ln.strip()]
    # each row's prompt as the RL trainers build it (question + evidence): "in its context" means what they see
    texts = {id(r): rec.prompt.text for r, rec in zip(rows, read_records(SOURCE, kind="prompt"))}
    rows = [r for r in rows if extract_numbers(r["answer"])]
    parts = {"train": [r for r in rows if not held_out(r["financebench_id"])],
             "heldout": [r for r in rows if held_out(r["financebench_id"])]}
    parts["train-extractive"] = [r for r in parts["train"] if numeric_match(texts[id(r)], r["answer"])]
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in parts.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    counts = {k: len(v) for k, v in parts.items()}
    print(json.dumps(counts))
    return counts


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "fb-split")
