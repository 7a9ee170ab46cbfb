"""What a lead needs at scale: finding tasks (by agreement, labeler, gold failure, words), the review queue of
disputed tasks, deciding them (an adjudication), a labeler's history and the project's activity over time.

Every list is a page of at most ``MAX_PAGE`` rows with a cursor to the next (keyset pagination: the cursor is
where the page ended, so page 1,000 costs what page 1 does), read through indexes: per-task figures come from
``task_tallies`` and gold failures from ``gold_misses`` (both kept by ``tallies`` with each judgment), words from
the search index (``search``), a labeler's judgments from their index. Nothing here reads a whole project.

An adjudication is the lead's decision on a task: it becomes the task's consensus whatever the method
(``consensus.decided``, read by ``queries.ProjectData``, so exports and figures follow it), and it is not a
judgment, so agreement figures, labelers' records and gold accuracy never count it.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, exists, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from alignloop.feedback import consensus as cons
from alignloop.feedback import search
from alignloop.feedback.accounts import audit
from alignloop.feedback.errors import Conflict, Invalid, NotFound
from alignloop.feedback.models import (
    Adjudication,
    Completion,
    DailyActivity,
    GoldAnswer,
    GoldMiss,
    Judgment,
    Labeler,
    Project,
    Prompt,
    Task,
    TaskTally,
    utcnow,
)
from alignloop.feedback.queries import MAX_TEXT, Answer, validate_answer

MAX_PAGE = 200
PREVIEW = 160  # characters of a prompt shown in a list
LETTERS = "ABCDEFGHIJKLMNOP"
MAX_DAYS = 366


@dataclass
class TaskFilter:
    """Which tasks of a project to list; every field given must hold."""

    text: str | None = None  # every word, as a prefix, in the prompt or an answer
    labeler: str | None = None  # judged (or skipped) by this labeler
    min_agreement: float | None = None  # the task's agreement (share of agreeing pairs of answers), inclusive
    max_agreement: float | None = None
    disputed: bool = False  # 2+ answers that do not all agree
    gold_failed: bool = False  # a gold task someone (``labeler``, when given) answered wrong
    gold: bool | None = None  # only gold tasks (True) or only regular ones (False)
    decided: bool | None = None  # with (True) or without (False) a lead's decision

    def by_agreement(self) -> bool:
        return self.disputed or self.min_agreement is not None or self.max_agreement is not None


def check_filter(f: TaskFilter) -> None:
    for name in ("min_agreement", "max_agreement"):
        v = getattr(f, name)
        if v is not None and not 0 <= v <= 1:
            raise Invalid("must be a number from 0 to 1", field=name)
    if f.min_agreement is not None and f.max_agreement is not None and f.min_agreement > f.max_agreement:
        raise Invalid("is above max_agreement", field="min_agreement")
    if f.text is not None:
        search.words_of(f.text)


def _page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise Invalid(f"must be from 1 to {MAX_PAGE}", field="limit")
    return limit


def _labeler(s: Session, name: str) -> Labeler:
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is None:
        raise NotFound(f"no labeler named '{name}'", field="labeler")
    return lab


# --------------------------------------------------------------------------------------------------
# Finding tasks
# --------------------------------------------------------------------------------------------------


def _cursor(by_agreement: bool, after: str | None) -> tuple[float, int] | int | None:
    if not after:
        return None
    try:
        if by_agreement:
            a, t = after.split(":")
            return float(a), int(t)
        return int(after)
    except ValueError:
        raise Invalid("is not a cursor this list gave out (use the 'next' of the previous page)",
                      field="after") from None


def find_tasks(s: Session, project: Project, f: TaskFilter, limit: int = 50, after: str | None = None) -> dict:
    """A page of the project's tasks that pass ``f``: in task order, or lowest agreement first when the filter is
    on agreement. ``after``: the previous page's ``next``. The text filter reads the search index as it is: run
    ``search.catch_up`` first (the API does)."""
    check_filter(f)
    limit = _page_size(limit)
    by_agreement = f.by_agreement()
    cursor = _cursor(by_agreement, after)
    lab = _labeler(s, f.labeler) if f.labeler else None
    words = search.words_of(f.text) if f.text is not None else None
    dialect = s.get_bind().dialect.name
    # plain columns, not ORM objects: a page is read, never changed, and building objects was most of its time
    cols = (Task.id, Task.seq, Task.is_gold, Task.prompt_id, Task.completion_ids, TaskTally.judgments,
            TaskTally.skips, TaskTally.agreement, TaskTally.gold_misses)
    # The query is driven by the index that gives the page's order, so that a page reads about as many index
    # entries as it shows (and the other filters are probes of their own indexes), not a list of every match:
    # the (project_id, agreement, task_id) index of the tallies, the labeler's (labeler_id, task_id) index of
    # judgments, the text index (SQLite's gives its matches in task order), or the tasks themselves.
    if by_agreement:
        driver, key = "tallies", TaskTally.task_id
        q = (select(*cols).select_from(TaskTally).join(Task, Task.id == TaskTally.task_id)
             .where(TaskTally.project_id == project.id, TaskTally.agreement.is_not(None)))
        if f.min_agreement is not None:
            q = q.where(TaskTally.agreement >= f.min_agreement)
        if f.max_agreement is not None:
            q = q.where(TaskTally.agreement <= f.max_agreement)
        if f.disputed:
            q = q.where(TaskTally.agreement < 1)
    elif lab is not None:
        driver, key = "labeler", Judgment.task_id
        q = (select(*cols).select_from(Judgment).join(Task, Task.id == Judgment.task_id)
             .outerjoin(TaskTally, TaskTally.task_id == Task.id).where(Judgment.labeler_id == lab.id))
    elif words is not None and dialect == "sqlite":
        index = search.sqlite_index()
        driver, key = "words", index.c.rowid
        q = (select(*cols).select_from(index).join(Task, Task.id == index.c.rowid)
             .outerjoin(TaskTally, TaskTally.task_id == Task.id).where(search.sqlite_match(words)))
        words = None  # (done)
    else:
        driver, key = "tasks", Task.id
        q = select(*cols).select_from(Task).outerjoin(TaskTally, TaskTally.task_id == Task.id)
    q = q.where(Task.project_id == project.id)
    if lab is not None and driver != "labeler":
        q = q.where(exists().where(Judgment.task_id == key, Judgment.labeler_id == lab.id))
    if f.gold_failed:
        if driver == "labeler":  # the labeler's own miss: a look-up by the judgment
            missed = exists().where(GoldMiss.judgment_id == Judgment.id)
        else:
            missed = exists().where(GoldMiss.project_id == project.id, GoldMiss.task_id == key)
            if lab is not None:
                missed = missed.where(GoldMiss.labeler_id == lab.id)
        q = q.where(missed)
    if f.gold is not None:
        q = q.where(Task.is_gold.is_(f.gold))
    if f.decided is not None:
        decided = exists().where(Adjudication.task_id == key)
        q = q.where(decided if f.decided else ~decided)
    if words is not None:
        q = q.where(Task.id.in_(search.matching_ids(dialect, words)))
    if by_agreement:
        if cursor is not None:
            a, t = cursor
            q = q.where((TaskTally.agreement > a) | ((TaskTally.agreement == a) & (key > t)))
        q = q.order_by(TaskTally.agreement, key)
    else:
        if cursor is not None:
            q = q.where(key > cursor)
        q = q.order_by(key)
    rows = s.execute(q.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = None
    if more:
        last = rows[-1]
        nxt = f"{last.agreement!r}:{last.id}" if by_agreement else str(last.id)
    return {"tasks": task_rows(s, project, rows), "next": nxt}


def task_rows(s: Session, project: Project, rows: list[Any]) -> list[dict]:
    """A list's rows (``find_tasks``' columns): the task's figures, a preview of its prompt and its consensus
    now (majority, or the lead's decision)."""
    ids = [r.id for r in rows]
    prompts = dict(s.execute(select(Prompt.id, Prompt.prompt).where(Prompt.id.in_({r.prompt_id for r in rows}))).all())
    judged = _judgments_of(s, ids, columns=True)
    decisions = {a.task_id: a for a in s.execute(select(Adjudication.task_id, Adjudication.choice,
                                                        Adjudication.ranking, Adjudication.ratings)
                                                 .where(Adjudication.task_id.in_(ids)))}
    out = []
    for r in rows:
        answers = [j for j in judged[r.id] if not j.skipped]
        c = _consensus(project, answers, decisions.get(r.id))
        out.append({"task_id": r.id, "seq": r.seq, "is_gold": r.is_gold,
                    "prompt_preview": preview(prompts[r.prompt_id]), "judgments": r.judgments or 0,
                    "skips": r.skips or 0, "agreement": r.agreement,
                    "gold_misses": r.gold_misses or 0, "decided": r.id in decisions, "consensus": c["label"],
                    "consensus_text": label_text(project.task_type, r.completion_ids, c["label"])})
    return out


def _judgments_of(s: Session, task_ids: list[int], columns: bool = False) -> dict[int, list[Any]]:
    """The judgments of these tasks, in order; ``columns``: only what a consensus needs, as plain rows."""
    out: dict[int, list[Any]] = defaultdict(list)
    if columns:
        q = select(Judgment.id, Judgment.task_id, Judgment.labeler_id, Judgment.choice, Judgment.ranking,
                   Judgment.ratings, Judgment.skipped)
        found = s.execute(q.where(Judgment.task_id.in_(task_ids)).order_by(Judgment.id))
    else:
        found = s.scalars(select(Judgment).where(Judgment.task_id.in_(task_ids)).order_by(Judgment.id))
    for j in found:
        out[j.task_id].append(j)
    return out


def _consensus(project: Project, answers: list[Judgment], decision: Adjudication | None) -> dict:
    if decision is not None:
        return cons.decided(project.task_type, decision, len(answers))
    return cons.task_consensus(project.task_type, answers, "majority", criteria=project.criteria)


def label_text(task_type: str, completion_ids: list[int], label: Any) -> str:
    """A consensus label or an answer in the lead's words: canonical letters ("A" is the task's first
    completion), "B > A > C" for a ranking, each answer's mean rating for ratings; "no consensus" for a tie."""
    if label is None:
        return "no consensus"
    letter = {str(cid): LETTERS[i] for i, cid in enumerate(completion_ids)}
    if task_type in ("pairwise", "binary"):
        return str(label).replace("_", " ")
    if task_type == "ranking":
        return " > ".join(letter.get(str(c), str(c)) for c in label)
    if task_type == "rating":
        means = {c: sum(v.values()) / len(v) for c, v in label.items() if v}
        return " · ".join(f"{letter.get(str(c), str(c))} {m:.1f}" for c, m in sorted(means.items(), key=lambda kv:
                                                                                 letter.get(str(kv[0]), "")))
    return str(label)


def answer_text(task_type: str, completion_ids: list[int], j: Any) -> str:
    """A judgment's answer in the lead's words (``label_text``), with its strength; a skip with its reason."""
    if j.skipped:
        return f"skipped: {j.skip_reason}"
    if task_type == "rewrite":
        return preview(j.rewrite)
    value = {"pairwise": j.choice, "binary": j.choice, "ranking": j.ranking, "rating": j.ratings}.get(task_type)
    text = label_text(task_type, completion_ids, value)
    return f"{text} ({j.strength.replace('_', ' ')})" if getattr(j, "strength", None) else text


def text_of(value: Any) -> str:
    """A prompt or an answer (text, or a list of messages) as plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n\n".join(str(m.get("content", "")) if isinstance(m, dict) else str(m) for m in value)
    return "" if value is None else str(value)


def preview(value: Any) -> str:
    t = " ".join(text_of(value).split())
    return t if len(t) <= PREVIEW else t[:PREVIEW - 1] + "…"


# --------------------------------------------------------------------------------------------------
# One task in full, and the review queue
# --------------------------------------------------------------------------------------------------


def task_of(s: Session, project: Project, task_id: int) -> Task:
    task = s.get(Task, task_id)
    if task is None or task.project_id != project.id:
        raise NotFound(f"no task {task_id} in project '{project.name}'", field="task_id")
    return task


def task_details(s: Session, project: Project, tasks: list[Task]) -> list[dict]:
    """Everything a lead decides on, for each task: the prompt, the answers in the task's canonical order (A is
    the first; model names left out, so the decision is blind), every judgment with its labeler, the figures,
    the consensus now and the decision, if any."""
    ids = [t.id for t in tasks]
    prompts = {p.id: p for p in s.scalars(select(Prompt).where(Prompt.id.in_({t.prompt_id for t in tasks})))}
    comp_ids = {c for t in tasks for c in t.completion_ids}
    texts = dict(s.execute(select(Completion.id, Completion.text).where(Completion.id.in_(comp_ids))).all())
    judged = _judgments_of(s, ids)
    names = dict(s.execute(select(Labeler.id, Labeler.name).where(
        Labeler.id.in_({j.labeler_id for js in judged.values() for j in js}))).all())
    kinds = dict(s.execute(select(Labeler.id, Labeler.kind).where(Labeler.id.in_(names))).all())
    decisions = {a.task_id: a for a in s.scalars(select(Adjudication).where(Adjudication.task_id.in_(ids)))}
    deciders = dict(s.execute(select(Labeler.id, Labeler.name).where(
        Labeler.id.in_({a.labeler_id for a in decisions.values() if a.labeler_id}))).all())
    tallies = {t.task_id: t for t in s.scalars(select(TaskTally).where(TaskTally.task_id.in_(ids)))}
    gold = {g.task_id: g.answer for g in s.scalars(select(GoldAnswer).where(GoldAnswer.task_id.in_(ids)))}
    missed = set(s.scalars(select(GoldMiss.judgment_id).where(GoldMiss.task_id.in_(ids))))
    out = []
    for t in tasks:
        prompt = prompts[t.prompt_id]
        js = judged[t.id]
        answers = [j for j in js if not j.skipped]
        tally = tallies.get(t.id)
        d = decisions.get(t.id)
        consensus = _consensus(project, answers, d)
        out.append({
            "task_id": t.id, "seq": t.seq, "task_type": t.task_type, "is_gold": t.is_gold,
            "prompt": prompt.prompt, "context": prompt.context,
            "completions": [{"id": cid, "label": LETTERS[i], "text": texts[cid]}
                            for i, cid in enumerate(t.completion_ids)],
            "judgments": [{"id": j.id, "labeler": names[j.labeler_id], "kind": kinds[j.labeler_id],
                           "choice": j.choice, "strength": j.strength, "ranking": j.ranking, "ratings": j.ratings,
                           "flags": j.flags, "rewrite": j.rewrite, "skipped": j.skipped, "skip_reason": j.skip_reason,
                           "gold_missed": j.id in missed, "created_at": iso(j.created_at),
                           "answer_text": answer_text(t.task_type, t.completion_ids, j)} for j in js],
            "judgments_count": len(answers), "overlap": project.overlap,
            "agreement": tally.agreement if tally else None,
            "consensus": consensus,
            "consensus_text": label_text(t.task_type, t.completion_ids, consensus["label"]),
            "decision": decision_view(d, deciders) if d else None,
            "gold": gold.get(t.id)})
    return out


def decision_view(d: Adjudication, deciders: dict[int, str]) -> dict:
    return {"choice": d.choice, "ranking": d.ranking, "ratings": d.ratings, "note": d.note,
            "by": deciders.get(d.labeler_id) if d.labeler_id else None, "decided_at": iso(d.updated_at)}


def review_queue(s: Session, project: Project, status: str = "open", max_agreement: float | None = None,
                 limit: int = 20, after: str | None = None) -> dict:
    """Disputed tasks, lowest agreement first: ``open`` ones (no decision yet; gold tasks have their answer and
    are not here) or ``decided`` ones. ``max_agreement``: only tasks at or below it (default: any disagreement)."""
    if status not in ("open", "decided"):
        raise Invalid("must be 'open' or 'decided'", field="status")
    f = TaskFilter(disputed=True, max_agreement=max_agreement, gold=False, decided=status == "decided")
    page = find_tasks(s, project, f, limit, after)
    found = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_([r["task_id"] for r in page["tasks"]])))}
    tasks = [found[r["task_id"]] for r in page["tasks"]]
    return {"status": status, "tasks": task_details(s, project, tasks), "next": page["next"]}


# --------------------------------------------------------------------------------------------------
# Deciding
# --------------------------------------------------------------------------------------------------


def adjudicate(s: Session, project: Project, task_id: int, lead: Labeler, choice: str | None = None,
               ranking: list | None = None, ratings: dict | None = None, note: str = "",
               now: dt.datetime | None = None, client: str = "") -> Adjudication:
    """Record the lead's decision on a task (replacing an earlier one). The answer is checked like a judgment's
    (``queries.validate_answer``), in the task's canonical terms ("A" is its first completion). The audit log
    records it (``adjudication.set``: who, which task, the decision; ``client`` is the lead's address)."""
    task = task_of(s, project, task_id)
    if task.is_gold:
        raise Conflict("a gold task's answer is its gold answer; it takes no decision", field="task_id")
    if task.task_type == "rewrite":
        raise Invalid("rewrite tasks have no consensus to decide (their answers are texts)", field="task_id")
    if note is None or not isinstance(note, str):
        raise Invalid("must be text", field="note")
    if len(note) > MAX_TEXT:
        raise Invalid(f"is {len(note)} characters; the limit is {MAX_TEXT}", field="note")
    if not s.scalar(select(exists().where(Judgment.task_id == task.id, Judgment.skipped.is_(False)))):
        raise Conflict("nobody has answered this task yet; there is nothing to decide", field="task_id")
    answer = validate_answer(task, project, Answer(choice=choice, ranking=ranking, ratings=ratings))
    now = now or utcnow()
    fields = {"labeler_id": lead.id, "choice": answer.choice, "ranking": answer.ranking, "ratings": answer.ratings,
              "note": note, "updated_at": now}
    audit(s, "adjudication.set", lead.name, f"task:{task.id}", client, project=project.name,
          **{k: fields[k] for k in ("choice", "ranking", "ratings") if fields[k] is not None})
    row = s.scalar(select(Adjudication).where(Adjudication.task_id == task.id))
    if row is None:
        row = Adjudication(project_id=project.id, task_id=task.id, created_at=now, **fields)
        try:
            with s.begin_nested():  # two leads deciding at once: the second replaces the first
                s.add(row)
                s.flush()
            return row
        except IntegrityError:
            row = s.scalar(select(Adjudication).where(Adjudication.task_id == task.id))
    for k, v in fields.items():
        setattr(row, k, v)
    s.flush()
    return row


def withdraw(s: Session, project: Project, task_id: int, actor: str = "", client: str = "") -> None:
    """Take the lead's decision back: the task's consensus is the labelers' again (audited as
    ``adjudication.withdraw`` by ``actor``)."""
    task = task_of(s, project, task_id)
    row = s.scalar(select(Adjudication).where(Adjudication.task_id == task.id))
    if row is None:
        raise NotFound(f"task {task_id} has no decision", field="task_id")
    s.delete(row)
    audit(s, "adjudication.withdraw", actor, f"task:{task.id}", client, project=project.name)


# --------------------------------------------------------------------------------------------------
# A labeler's history
# --------------------------------------------------------------------------------------------------


def labeler_history(s: Session, project: Project, name: str, limit: int = 50, after: str | None = None) -> dict:
    """A labeler's judgments in the project, newest first, each with how it compares: with the majority of the
    task's other labelers (None when they tie or there are none), with the lead's decision, with the gold
    answer; and their totals."""
    lab = _labeler(s, name)
    limit = _page_size(limit)
    cursor = _cursor(False, after)
    q = (select(Judgment).join(Task, Task.id == Judgment.task_id)
         .where(Judgment.labeler_id == lab.id, Task.project_id == project.id))
    if cursor is not None:
        q = q.where(Judgment.id < cursor)
    rows = list(s.scalars(q.order_by(Judgment.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    ids = list({j.task_id for j in rows})
    tasks = {t.id: t for t in s.scalars(select(Task).where(Task.id.in_(ids)))}
    judged = _judgments_of(s, ids, columns=True)
    decisions = {a.task_id: a for a in s.scalars(select(Adjudication).where(Adjudication.task_id.in_(ids)))}
    missed = set(s.scalars(select(GoldMiss.judgment_id).where(GoldMiss.judgment_id.in_([j.id for j in rows]))))
    t = project.task_type
    items = []
    for j in rows:
        others = [o for o in judged[j.task_id] if o.labeler_id != lab.id and not o.skipped]
        d = decisions.get(j.task_id)
        items.append({
            "judgment_id": j.id, "task_id": j.task_id, "is_gold": tasks[j.task_id].is_gold,
            "created_at": iso(j.created_at), "duration_ms": j.duration_ms, "guideline_version": j.guideline_version,
            "choice": j.choice, "strength": j.strength, "ranking": j.ranking, "ratings": j.ratings,
            "rewrite": j.rewrite, "skipped": j.skipped, "skip_reason": j.skip_reason,
            "answer_text": answer_text(t, tasks[j.task_id].completion_ids, j),
            "matches_others": None if j.skipped else _matches_majority(t, j, others),
            "matches_decision": None if j.skipped or d is None else _same(t, j, cons.decided(t, d, 0)["label"]),
            "gold_missed": j.id in missed if tasks[j.task_id].is_gold and not j.skipped else None})
    totals = s.execute(select(func.count(), func.sum(case((Judgment.skipped.is_(True), 1), else_=0)),
                              func.min(Judgment.created_at), func.max(Judgment.created_at))
                       .select_from(Judgment).join(Task, Task.id == Judgment.task_id)
                       .where(Judgment.labeler_id == lab.id, Task.project_id == project.id)).one()
    gold_answered = s.scalar(select(func.count()).select_from(Judgment).join(Task, Task.id == Judgment.task_id).where(
        Judgment.labeler_id == lab.id, Task.project_id == project.id, Task.is_gold.is_(True),
        Judgment.skipped.is_(False))) or 0
    gold_missed = s.scalar(select(func.count()).select_from(GoldMiss).where(
        GoldMiss.labeler_id == lab.id, GoldMiss.project_id == project.id)) or 0
    n, skips = totals[0] or 0, int(totals[1] or 0)
    return {"labeler": {"name": lab.name, "kind": lab.kind, "active": lab.active},
            "totals": {"judgments": n - skips, "skips": skips, "first": iso(totals[2]), "last": iso(totals[3]),
                       "gold": {"answered": gold_answered, "missed": gold_missed,
                                "accuracy": round(1 - gold_missed / gold_answered, 4) if gold_answered else None}},
            "judgments": items, "next": str(rows[-1].id) if more else None}


def _value(task_type: str, j: Any) -> Any:
    if task_type in ("pairwise", "binary"):
        return j.choice
    if task_type == "ranking":
        return j.ranking[0] if j.ranking else None  # the completion put first, as agreement_with_consensus does
    return None


def _matches_majority(task_type: str, j: Judgment, others: list[Judgment]) -> bool | None:
    if task_type not in ("pairwise", "binary", "ranking") or not others:
        return None
    label, _ = cons.vote([_value(task_type, o) for o in others])
    return None if label is None else _value(task_type, j) == label


def _same(task_type: str, j: Judgment, label: Any) -> bool | None:
    if task_type in ("pairwise", "binary"):
        return j.choice == label
    if task_type == "ranking":
        return j.ranking == label
    if task_type == "rating":
        return j.ratings == label
    return None


# --------------------------------------------------------------------------------------------------
# Over time
# --------------------------------------------------------------------------------------------------


def activity(s: Session, project: Project, days: int = 30, today: dt.date | None = None) -> list[dict]:
    """The last ``days`` UTC days (today included, none left out): people's judgments and skips, other
    labelers' judgments, and the agreement of the day's human answers with earlier human answers to the same
    tasks (None on a day with nothing to compare)."""
    if not 1 <= days <= MAX_DAYS:
        raise Invalid(f"must be from 1 to {MAX_DAYS}", field="days")
    today = today or utcnow().date()
    first = today - dt.timedelta(days=days - 1)
    stored = {r.day: r for r in s.scalars(select(DailyActivity).where(
        DailyActivity.project_id == project.id, DailyActivity.day >= first, DailyActivity.day <= today))}
    out = []
    for i in range(days):
        day = first + dt.timedelta(days=i)
        r = stored.get(day)
        out.append({"day": day.isoformat(), "judgments": r.judgments if r else 0, "skips": r.skips if r else 0,
                    "other_judgments": r.other_judgments if r else 0, "compared": r.compared if r else 0,
                    "agreement": round(r.agreeing / r.compared, 4) if r and r.compared else None})
    return out


def iso(when: dt.datetime | None) -> str | None:
    return when.isoformat() + "Z" if when else None
