"""Turning completions into preferences with a judge: every pair of a prompt's completions is judged, decisive
verdicts become ``prompt/chosen/rejected`` rows and every verdict is kept. :func:`sample_and_judge` first samples
the completions from a policy: the demo's labelling stage and the loop's on-policy rounds."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Any, Callable

from alignloop.core.files import write_jsonl
from alignloop.evaluate.qa_run import answer


def judge_rows(judge: Any, rows: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """(preferences, judgments) for rows of ``prompt``, ``completions`` and optional ``answer``."""
    items, keys = [], []
    for n, row in enumerate(rows):
        comps = row["completions"]
        for i, j in combinations(range(len(comps)), 2):
            items.append((row["prompt"], [comps[i], comps[j]], row.get("answer")))
            keys.append((n, i, j))
    verdicts = judge.judge_many(items)
    prefs, judgments = [], []
    for (n, i, j), (prompt, pair, _), v in zip(keys, items, verdicts):
        rid = rows[n].get("id", n)
        judgments.append({"id": rid, "a": i, "b": j, "judge": judge.name, "identity": judge.identity, **v.to_json()})
        if v.decisive:
            prefs.append({"id": rid, "prompt": prompt, "chosen": pair[v.winner], "rejected": pair[1 - v.winner],
                          "judge": judge.name, "prob": v.prob})
    return prefs, judgments


def sample_and_judge(model: Any, records: list[Any], folder: str | Path, judge: Any, num_candidates: int = 2,
                     max_new_tokens: int = 48, temperature: float = 1.0, batch_size: int = 8,
                     max_prompt_length: int = 10_000, seed: int = 0, add_gold: bool | Callable[[Any], bool] = True,
                     desc: str = "sample candidates", decline: str | None = None) -> dict[str, Any]:
    """Sample ``num_candidates`` answers per prompt record from ``model`` and judge every pair of them.

    ``records`` are prompt records with ``meta['id']`` and, for the reference judge, the gold ``meta['answer']``.
    With ``add_gold`` the gold answer joins the candidates (duplicates dropped), so the judge always has a correct
    answer to prefer, as a human labeller who writes a better answer would; ``add_gold`` may also be a test of the
    record (the gold joins only where it says so: e.g. only where the prompt's context holds the answer). Writes,
    each atomically, in ``folder``: ``candidates.jsonl`` (per prompt: the raw ``sampled`` answers and the judged
    ``completions``), ``judgments.jsonl`` (every verdict; ``a``/``b`` index ``completions``) and
    ``preferences.jsonl`` (the decisive ones, in prompt order, then pair order). ``decline``, when given, joins the
    candidates too: an answer that declines, so that the judge's "declining beats inventing" reaches the labels even
    when no sample declines."""
    folder = Path(folder)
    samples = answer(model, [r.prompt for r in records], max_new_tokens, max_prompt_length, temperature,
                     batch_size, num=num_candidates, seed=seed, desc=desc, abstain=False)  # candidates as sampled
    rows = []
    for rec, sampled in zip(records, samples):
        gold = rec.meta.get("answer")
        with_gold = add_gold(rec) if callable(add_gold) else add_gold
        extra = ([gold] if with_gold and isinstance(gold, str) else []) + ([decline] if decline else [])
        rows.append({"id": str(rec.meta["id"]), "prompt": rec.prompt.to_json(), "sampled": sampled,
                     "completions": list(dict.fromkeys(sampled + extra)), "answer": gold})
    prefs, judgments = judge_rows(judge, rows)
    write_jsonl(folder / "candidates.jsonl", rows)
    write_jsonl(folder / "judgments.jsonl", judgments)
    write_jsonl(folder / "preferences.jsonl", prefs)
    grades = [g for j in judgments for g in j.get("grades", [])]
    summary: dict[str, Any] = {"prompts": len(rows), "candidates": sum(len(s) for s in samples),
                               "pairs": len(judgments), "preferences": len(prefs)}
    if grades:  # the reference judge grades every candidate it compares
        summary["candidate_correct_rate"] = grades.count("correct") / len(grades)
    return summary
