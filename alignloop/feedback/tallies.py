"""Figures kept up to date with each judgment, so that a lead's filters and charts read an index instead of every
judgment of a project (projects of 100,000+ tasks are ordinary).

* ``task_tallies``: per judged task, its answers and skips, its agreement (the share of pairs of its answers that
  agree: percent agreement, ``agreement.percent_agreement``, on this one task, over every answer that makes its
  consensus, AI judges' too) and how many answers missed its gold answer;
* ``gold_misses``: each judgment that missed its gold task's answer (``consensus.gold_correct``);
* ``daily_activity``: per project and UTC day, people's judgments and skips, other labelers' judgments, and how
  many of the day's human answers agreed with earlier human answers to the same task, item by item.

``record`` runs inside ``queries.add_judgment``, in the judgment's transaction; the figures themselves come from
the pure functions ``task_figures`` and ``agreement_with_earlier`` (also used by migration 0004's backfill), and
``recount`` computes the same figures from scratch (for the tests).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import bindparam, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from alignloop.core.db import run
from alignloop.feedback import agreement as agr
from alignloop.feedback import consensus as cons
from alignloop.feedback.models import (
    DailyActivity,
    GoldAnswer,
    GoldMiss,
    Judgment,
    Labeler,
    Project,
    Task,
    TaskTally,
)

DAY_FIELDS = ("judgments", "skips", "other_judgments", "compared", "agreeing")


# --------------------------------------------------------------------------------------------------
# The figures (pure: judgments or look-alikes with task_id, labeler_id, choice, ranking, ratings, skipped)
# --------------------------------------------------------------------------------------------------


def task_figures(task_type: str, judgments: Sequence[Any], gold_answer: dict | None) -> dict:
    """A task's tally from all its judgments: answers, skips, agreement, and the ids of answers that missed the
    gold answer (a gold task's)."""
    answers = [j for j in judgments if not j.skipped]
    units, scale = agr.units_from_judgments(answers, task_type)
    misses = []
    if gold_answer is not None:
        misses = [j.id for j in answers if cons.gold_correct(task_type, j, gold_answer) is False]
    return {"judgments": len(answers), "skips": len(judgments) - len(answers),
            "agreement": agr.percent_agreement(units) if scale != "none" else None, "gold_miss_ids": misses}


def agreement_with_earlier(task_type: str, new: Any, earlier: Iterable[Any]) -> tuple[int, int]:
    """(compared, agreeing): the new answer's items (a choice, a completion's rank, a criterion's rating) against
    the same items of each earlier answer. Summed over a task's answers in order, these count every pair of
    answers once, so a day's ``agreeing / compared`` is the percent agreement of that day's answers with what
    came before them."""
    mine = {item: value for item, _, value in agr.units_from_judgments([new], task_type)[0]}
    compared = agreeing = 0
    for other in earlier:
        for item, _, value in agr.units_from_judgments([other], task_type)[0]:
            if item in mine:
                compared += 1
                agreeing += value == mine[item]
    return compared, agreeing


def day_of(when: dt.datetime) -> dt.date:
    return when.date()  # timestamps are naive UTC throughout (``core.db.utcnow``)


def add_task_to_days(days: dict[Any, dict[str, int]], task_type: str, rows: Sequence[Any],
                     kind_of: Callable[[Any], str | None], key: Callable[[Any], Any]) -> None:
    """Add one task's answers ``rows`` (in the order they came) to per-day counts ``days[key(answer)]`` (a
    ``defaultdict`` of :data:`DAY_FIELDS`): other labelers' answers, people's skips and answers, and how many items
    of each human answer agreed with the earlier human answers. What ``record`` adds one answer at a time, for a
    whole task at once (``recount``, ``record_imported``, migration 0004's backfill)."""
    for i, j in enumerate(rows):
        day = days[key(j)]
        if kind_of(j) != "human":
            day["other_judgments"] += not j.skipped
        elif j.skipped:
            day["skips"] += 1
        else:
            day["judgments"] += 1
            earlier = [r for r in rows[:i] if not r.skipped and kind_of(r) == "human"]
            c, a = agreement_with_earlier(task_type, j, earlier)
            day["compared"] += c
            day["agreeing"] += a


# --------------------------------------------------------------------------------------------------
# Kept with each judgment
# --------------------------------------------------------------------------------------------------


def record(s: Session, j: Judgment, task: Task) -> None:
    """Bring the task's tally, the gold misses and the day's activity up to date with the judgment ``j`` (flushed,
    in this transaction). Three statements on a regular task, built once (this runs inside every submit, under
    SQLite's write lock): the task's judgments with their labelers' kinds, and two upserts."""
    dialect = s.get_bind().dialect.name
    st = _statements(dialect)
    if dialect == "postgresql":
        # two labelers submitting to one task at once would each count without the other's judgment; the row
        # lock makes the second wait for the first's commit, and its next statement sees that judgment (read
        # committed). FOR NO KEY UPDATE, not FOR UPDATE: each has already taken a KEY SHARE lock on the task by
        # inserting a judgment that references it, and two FOR UPDATE requests would each wait for the other's
        # KEY SHARE (a deadlock; test_answers_to_one_task_at_once_are_all_counted). SQLite has one writer at a
        # time anyway.
        run(s, st["lock"], {"task_id": task.id})
    rows = run(s, st["judgments"], {"task_id": task.id}).all()
    gold = s.scalar(select(GoldAnswer.answer).where(GoldAnswer.task_id == task.id)) if task.is_gold else None
    fig = task_figures(task.task_type, rows, gold)
    s.execute(st["tally"], {"task_id": task.id, "project_id": task.project_id, "judgments": fig["judgments"],
                            "skips": fig["skips"], "agreement": fig["agreement"],
                            "gold_misses": len(fig["gold_miss_ids"]), "last_judged_at": j.created_at})
    if j.id in fig["gold_miss_ids"]:
        s.execute(GoldMiss.__table__.insert(), {"judgment_id": j.id, "project_id": task.project_id,
                                                "task_id": task.id, "labeler_id": j.labeler_id})

    kind = next(r.kind for r in rows if r.id == j.id)
    add = dict.fromkeys(DAY_FIELDS, 0)
    if kind != "human":
        add["other_judgments"] = 0 if j.skipped else 1
    elif j.skipped:
        add["skips"] = 1
    else:
        add["judgments"] = 1
        # every other answer there is now (after the lock: every one committed before), whatever its id: on
        # PostgreSQL ids are drawn before commit, so a smaller id may commit later; each pair of answers is then
        # counted once, by whichever of the two is counted second
        earlier = [r for r in rows if r.id != j.id and not r.skipped and r.kind == "human"]
        add["compared"], add["agreeing"] = agreement_with_earlier(task.task_type, j, earlier)
    # one atomic upsert: two first judgments of a day on PostgreSQL would otherwise both insert the day's row
    s.execute(st["day"], {"project_id": task.project_id, "day": day_of(j.created_at), **add})


_built: dict[str, dict[str, Any]] = {}


def _statements(dialect: str) -> dict[str, Any]:
    """``record``'s statements, built once per back-end (building them cost more than running them)."""
    if dialect not in _built:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        tally, day = TaskTally.__table__, DailyActivity.__table__
        t_ins, d_ins = insert(tally), insert(day)
        _built[dialect] = {
            "lock": select(Task.id).where(Task.id == bindparam("task_id")).with_for_update(key_share=True),
            "judgments": select(Judgment.id, Judgment.task_id, Judgment.labeler_id, Judgment.choice,
                                Judgment.ranking, Judgment.ratings, Judgment.skipped, Labeler.kind)
            .join(Labeler, Labeler.id == Judgment.labeler_id)
            .where(Judgment.task_id == bindparam("task_id")).order_by(Judgment.id),
            "tally": t_ins.on_conflict_do_update(
                index_elements=["task_id"], set_={k: t_ins.excluded[k] for k in (
                    "judgments", "skips", "agreement", "gold_misses", "last_judged_at")}),
            "day": d_ins.on_conflict_do_update(index_elements=["project_id", "day"],
                                               set_={k: day.c[k] + d_ins.excluded[k] for k in DAY_FIELDS}),
        }
    return _built[dialect]


# --------------------------------------------------------------------------------------------------
# From scratch
# --------------------------------------------------------------------------------------------------


def _figures(s: Session, task_filter: Any) -> dict:
    """Tallies, gold misses and day counts of the tasks ``task_filter`` selects (a where-clause on ``Task``),
    computed from their judgments alone, in the shape ``stored`` reads them. Plain rows, not objects (an import's
    100,000 judgments loaded as objects cost a fifth of the import)."""
    task_types = dict(run(s, select(Task.id, Task.task_type).where(task_filter)).all())
    gold = dict(run(s, select(GoldAnswer.task_id, GoldAnswer.answer).join(Task, Task.id == GoldAnswer.task_id)
                    .where(task_filter)).all())
    kinds = dict(run(s, select(Labeler.id, Labeler.kind)).all())
    by_task: dict[int, list[Any]] = defaultdict(list)
    for j in run(s, select(Judgment.id, Judgment.task_id, Judgment.labeler_id, Judgment.choice, Judgment.ranking,
                           Judgment.ratings, Judgment.skipped, Judgment.created_at)
                 .join(Task, Task.id == Judgment.task_id).where(task_filter).order_by(Judgment.id)):
        by_task[j.task_id].append(j)
    tallies, misses, last = {}, set(), {}
    days: dict[dt.date, dict[str, int]] = defaultdict(lambda: dict.fromkeys(DAY_FIELDS, 0))
    for tid, rows in by_task.items():
        fig = task_figures(task_types[tid], rows, gold.get(tid))
        tallies[tid] = (fig["judgments"], fig["skips"], fig["agreement"], len(fig["gold_miss_ids"]))
        last[tid] = max(j.created_at for j in rows)
        misses |= {(tid, j.labeler_id, j.id) for j in rows if j.id in fig["gold_miss_ids"]}
        add_task_to_days(days, task_types[tid], rows, lambda j: kinds[j.labeler_id], lambda j: day_of(j.created_at))
    return {"tallies": tallies, "gold_misses": misses, "days": dict(days), "last": last}


def recount(s: Session, project: Project) -> dict:
    """The project's tallies, gold misses and daily activity computed from its judgments alone, in the shape
    ``stored`` reads them (what ``record`` must have kept)."""
    fig = _figures(s, Task.project_id == project.id)
    return {"tallies": fig["tallies"], "gold_misses": {(t, lab) for t, lab, _ in fig["gold_misses"]},
            "days": fig["days"]}


def record_imported(s: Session, project: Project, task_ids: Sequence[int]) -> None:
    """Bring the figures up to date with the judgments an import wrote straight into new tasks ``task_ids``
    (``io``'s bulk insert bypasses ``record``): their tallies and gold misses inserted at once, the days' counts
    added with ``record``'s upsert. The tasks are new, so nothing of theirs was counted before."""
    if not task_ids:
        return
    fig = _figures(s, Task.id.in_(list(task_ids)))
    if fig["tallies"]:
        s.execute(TaskTally.__table__.insert(), [
            {"task_id": t, "project_id": project.id, "judgments": n, "skips": k, "agreement": a, "gold_misses": m,
             "last_judged_at": fig["last"][t]} for t, (n, k, a, m) in fig["tallies"].items()])
    if fig["gold_misses"]:
        s.execute(GoldMiss.__table__.insert(), [
            {"judgment_id": j, "project_id": project.id, "task_id": t, "labeler_id": lab}
            for t, lab, j in fig["gold_misses"]])
    st = _statements(s.get_bind().dialect.name)
    for day, add in fig["days"].items():
        s.execute(st["day"], {"project_id": project.id, "day": day, **add})


def stored(s: Session, project: Project) -> dict:
    """What ``record`` kept for the project, in ``recount``'s shape."""
    tallies = {t.task_id: (t.judgments, t.skips, t.agreement, t.gold_misses)
               for t in s.scalars(select(TaskTally).where(TaskTally.project_id == project.id))}
    misses = {(m.task_id, m.labeler_id) for m in s.scalars(select(GoldMiss).where(GoldMiss.project_id == project.id))}
    days = {d.day: {k: getattr(d, k) for k in DAY_FIELDS}
            for d in s.scalars(select(DailyActivity).where(DailyActivity.project_id == project.id))}
    return {"tallies": tallies, "gold_misses": misses, "days": days}

