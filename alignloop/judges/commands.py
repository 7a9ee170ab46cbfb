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
from pathlib import Path
from typing import Any

from alignloop.core.errors import DataError
from alignloop.core.files import write_jsonl
from alignloop.judges import factory
from alignloop.judges.config import JudgeConfig
from alignloop.judges.factory import principles_text  # noqa: F401  (re-exported)
from alignloop.judges.labeling import judge_rows, sample_and_judge  # noqa: F401  (re-exported)


def build_judge(cfg_or_kind: JudgeConfig | str, *args: Any, **kwargs: Any) -> Any:
    """``build_judge(cfg)`` as this module spelled it before 0.2 (a ``JudgeConfig``), or the factory's
    ``build_judge(kind, model, base_url, ...)``: both build through ``judges.factory``, the one owner."""
    if isinstance(cfg_or_kind, JudgeConfig):
        return judge_for(cfg_or_kind)
    return factory.build_judge(cfg_or_kind, *args, **kwargs)


def judge_for(cfg: JudgeConfig) -> Any:
    """The judge ``cfg`` describes (``--model`` is the reward-model folder for ``--judge reward``)."""
    return factory.build_judge(cfg.judge, cfg.model, cfg.base_url, api_key_env=cfg.api_key_env,
                               principles=cfg.principles, cache_dir=cfg.cache_dir, timeout=cfg.timeout,
                               retries=cfg.retries, concurrency=cfg.concurrency, margin=cfg.margin)


def read_candidates(path: str, limit: int | None = None) -> list[dict[str, Any]]:
    """Rows of ``prompt`` + ``completions`` (at least 2); ``gold`` is accepted for ``answer``."""
    rows = []
    with open(path) as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if not isinstance(row.get("completions"), list) or len(row["completions"]) < 2:
                raise DataError("needs a 'completions' list of at least 2", path=f"{path}:{line_no}",
                                field="completions")
            row.setdefault("answer", row.get("gold"))
            rows.append(row)
    return rows[:limit] if limit else rows


def judge_project(judge: Any, db_url: str, project_name: str, limit: int | None = None) -> dict[str, int]:
    """Judge a feedback project's pairwise tasks and store the verdicts as an 'ai' labeler's judgments."""
    from sqlalchemy import select

    from alignloop.feedback import store

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
    judge = judge_for(cfg)
    summary: dict[str, Any] = {"judge": judge.name, "identity": judge.identity}
    out = None
    if cfg.data:
        prefs, judgments = judge_rows(judge, read_candidates(cfg.data, cfg.limit))
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
