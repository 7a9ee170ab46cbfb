"""The studio's queries: projects, labelers and judgments, with the validation that keeps bad input out.

Python API (no HTTP needed; used by the AI judge, the serving feedback capture and the tests)::

    db = open_db("sqlite:///labels.db")            # runs migrations on first use
    with db.write() as s:
        judge = get_or_create_labeler(s, "judge:qwen", kind="ai", identity="qwen2.5-7b")
        add_judgment(s, task_id, judge, choice="A")

(``alignloop.feedback.store`` re-exports every name here, in ``models`` and in ``errors``.)
"""

from __future__ import annotations

import datetime as dt
import functools
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, union_all
from sqlalchemy.orm import Session

from alignloop.core.db import run
from alignloop.feedback import assign, auth, tallies
from alignloop.feedback import consensus as cons
from alignloop.feedback.errors import Conflict, Invalid, NotFound
from alignloop.feedback.models import (
    BINARY_CHOICES,
    LABELER_KINDS,
    PAIRWISE_CHOICES,
    ROLES,
    STRENGTHS,
    TASK_TYPES,
    Adjudication,
    Assignment,
    Completion,
    GoldAnswer,
    GuidelineVersion,
    Judgment,
    Labeler,
    Project,
    Prompt,
    Task,
    utcnow,
)

MAX_TEXT = 20_000  # characters of a written answer, a skip reason or a note; longer is refused, never cut
MAX_COMPLETIONS = 16


# --------------------------------------------------------------------------------------------------
# Projects and labelers
# --------------------------------------------------------------------------------------------------


def get_project(s: Session, name: str) -> Project:
    p = s.scalar(select(Project).where(Project.name == name))
    if p is None:
        raise NotFound(f"no project named '{name}'", field="project")
    return p


PROJECT_FIELDS = ("task_type", "criteria", "flags", "scale", "overlap", "gold_rate", "order", "lease_minutes",
                  "admin_only")


def check_project_settings(settings: dict[str, Any]) -> list[str]:
    p = []
    if "task_type" in settings and settings["task_type"] not in TASK_TYPES:
        p.append(f"task_type: '{settings['task_type']}' is not one of {', '.join(TASK_TYPES)}")
    if "order" in settings and settings["order"] not in ("import", "uncertainty"):
        p.append("order: must be 'import' or 'uncertainty'")
    for name, lo, hi in (("overlap", 1, 100), ("scale", 2, 11), ("lease_minutes", 1, 10_080)):
        v = settings.get(name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi):
            p.append(f"{name}: must be an integer from {lo} to {hi}")
    g = settings.get("gold_rate")
    if g is not None and (not isinstance(g, (int, float)) or not 0 <= g <= 1):
        p.append("gold_rate: must be a number from 0 to 1")
    if settings.get("admin_only") is not None and not isinstance(settings["admin_only"], bool):
        p.append("admin_only: must be true or false")
    for name in ("criteria", "flags"):
        v = settings.get(name)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) and x for x in v)):
            p.append(f"{name}: must be a list of names")
    return p


def _refuse_bad_settings(settings: dict[str, Any]) -> None:
    problems = check_project_settings(settings) + [f"{k}: unknown setting" for k in settings if k not in PROJECT_FIELDS]
    if problems:
        raise Invalid("; ".join(problems))


def create_project(s: Session, name: str, guidelines: str = "", content_warning: str = "", **settings: Any) -> Project:
    if not name or len(name) > 200:
        raise Invalid("a project needs a name of 1 to 200 characters", field="name")
    if s.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"a project named '{name}' already exists", field="name")
    _refuse_bad_settings(settings)
    project = Project(name=name, guidelines=guidelines, content_warning=content_warning,
                      **{k: v for k, v in settings.items() if v is not None})
    s.add(project)
    s.flush()
    s.add(GuidelineVersion(project_id=project.id, version=1, text=guidelines, content_warning=content_warning))
    return project


def update_project(s: Session, project: Project, **settings: Any) -> Project:
    settings = {k: v for k, v in settings.items() if v is not None}
    _refuse_bad_settings(settings)
    if "task_type" in settings and settings["task_type"] != project.task_type and \
            s.scalar(select(func.count(Task.id)).where(Task.project_id == project.id)):
        raise Conflict("task_type cannot change once the project has tasks", field="task_type")
    overlap_changed = "overlap" in settings and settings["overlap"] != project.overlap
    for k, v in settings.items():
        setattr(project, k, v)
    if overlap_changed:  # which tasks have a free place changed for the whole project
        assign.recount(s, project)
    return project


