"""QA items, answers and their per-item grades: the library that ``alignloop eval``, the loop and the demo share.

:func:`qa_items` reads prompt records with a gold ``answer`` (FinanceBench rows by default) and applies the fixed
held-out rule (:func:`heldout_ids`); :func:`answer` samples a model's answers; :func:`score_qa` grades them with
the rules of :mod:`alignloop.evaluate.qa` into per-item rows and a summary with a bootstrap interval.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Any, Sequence

from alignloop.core.errors import DataError
from alignloop.data.context import CONTEXT_CHARS
from alignloop.data.readers import read_records
from alignloop.evaluate.metrics import bootstrap_ci
from alignloop.evaluate.qa import (
    CONTEXT_CLASSES,
    LLMWARE_POINTS,
    answer_habits,
    coarse_grade,
    context_class,
    grade,
    summarize,
)


def heldout_ids(ids: list[str], share: float = 0.3) -> set[str]:
    """The fixed held-out rule of the demo and ``--split test``: the ``share`` of the ids (rounded) with the
    smallest SHA-256 of the id. Order-free and the same on every machine: 30 of the 100 FinanceBench questions."""
    ranked = sorted(ids, key=lambda i: hashlib.sha256(str(i).encode()).hexdigest())
    return set(ranked[: round(share * len(ranked))])


def record_ids(records: Sequence[Any]) -> list[str]:
    """Each prompt record's id: its ``financebench_id``, else its ``id``, else its position."""
    return [str(r.meta.get("financebench_id", r.meta.get("id", n))) for n, r in enumerate(records)]


def in_split(fid: str, test: set[str], split: str) -> bool:
    """Whether the item ``fid`` belongs to ``split`` ("all", "train" or "test") given the held-out ids."""
    return split == "all" or (fid in test) == (split == "test")


def qa_items(path: str, split: str = "all", limit: int | None = None,
             context_chars: int | None = CONTEXT_CHARS) -> list[Any]:
    """Prompt records with ``meta['answer']`` (gold) and ``meta['id']``; ``split`` filters FinanceBench rows, whose
    evidence becomes the context :func:`alignloop.data.context.build_context` picks within ``context_chars``."""
    records = read_records(path, kind="prompt", context_chars=context_chars)
    ids = record_ids(records)
    test = heldout_ids(ids)
    out = []
    for fid, r in zip(ids, records):
        if not in_split(fid, test, split):
            continue
        if not isinstance(r.meta.get("answer"), str):
            raise DataError("a QA item needs a gold 'answer' string", path=r.meta.get("_where"), field="answer")
        r.meta.setdefault("id", str(fid))
        out.append(r)
    return out[:limit] if limit else out


def context_of(record: Any) -> str:
    return record.prompt.last_user


def question_of(record: Any) -> str:
    """The question of a QA prompt (``qa_prompt`` puts it last, after "Question: ")."""
    if isinstance(record.meta.get("question"), str):
        return record.meta["question"]
    text = record.prompt.last_user
    return text.rsplit("Question: ", 1)[-1].strip() if "Question: " in text else text[-300:]


def answer(model: str | tuple, prompts: Sequence[Any], max_new_tokens: int = 64, max_prompt_length: int = 512,
           temperature: float = 0.0, batch_size: int = 8, num: int = 1, seed: int = 0, desc: str = "answer",
           abstain: bool = True) -> list[list[str]]:
    """``num`` answers per prompt from ``model`` (an alias/folder, or a loaded ``(model, tokenizer)``); a model
    folder with an abstention record declines where it is unsure (:mod:`alignloop.generation.abstention`), unless
    ``abstain`` is False (candidates to be judged, best-of-N samples)."""
    return answers_and_confidence(model, prompts, max_new_tokens, max_prompt_length, temperature, batch_size, num,
                                  seed, desc, abstain)["answers"]


def answers_and_confidence(model: str | tuple, prompts: Sequence[Any], max_new_tokens: int = 64,
                           max_prompt_length: int = 512, temperature: float = 0.0, batch_size: int = 8, num: int = 1,
                           seed: int = 0, desc: str = "answer", abstain: bool = True, rule: Any = None
                           ) -> dict[str, Any]:
    """:func:`answer` with what the abstention did: ``answers`` (as :func:`answer` returns them), and where the
    model folder has an abstention record (or ``rule``, an :class:`~alignloop.generation.abstention.Abstention`,
    is given: it replaces the record), ``policy_answers`` (before declining), ``confidence`` (per answer) and
    ``abstention`` (the rule applied)."""
    import torch
    from tqdm.auto import tqdm

    from alignloop.generation import abstention as abstaining
    from alignloop.generation.sampling import SamplingParams, sample_texts
    from alignloop.models.load import load_causal_lm

    rule = rule or (abstaining.read_abstention(model) if abstain else None)
    lm, tok = model if isinstance(model, tuple) else load_causal_lm(model)
    if torch.cuda.is_available():
        lm = lm.to("cuda")
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    with tqdm(total=len(prompts) * num, desc=desc, unit="answer", file=sys.stderr, dynamic_ncols=True) as bar:
        texts = sample_texts(lm, tok, list(prompts), num, params, batch_size=batch_size,
                             max_prompt_length=max_prompt_length, progress=bar)
    if rule is None:
        return {"answers": texts}
    with torch.no_grad():
        final, conf = abstaining.apply(rule, lm, tok, list(prompts), texts, max_prompt_length)
    return {"answers": final, "policy_answers": texts, "confidence": conf, "abstention": rule.to_json()}


def score_qa(records: Sequence[Any], answers: Sequence[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per-item rows (id, question, gold, answer, grade, fine grade, llmware points, reason, and the item's
    ``context_class``: :func:`alignloop.evaluate.qa.context_class` of the prompt it was answered from) and a
    summary with the 95% bootstrap interval of the correct rate (``correct_rate_ci95``), the grades per class
    (``by_class``: ``n``, ``correct``, ``incorrect``, ``refusal`` for each of ``in_context``, ``arithmetic``,
    ``missing``) and the answers' habits (``habits``: :func:`alignloop.evaluate.qa.answer_habits`)."""
    rows = []
    for rec, ans in zip(records, answers):
        context, gold, question = context_of(rec), rec.meta["answer"], question_of(rec)
        fine, reason = grade(ans, gold, question, context)
        rows.append({"id": rec.meta["id"], "question": question, "gold": gold, "answer": ans,
                     "grade": coarse_grade(fine), "fine_grade": fine, "points": LLMWARE_POINTS[fine],
                     "reason": reason, "context_class": context_class(context, gold, question)})
    summary: dict[str, Any] = summarize([r["grade"] for r in rows], [r["points"] for r in rows])
    if rows:
        summary["correct_rate_ci95"] = list(bootstrap_ci([r["grade"] == "correct" for r in rows]))
    summary["by_class"] = {c: {"n": 0, "correct": 0, "incorrect": 0, "refusal": 0} for c in CONTEXT_CLASSES}
    for r in rows:
        counts = summary["by_class"][r["context_class"]]
        counts["n"] += 1
        counts[r["grade"]] += 1
    summary["habits"] = answer_habits([r["answer"] for r in rows], [r["grade"] for r in rows],
                                      [r["context_class"] for r in rows])
    return rows, summary
