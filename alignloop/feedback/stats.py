"""The project lead's figures: progress, per-labeler throughput and quality, agreement, consensus.

``label stats`` prints this as JSON and the lead page renders it. Agreement among labelers counts human
labelers only; AI judges are compared with the human majority separately (``judge_vs_human``).
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections import Counter, defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignloop.feedback import agreement as agr
from alignloop.feedback import consensus as cons
from alignloop.feedback.assign import queue
from alignloop.feedback.models import Assignment, Export, Project, Task, utcnow
from alignloop.feedback.queries import ProjectData


def project_stats(s: Session, project: Project, method: str = "majority", queue_size: int = 20) -> dict:
    data = ProjectData(s, project, include_skipped=True)
    judged = [j for j in data.judgments if not j.skipped]
    kinds = {lab.id: lab.kind for lab in data.labelers.values()}
    names = {lab.id: lab.name for lab in data.labelers.values()}
    t = project.task_type

    # progress: a task is complete when `overlap` labelers (of any kind) answered it
    answered = Counter(j.task_id for j in judged)
    regular = [tid for tid, task in data.tasks.items() if not task.is_gold]
    complete = sum(1 for tid in regular if answered[tid] >= project.overlap)
    started = sum(1 for tid in regular if 0 < answered[tid] < project.overlap)
    open_now = s.scalar(select(func.count(Assignment.id)).join(Task, Task.id == Assignment.task_id)
                        .where(Task.project_id == project.id, Assignment.status == "open")) or 0
    progress = {"tasks": len(regular), "gold_tasks": len(data.tasks) - len(regular), "complete": complete,
                "in_progress": started, "unlabeled": len(regular) - complete - started,
                "judgments": len(judged), "skips": len(data.judgments) - len(judged), "open_assignments": open_now,
                "percent_complete": round(100 * complete / len(regular), 1) if regular else 0.0}

    # per labeler: throughput, gold accuracy, agreement with the others' majority
    gold = data.gold_record()
    with_consensus = cons.agreement_with_consensus(t, {k: v for k, v in data.by_task.items()})
    hour_ago = utcnow() - dt.timedelta(hours=1)
    per: dict[int, list] = defaultdict(list)
    for j in data.judgments:
        per[j.labeler_id].append(j)
    labelers = []
    for lab_id, js in sorted(per.items(), key=lambda kv: names[kv[0]]):
        durations = [j.duration_ms / 1000 for j in js if j.duration_ms]
        g = gold.get(lab_id)
        labelers.append({
            "name": names[lab_id], "kind": kinds[lab_id], "judgments": sum(not j.skipped for j in js),
            "skips": sum(j.skipped for j in js), "last_hour": sum(j.created_at >= hour_ago for j in js),
            "median_seconds": round(statistics.median(durations), 1) if durations else None,
            "gold": {"answered": g[1], "correct": g[0], "accuracy": round(g[0] / g[1], 4)} if g else None,
            "agreement_with_others": with_consensus.get(lab_id)})

    humans = [j for j in judged if kinds.get(j.labeler_id) == "human"]
    units, scale = agr.units_from_judgments(humans, t)
    if scale == "none":
        agreement = {"note": f"{t} tasks are free text; no agreement figures"}
    else:
        agreement = agr.summary(units, scale)
        for pair in agreement["cohen_kappa_pairs"]:
            pair["labelers"] = [names[x] for x in pair["labelers"]]
    judge = agr.judge_vs_human(judged, kinds, t) if any(k == "ai" for k in kinds.values()) else None

    results = data.consensus(method)
    labels = [r["label"] for tid, r in results.items() if r["n"] > 0]
    decided = [x for x in labels if x is not None]
    consensus = {"method": method, "tasks_judged": len(labels), "decided": len(decided),
                 "tied": len(labels) - len(decided)}
    if t in ("pairwise", "binary"):
        consensus["labels"] = cons.counts(decided)
    exports = s.scalar(select(func.count(Export.id)).where(Export.project_id == project.id)) or 0
    return {"project": {"name": project.name, "task_type": t, "overlap": project.overlap, "order": project.order,
                        "gold_rate": project.gold_rate, "guidelines_version": project.guidelines_version,
                        "criteria": project.criteria if t == "rating" else None},
            "progress": progress, "labelers": labelers, "agreement": agreement, "judge_vs_human": judge,
            "consensus": consensus, "queue": queue(s, project, queue_size), "exports": exports}