def set_guidelines(s: Session, project: Project, text: str, content_warning: str | None = None) -> int:
    """Store a new guidelines version; judgments made from now on record it."""
    project.guidelines_version += 1
    project.guidelines = text
    if content_warning is not None:
        project.content_warning = content_warning
    s.add(GuidelineVersion(project_id=project.id, version=project.guidelines_version, text=text,
                           content_warning=project.content_warning))
    return project.guidelines_version


def create_labeler(s: Session, name: str, role: str = "labeler", kind: str = "human", identity: str = "",
                   password: str | None = None, trust: float | None = None) -> Labeler:
    if not name or len(name) > 200:
        raise Invalid("a labeler needs a name of 1 to 200 characters", field="name")
    if role not in ROLES:
        raise Invalid(f"'{role}' is not one of {', '.join(ROLES)}", field="role")
    if kind not in LABELER_KINDS:
        raise Invalid(f"'{kind}' is not one of {', '.join(LABELER_KINDS)}", field="kind")
    if s.scalar(select(Labeler.id).where(Labeler.name == name)) is not None:
        raise Conflict(f"a labeler named '{name}' already exists", field="name")
    lab = Labeler(name=name, role=role, kind=kind, identity=identity, trust=trust,
                  password_hash=auth.hash_password(password) if password else None)
    s.add(lab)
    s.flush()
    return lab


def get_or_create_labeler(s: Session, name: str, kind: str = "human", identity: str = "") -> Labeler:
    """For judges and imports: the labeler of that name, created (without login) when new."""
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    return lab if lab is not None else create_labeler(s, name, kind=kind, identity=identity)


# --------------------------------------------------------------------------------------------------
# Judgments
# --------------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """The fields of a judgment as submitted, before validation against the task."""

    choice: str | None = None
    strength: str | None = None
    ranking: list | None = None
    ratings: dict | None = None
    flags: dict | None = None
    rewrite: str | None = None
    skip_reason: str | None = None


def _text(value: Any, field: str, required: bool = False) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip() and not required):
        if required:
            raise Invalid("is required", field=field)
        return None
    if not isinstance(value, str):
        raise Invalid("must be a string", field=field)
    if not value.strip():
        raise Invalid("must not be empty", field=field)
    if len(value) > MAX_TEXT:
        raise Invalid(f"is {len(value)} characters; the limit is {MAX_TEXT}", field=field)
    return value


def validate_answer(task: Task, project: Project, a: Answer) -> Answer:
    """Check an answer against its task type and completions; returns a clean copy or raises ``Invalid``."""
    ids = [int(i) for i in task.completion_ids]
    rewrite = _text(a.rewrite, "rewrite", required=task.task_type == "rewrite" and a.skip_reason is None)
    if a.skip_reason is not None:
        reason = _text(a.skip_reason, "skip_reason", required=True)
        if any(v is not None for v in (a.choice, a.ranking, a.ratings, a.flags, a.rewrite)):
            raise Invalid("a skip carries only a reason, not an answer", field="skip_reason")
        return Answer(skip_reason=reason)
    out = Answer(rewrite=rewrite)
    t = task.task_type
    # a field that does not belong to this task type is a client mistake worth naming before anything else
    takes = {"pairwise": {"choice", "strength"}, "binary": {"choice"}, "ranking": {"ranking"}, "rating": {"ratings"},
             "rewrite": set()}[t]
    for name in ("choice", "strength", "ranking", "ratings"):
        if getattr(a, name) is not None and name not in takes:
            raise Invalid(f"a {t} task takes no {name}", field=name)
    if t in ("pairwise", "binary") and a.choice is None:
        raise Invalid(f"is required for a {t} task", field="choice")
    if t == "pairwise":
        if a.choice not in PAIRWISE_CHOICES:
            raise Invalid(f"'{a.choice}' is not one of {', '.join(PAIRWISE_CHOICES)} for a pairwise task", "choice")
        if a.strength is not None and a.strength not in STRENGTHS:
            raise Invalid(f"'{a.strength}' is not one of {', '.join(STRENGTHS)}", field="strength")
        if a.strength is not None and a.choice not in ("A", "B"):
            raise Invalid("a strength goes only with A or B", field="strength")
        out.choice, out.strength = a.choice, a.strength
    elif t == "binary":
        if a.choice not in BINARY_CHOICES:
            raise Invalid(f"'{a.choice}' is not one of {', '.join(BINARY_CHOICES)} for a binary task", "choice")
        out.choice = a.choice
    elif a.choice is not None:
        raise Invalid(f"a {t} task takes no choice", field="choice")
    if t == "ranking":
        r = a.ranking
        if not isinstance(r, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in r) \
                or sorted(r) != sorted(ids):
            raise Invalid(f"must list each of the task's completion ids {ids} once, best first", field="ranking")
        out.ranking = list(r)
    elif a.ranking is not None:
        raise Invalid(f"a {t} task takes no ranking", field="ranking")
    if t == "rating":
        out.ratings = _check_per_completion(a.ratings, ids, set(project.criteria), "ratings",
                                            lambda v: isinstance(v, int) and not isinstance(v, bool)
                                            and 1 <= v <= project.scale, f"an integer from 1 to {project.scale}",
                                            complete=True)
    elif a.ratings is not None:
        raise Invalid(f"a {t} task takes no ratings", field="ratings")
    if a.flags is not None:
        out.flags = _check_per_completion(a.flags, ids, set(project.flags), "flags",
                                          lambda v: isinstance(v, bool), "true or false", complete=False)
    return out


