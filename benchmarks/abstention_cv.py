"""What should decide when to decline? Cross-validated on the 70 training questions only.

Reads a finished ``benchmarks/demo_cv.py`` run with ``--setting sft_targets=gold`` (``--cv``): every training question
answered greedily, once, by an SFT model that never saw it (3 folds), and the base model's answers to all 70. Then,
per fold:

1. **the reward model**, the demo's recipe (frozen SFT backbone cut at ``--layers``, answer-mean pooling, logistic
   head), trained on the other folds' questions: per question the base model's answer, the declining text and, where
   the built context holds it, the gold answer, every pair ordered by the grade (correct > declining > wrong); it
   scores the fold's SFT answers and the declining text: decline where the declining text scores higher;
2. **the policy's confidence**: the mean log-probability per token (end-of-turn included) of the fold's SFT model's
   own answer (:func:`alignloop.generation.abstention.confidence`): decline below a threshold.

Prints the AUC of each for "this answer is right", then what declining by each would give (correct / incorrect /
refusal, and on the questions whose context holds the gold: correct and refusals) over a grid of thresholds; writes
``scores.jsonl``.

    python benchmarks/demo_cv.py --output runs/cv-gold --setting sft_targets=gold --folds 3
    python benchmarks/abstention_cv.py --cv runs/cv-gold --output runs/abstention-cv
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import alignloop
from alignloop.core.files import write_jsonl
from alignloop.evaluate.qa import IN_CONTEXT
from alignloop.evaluate.qa_run import qa_items, score_qa
from alignloop.pipelines.config import DECLINE_TEXT

RANK = {"correct": 2, "refusal": 1, "incorrect": 0}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def reward_pairs(items: dict, base: dict, ids: list[str]) -> list[dict]:
    """Preference rows for the training folds' questions: the base answer, the declining text and (in-context) the
    gold, every pair whose grades differ, the better one chosen."""
    pairs = []
    for i in ids:
        rec = items[i]
        cands = {base[i]["answer"], DECLINE_TEXT} | ({rec.meta["answer"]} if base[i]["context_class"] == IN_CONTEXT
                                                     else set())
        graded = [(c, RANK[score_qa([rec], [c])[0][0]["grade"]]) for c in sorted(cands)]
        pairs += [{"prompt": rec.prompt.to_json(), "chosen": a, "rejected": b}
                  for a, ra in graded for b, rb in graded if ra > rb]
    return pairs


def outcome(rows: list[dict], decline: list[bool]) -> str:
    g = ["refusal" if d else r["grade"] for r, d in zip(rows, decline)]
    ic = [x for x, r in zip(g, rows) if r["context_class"] == IN_CONTEXT]
    return (f"{g.count('correct')} / {g.count('incorrect')} / {g.count('refusal')} | in-context ({len(ic)}): "
            f"{ic.count('correct')} correct, {ic.count('refusal')} refusals")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cv", required=True, help="a demo_cv.py output folder run with --setting sft_targets=gold")
    ap.add_argument("--output", required=True)
    ap.add_argument("--layers", type=int, default=15, help="the reward model's backbone cut (the demo's: 15)")
    args = ap.parse_args(argv)
    import torch
    from sklearn.metrics import roc_auc_score

    from alignloop.generation.abstention import confidence
    from alignloop.models.load import load_causal_lm
    from alignloop.models.reward_model import load_reward_model

    cv, out = Path(args.cv), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    vdir = cv / "sft_targets=gold"
    items = {r.meta["id"]: r for r in qa_items(str(vdir / "data" / "train.jsonl"))}
    base = {r["id"]: r for r in _jsonl(cv / "base" / "grades.jsonl")}
    rows: list[dict] = []
    for fdir in sorted(vdir.glob("fold_*")):
        held = {r["id"] for r in _jsonl(fdir / "eval.jsonl")}
        sft = json.loads((fdir / "sft" / "done").read_text())["result"]
        pairs = write_jsonl(out / f"{fdir.name}_pairs.jsonl", reward_pairs(items, base, sorted(set(items) - held)))
        rm_dir = out / f"{fdir.name}_reward"
        if not (rm_dir / "final").exists():
            alignloop.run_stage("reward train", model=sft, data=str(pairs), output=str(rm_dir), freeze_backbone=True,
                                pooling="mean", backbone_layers=args.layers, max_steps=50, batch_size=4,
                                max_length=512, seed=0, db=None)
        rm = load_reward_model(rm_dir)
        graded = {r["id"]: r for r in _jsonl(fdir / "eval" / "grades.jsonl")}
        ids = sorted(graded)
        prompts = [items[i].prompt for i in ids]
        answers = [graded[i]["answer"] for i in ids]
        s_answer, s_decline = rm.score(prompts, answers), rm.score(prompts, [DECLINE_TEXT] * len(ids))
        lm, tok = load_causal_lm(sft)
        with torch.no_grad():
            conf = confidence(lm, tok, prompts, answers)
        rows += [{"id": i, "fold": fdir.name, "context_class": graded[i]["context_class"], "grade": graded[i]["grade"],
                  "answer": a, "rm_margin": sa - sd, "confidence": c, "base_grade": base[i]["grade"]}
                 for i, a, sa, sd, c in zip(ids, answers, s_answer, s_decline, conf)]
    write_jsonl(out / "scores.jsonl", rows)
    right = [r["grade"] == "correct" for r in rows]
    print(f"{len(rows)} out-of-fold answers, {sum(right)} right. AUC for 'this answer is right': reward model "
          f"(answer - declining) {roc_auc_score(right, [r['rm_margin'] for r in rows]):.3f}, confidence "
          f"{roc_auc_score(right, [r['confidence'] for r in rows]):.3f}")
    base_rows = [{"grade": r["base_grade"], "context_class": r["context_class"]} for r in rows]
    print(f"base model: {outcome(base_rows, [False] * len(rows))}")
    print(f"SFT, never declining: {outcome(rows, [False] * len(rows))}")
    print(f"SFT, the reward model declines: {outcome(rows, [r['rm_margin'] < 0 for r in rows])}")
    for t in [x / 100 for x in range(-100, -55, 5)]:
        print(f"SFT, declining below confidence {t:.2f}: {outcome(rows, [r['confidence'] < t for r in rows])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
