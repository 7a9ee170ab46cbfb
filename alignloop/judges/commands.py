"""``alignloop judge``: label pairs of completions with an AI judge.

Input: a file of ``prompt`` + ``completions`` rows (``alignloop generate`` writes them; an ``answer`` column is the
gold for the reference judge), and/or the pairwise tasks of a feedback-studio project (``--db``, ``--project``).
Every pair (all K(K-1)/2 of a row) is judged; decisive verdicts become ``prompt/chosen/rejected`` preferences
(``--output``), and every verdict, ties and order-inconsistent ones included, is kept in ``judgments.jsonl``
beside it. With ``--project`` the verdicts are stored as judgments of a labeler of kind ``ai`` whose identity is
the judge's model, so ``alignloop label stats`` can report judge-vs-human agreement on items both labelled.
"""

from __future__ import annotations

import json
import sys
from itertools import combinations
from pathlib import Path
from typing import Any

from alignloop.core.paths import alignloop_home
from alignloop.judges.config import JudgeConfig  # noqa: F401  (re-exported)


def principles_text(value: str | None) -> str | None:
    if value and len(value) < 4096 and Path(value).is_file():
        return Path(value).read_text()
    return value


def build_judge(cfg: JudgeConfig) -> Any:
    if cfg.judge == "reference":
        from alignloop.judges.reference import ReferenceJudge

        return ReferenceJudge()
    if cfg.judge == "reward":
        from alignloop.judges.reward import RewardModelJudge

        return RewardModelJudge.from_dir(cfg.model or "", cfg.margin)
    if cfg.judge == "http":
        from alignloop.judges.http import HTTPJudge

        return HTTPJudge(cfg.base_url or "", cfg.model or "", cfg.api_key_env, principles_text(cfg.principles),
                         cfg.timeout, cfg.retries, concurrency=cfg.concurrency,
                         cache_dir=cfg.cache_dir or alignloop_home() / "cache" / "judge")
    from alignloop.judges.local import LocalJudge

    return LocalJudge(cfg.model or "smollm2-135m-instruct", principles_text(cfg.principles))


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
                     max_prompt_length: int = 10_000, seed: int = 0, add_gold: bool = True,
                     desc: str = "sample candidates") -> dict[str, Any]:
    """Sample ``num_candidates`` answers per prompt record from ``model`` and judge every pair of them.

    The demo's labelling stage and the loop's on-policy rounds. ``records`` are prompt records with ``meta['id']``
    and, for the reference judge, the gold ``meta['answer']``. With ``add_gold`` the gold answer joins the
    candidates (duplicates dropped), so the judge always has a correct answer to prefer, as a human labeller who
    writes a better answer would. Writes, each atomically, in ``folder``: ``candidates.jsonl`` (per prompt: the
    raw ``sampled`` answers and the judged ``completions``), ``judgments.jsonl`` (every verdict; ``a``/``b`` index
    ``completions``) and ``preferences.jsonl`` (the decisive ones, in prompt order, then pair order)."""
    from alignloop.data.readers import write_jsonl
    from alignloop.evaluate.commands import answer

    folder = Path(folder)
    samples = answer(model, [r.prompt for r in records], max_new_tokens, max_prompt_length, temperature,
                     batch_size, num=num_candidates, seed=seed, desc=desc)
    rows = []
    for rec, sampled in zip(records, samples):
        gold = rec.meta.get("answer")
        extra = [gold] if add_gold and isinstance(gold, str) else []
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


def judge_project(judge: Any, db_url: str, project_name: str, limit: int | None = None) -> dict[str, int]:
    """Judge a feedback project's pairwise tasks and store the verdicts as an 'ai' labeler's judgments."""
    try:
        from alignloop.feedback import store
    except ImportError:  # issue 6's module is not in this build
        from alignloop.core.errors import ConfigError

        raise ConfigError(["project: the feedback studio (alignloop.feedback) is not installed in this version"]) \
            from None
    from sqlalchemy import select

    db = store.open_db(db_url)
    counts = {"judged": 0, "already": 0}
    with db.write() as s:
        project = store.get_project(s, project_name)
        labeler = store.get_or_create_labeler(s, judge.name, kind="ai", identity=judge.identity)
        done = {j.task_id for j in store.judgments_for(s, project, include_skipped=True) if j.labeler_id == labeler.id}
        tasks = [t for t in s.scalars(select(store.Task).where(store.Task.project_id == project.id,
                                                               store.Task.task_type == "pairwise")
                                      .order_by(store.Task.seq))]
        todo = [t for t in tasks if t.id not in done][: limit or None]
        counts["already"] = len(tasks) - len([t for t in tasks if t.id not in done])
        items = []
        for t in todo:
            prompt = s.get(store.Prompt, t.prompt_id)
            comps = [s.get(store.Completion, int(c)).text for c in t.completion_ids]
            texts = [c if isinstance(c, str) else c[-1]["content"] for c in comps]
            items.append((prompt.prompt, texts, (prompt.extra or {}).get("answer")))
        for t, v in zip(todo, judge.judge_many(items)):
            choice = v.label if v.label in ("A", "B") else "tie"
            store.add_judgment(s, t.id, labeler, choice, kind="ai", identity=judge.identity)
            counts["judged"] += 1
    return counts


def run(cfg: JudgeConfig) -> Path | None:
    from alignloop.data.readers import write_jsonl

    judge = build_judge(cfg)
    summary: dict[str, Any] = {"judge": judge.name, "identity": judge.identity}
    out = None
    if cfg.data:
        rows = []
        with open(cfg.data) as fh:
            for line_no, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row.get("completions"), list) or len(row["completions"]) < 2:
                    from alignloop.core.errors import DataError

                    raise DataError("needs a 'completions' list of at least 2", path=f"{cfg.data}:{line_no}",
                                    field="completions")
                row.setdefault("answer", row.get("gold"))
                rows.append(row)
        rows = rows[: cfg.limit] if cfg.limit else rows
        prefs, judgments = judge_rows(judge, rows)
        out = Path(cfg.output or "")
        write_jsonl(out, prefs)
        write_jsonl(out.with_name(out.stem.replace(".jsonl", "") + ".judgments.jsonl"), judgments)
        labels = [j["label"] for j in judgments]
        summary.update({"pairs": len(judgments), "preferences": len(prefs),
                        **{k: labels.count(k) for k in ("A", "B", "tie", "inconsistent")}})
    if cfg.project:
        summary["project"] = judge_project(judge, cfg.db or "", cfg.project, cfg.limit)
    if hasattr(judge, "stats"):
        summary["http"] = judge.stats
    print(json.dumps(summary), file=sys.stdout)
    return out