def _check_per_completion(value: Any, ids: list[int], names: set[str], field: str, ok, what: str,
                          complete: bool) -> dict:
    if not isinstance(value, dict):
        raise Invalid("must map completion ids to {name: value}", field=field)
    out: dict[str, dict] = {}
    for cid, inner in value.items():
        try:
            cid_int = int(cid)
        except (TypeError, ValueError):
            raise Invalid(f"'{cid}' is not a completion id", field=field) from None
        if cid_int not in ids:
            raise Invalid(f"completion {cid} is not part of this task", field=field)
        if not isinstance(inner, dict):
            raise Invalid(f"completion {cid}: expected {{name: value}}", field=field)
        for k, v in inner.items():
            if k not in names:
                raise Invalid(f"'{k}' is not one of {', '.join(sorted(names))}", field=f"{field}.{cid}")
            if not ok(v):
                raise Invalid(f"{k} must be {what}", field=f"{field}.{cid}")
        if complete and set(inner) != names:
            raise Invalid(f"completion {cid}: rate every criterion ({', '.join(sorted(names))})", field=field)
        out[str(cid_int)] = dict(inner)
    if complete and set(out) != {str(i) for i in ids}:
        raise Invalid("rate every completion of the task", field=field)
    return out


def add_judgment(s: Session, task_id: int, labeler: Labeler | str, choice: str | None = None, *,
                 strength: str | None = None, ranking: list | None = None, ratings: dict | None = None,
                 flags: dict | None = None, rewrite: str | None = None, skip_reason: str | None = None,
                 assignment: Assignment | None = None, idempotency_key: str | None = None,
                 duration_ms: int | None = None, kind: str = "ai", identity: str = "",
                 now: dt.datetime | None = None) -> tuple[Judgment, bool]:
    """Store one judgment; returns ``(judgment, created)``. A repeat with the same idempotency key returns the
    stored judgment with ``created=False``. ``labeler`` may be a name: judges and imports get a labeler of
    ``kind`` made on the fly. Human labelers go through an ``assignment`` (see ``assign.next_assignment``).
    ``now``: when it was made (default: the current time). The lead's figures (``tallies``) follow in the same
    transaction."""
    if isinstance(labeler, str):
        labeler = get_or_create_labeler(s, labeler, kind=kind, identity=identity)
    if idempotency_key is not None and (not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 100):
        raise Invalid("must be a string of 1 to 100 characters", field="idempotency_key")
    # one statement: the labeler's judgment of this task, and the one made with this key (a repeat)
    mine = run(s, _mine_statement(), {"task_id": task_id, "labeler_id": labeler.id, "key": idempotency_key}).all()
    previous = next((r for r in mine if idempotency_key is not None and r.idempotency_key == idempotency_key), None)
    if previous is not None:
        if previous.task_id != task_id:
            raise Conflict("this key was already used for another task", field="idempotency_key")
        return s.get(Judgment, previous.id), False
    task = s.get(Task, task_id)
    if task is None:
        raise NotFound(f"no task {task_id}", field="task_id")
    project = s.get(Project, task.project_id)
    answer = validate_answer(task, project, Answer(choice, strength, ranking, ratings, flags, rewrite, skip_reason))
    if assignment is not None:
        if assignment.task_id != task.id or assignment.labeler_id != labeler.id:
            raise NotFound("no such assignment for this labeler", field="assignment")
        if assignment.status != "open":
            raise Conflict(f"this assignment is {assignment.status}; fetch the next task", field="assignment")
    if any(r.task_id == task.id for r in mine):
        raise Conflict("this labeler already judged this task", field="task_id")
    values = dict(task_id=task.id, labeler_id=labeler.id, assignment_id=assignment.id if assignment else None,
                  choice=answer.choice, strength=answer.strength, ranking=answer.ranking, ratings=answer.ratings,
                  flags=answer.flags, rewrite=answer.rewrite, skipped=answer.skip_reason is not None,
                  skip_reason=answer.skip_reason, display_order=assignment.display_order if assignment else None,
                  guideline_version=project.guidelines_version, idempotency_key=idempotency_key,
                  duration_ms=duration_ms if isinstance(duration_ms, int) and duration_ms >= 0 else None,
                  created_at=now or utcnow())
    # a racing request with the same key or for the same task (its labeler's own retry) inserts nothing here
    # instead of failing: no savepoint needed around the insert (two round trips on PostgreSQL)
    j = s.scalar(_insert_statement(s.get_bind().dialect.name), values)
    if j is None:
        if idempotency_key is not None:
            previous = s.scalar(select(Judgment).where(Judgment.labeler_id == labeler.id,
                                                       Judgment.idempotency_key == idempotency_key))
            if previous is not None:
                return previous, False
        raise Conflict("this labeler already judged this task", field="task_id")
    if assignment is not None:
        assignment.status = "skipped" if j.skipped else "done"
        assignment.completed_at = j.created_at
        if j.skipped:
            assign.release_place(s, project, assignment)  # a skip frees the place for another labeler
    tallies.record(s, j, task)
    assign.judgment_added(s, project, task, labeler, assignment)
    return j, True


@functools.cache
def _mine_statement() -> Any:
    same_task = select(Judgment.id, Judgment.task_id, Judgment.idempotency_key).where(
        Judgment.task_id == bindparam("task_id"), Judgment.labeler_id == bindparam("labeler_id"))
    same_key = select(Judgment.id, Judgment.task_id, Judgment.idempotency_key).where(
        Judgment.labeler_id == bindparam("labeler_id"), Judgment.idempotency_key == bindparam("key"))
    return union_all(same_task, same_key)  # (two unique-index look-ups; an OR of both could scan)


@functools.cache
def _insert_statement(dialect: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING the new judgment (an ORM object, in the session)."""
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:  # pragma: no cover - the studio runs on SQLite and PostgreSQL
        raise NotImplementedError(dialect)
    return insert(Judgment).on_conflict_do_nothing().returning(Judgment)


def judgments_for(s: Session, project: Project, include_skipped: bool = False) -> list[Judgment]:
    q = select(Judgment).join(Task, Task.id == Judgment.task_id).where(Task.project_id == project.id)
    if not include_skipped:
        q = q.where(Judgment.skipped.is_(False))
    return list(s.scalars(q.order_by(Judgment.id)))


# --------------------------------------------------------------------------------------------------
# A whole project, for exports and figures
# --------------------------------------------------------------------------------------------------


class ProjectData:
    """Everything a project's exports and figures need, loaded once (``io`` exports it, ``stats`` counts it)."""

    def __init__(self, s: Session, project: Project, include_skipped: bool = False):
        self.project = project
        self.tasks = {t.id: t for t in s.scalars(select(Task).where(Task.project_id == project.id)
                                                 .order_by(Task.seq, Task.id))}
        self.prompts = {p.id: p for p in s.scalars(select(Prompt).where(Prompt.project_id == project.id))}
        self.completions = {c.id: c for c in s.scalars(select(Completion).join(Prompt).where(
            Prompt.project_id == project.id))}
        self.judgments = judgments_for(s, project, include_skipped=include_skipped)
        self.labelers = {lab.id: lab for lab in s.scalars(select(Labeler))}
        self.gold = {g.task_id: g.answer for g in s.scalars(select(GoldAnswer).where(
            GoldAnswer.task_id.in_(list(self.tasks))))} if self.tasks else {}
        # a lead's decisions: each is its task's consensus (``consensus.decided``)
        self.adjudications = {a.task_id: a for a in s.scalars(select(Adjudication).where(
            Adjudication.project_id == project.id))}
        self.by_task: dict[int, list[Judgment]] = defaultdict(list)
        for j in self.judgments:
            if not j.skipped:
                self.by_task[j.task_id].append(j)

    def gold_record(self) -> dict[int, tuple[int, int]]:
        out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for task_id, answer in self.gold.items():
            for j in self.by_task.get(task_id, []):
                ok = cons.gold_correct(self.project.task_type, j, answer)
                if ok is not None:
                    out[j.labeler_id][0] += ok
                    out[j.labeler_id][1] += 1
        return {k: (v[0], v[1]) for k, v in out.items()}

    def weights(self) -> dict[int, float]:
        return cons.trust_weights(self.labelers.values(), self.gold_record())

    def consensus(self, method: str) -> dict[int, dict]:
        w = self.weights() if method == "weighted" else None
        crit, t = self.project.criteria, self.project.task_type
        return {tid: cons.decided(t, self.adjudications[tid], len(self.by_task.get(tid, [])))
                if tid in self.adjudications else cons.task_consensus(t, self.by_task.get(tid, []), method, w, crit)
                for tid in self.tasks}

    def text(self, cid: int) -> Any:
        return self.completions[cid].text
