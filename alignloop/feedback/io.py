"""Imports into and exports out of the studio.

Imports read a file through ``alignloop.data.labeled`` (built on ``alignloop.data.readers``, the one owner of file
parsing; the trainers read TRL files through the same code, so both take the same pairs from a file). Its shape is
told from the file: a Label Studio JSON export (pairwise or ranker template), Argilla 2.x records, a TRL file (every
TRL preference format, Anthropic HH transcripts included, rankings, unpaired labels), ``alignloop generate``
candidates or the studio's own ``raw`` export (a round trip). Each labeled task becomes a prompt, its completions and
one task (a pairwise project: one task per pair of K > 2 completions; a binary project: one per completion), and
each judgment in the file a judgment by its labeler (a preference file's by ``--labeler``, default
``import:<file name>``).

An import is all-or-nothing: every task and judgment is checked against the project before the first row is
written, and the first problem stops it naming the file, the line and the field. What a file holds that is neither
a task nor a judgment (cancelled annotations, model predictions or suggestions, responses to questions the studio
has no place for) is counted by reason in the summary's ``skipped``. Rows are written in batches (Core inserts,
executemany) inside the caller's transaction: tasks in ``_insert_tasks``, judgments in ``_insert_judgments``.

Exports: ``trl`` (consensus preference pairs; rankings expanded to pairs, grouped per prompt), ``kto``
(unpaired good/bad labels), ``sft`` (the "write a better answer" demonstrations) and ``raw`` (every
judgment, and a gold task's answer). Each row carries ``id`` and ``judgment_ids``; each export is recorded with the
judgments it holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import hashlib
import itertools
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from sqlalchemy import JSON, func, insert, select
from sqlalchemy.orm import Session

from alignloop.core.errors import DataError
from alignloop.core.files import atomic_path
from alignloop.data import labeled as labeled_files
from alignloop.data import readers
from alignloop.data.records import LabeledFile, LabeledTask
from alignloop.feedback import assign, tallies
from alignloop.feedback.errors import StoreError
from alignloop.feedback.models import (
    LABELER_KINDS,
    Completion,
    Database,
    Export,
    ExportJudgment,
    GoldAnswer,
    Judgment,
    Project,
    Prompt,
    Task,
    utcnow,
)
from alignloop.feedback.queries import (
    MAX_COMPLETIONS,
    Answer,
    ProjectData,
    create_project,
    get_or_create_labeler,
    get_project,
    set_guidelines,
    update_project,
    validate_answer,
)

MAX_IMPORT_TEXT = 200_000  # characters per prompt or completion; longer rows are refused, never cut
FORMATS = ("trl", "kto", "sft", "raw")
BATCH = 2_000  # records per batch of inserts
#: what a record of each kind is called in errors
KIND_NAMES = {"pairwise": "preference", "ranking": "ranking", "binary": "unpaired (KTO)", "rating": "rating",
              "rewrite": "rewrite"}
#: progress(total) -> a bar with update(n) and close() (tqdm's interface); None: no bar
Progress = Callable[[int], Any]


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_import(path: str | os.PathLike) -> LabeledFile:
    """The labeled tasks of a file, read by ``alignloop.data.labeled`` (its shape told from its rows)."""
    return labeled_files.read_labeled(path)


def parse_upload(data: bytes) -> list[tuple[int, dict[str, Any]]]:
    """An upload's rows, read by the rules a file is read by (strict UTF-8; a JSON array or one object a line).
    Errors name the line but no file."""
    return readers.rows_from_text(readers.decode_text(data), None)


def read_upload(rows: list[tuple[int, dict[str, Any]]]) -> LabeledFile:
    """The labeled tasks of an upload's rows (errors name the source ``upload``)."""
    return labeled_files.labeled_from_rows(rows, "upload")


# --------------------------------------------------------------------------------------------------
# Checking a file against a project (nothing is written)
# --------------------------------------------------------------------------------------------------


@dataclass
class _TaskPlan:
    comps: list[int]  # indices into the record's completions
    gold: dict | None = None
    judgments: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _PromptPlan:
    external_id: str
    prompt: Any
    context: Any
    extra: dict[str, Any]
    completions: list[Any]
    models: list[Any]
    sampling: dict[str, Any]
    uncertainty: float | None
    tasks: list[_TaskPlan]
    where: tuple[str | None, int | None]


@dataclass
class _Shape:
    """What ``validate_answer`` reads of a task, before the task has ids: completions are named by index."""

    completion_ids: list[int]
    task_type: str


def _location(where: str | None, default: tuple[str | None, int | None] = (None, None)
              ) -> tuple[str | None, int | None]:
    if not where:
        return default
    path, _, line = where.rpartition(":")
    return (path, int(line)) if line.isdigit() else (where, None)


def _store_message(exc: StoreError) -> str:
    text = str(exc)
    return text[len(exc.field) + 2:] if exc.field and text.startswith(f"{exc.field}: ") else text


def _fits(kind: str, task_type: str, k: int) -> bool:
    """Whether a record the file calls ``kind`` fits a project of ``task_type`` (a ranking of two is a pairwise
    choice)."""
    return kind == task_type or (kind == "ranking" and task_type == "pairwise" and k == 2)


def _subsets(task_type: str, k: int) -> list[list[int]]:
    """The tasks a record of ``k`` completions makes in a project of ``task_type``."""
    if task_type == "pairwise":
        return [list(p) for p in itertools.combinations(range(k), 2)]
    if task_type == "binary":
        return [[i] for i in range(k)]
    return [list(range(k))]


def _text_limit(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    return max((len(m.get("content", "")) for m in value if isinstance(m, dict)), default=0)


def _time(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    t = dt.datetime.fromisoformat(value)
    return t.astimezone(dt.UTC).replace(tzinfo=None) if t.tzinfo else t


def _answer(j: Any, task_type: str, comps: list[int]) -> Answer:
    """A file's judgment as the fields of an answer to a task of ``task_type`` holding ``comps``."""
    choice, ranking = j.choice, j.ranking
    if task_type == "pairwise" and ranking is not None and choice is None and len(ranking) == 2:
        choice, ranking = ("A" if ranking[0] == comps[0] else "B"), None  # a ranking of two is a choice
    return Answer(choice=choice, strength=j.strength, ranking=ranking, ratings=_keyed(j.ratings),
                  flags=_keyed(j.flags), rewrite=j.rewrite, skip_reason=j.skip_reason)


def _keyed(per_completion: dict | None, ids: list[int] | None = None) -> dict | None:
    """``{completion: {...}}`` keyed as a judgment stores it: by completion id (index ``i`` is ``ids[i]``), as text."""
    if per_completion is None:
        return None
    return {str(ids[int(i)] if ids is not None else i): v for i, v in per_completion.items()}


def _gold(project: Project, gold: dict | None, k: int, n_tasks: int, err: Callable[..., DataError]) -> dict | None:
    if gold is None:
        return None
    t = project.task_type
    if "ranking" in gold and (not isinstance(gold["ranking"], list) or sorted(gold["ranking"]) != list(range(k))):
        raise err(f"ranking must list the completion indices 0..{k - 1} once, best first", "gold")
    allowed = {"pairwise": ("A", "B", "tie", "both_bad"), "binary": ("good", "bad")}.get(t)
    if "choice" in gold and (allowed is None or gold["choice"] not in allowed):
        raise err(f"choice '{gold['choice']}' does not fit a {t} project", "gold")
    if "choice" not in gold and "ranking" not in gold:
        raise err("needs a 'choice' or a 'ranking'", "gold")
    if n_tasks > 1:
        one = {"pairwise": "exactly 2 completions", "binary": "exactly 1 completion"}.get(t, "one task")
        raise err(f"a gold answer in a {t} project needs {one}", "gold")
    return dict(gold)


def _plan(s: Session, project: Project, lf: LabeledFile, default_labeler: str
          ) -> tuple[list[_PromptPlan], dict[str, str]]:
    """Every record checked against ``project`` and laid out as prompts, completions, tasks and judgments; the
    labelers it names with their kind. Raises DataError on the first problem, in file order; writes nothing."""
    t_type = project.task_type
    plans: list[_PromptPlan] = []
    labelers: dict[str, str] = {}
    seen: set[str] = set()
    for t in lf.tasks:
        where = _location(t.meta.get("_where"))

        def err(msg: str, fld: str | None = None, at: tuple[str | None, int | None] = where) -> DataError:
            return DataError(msg, path=at[0], line=at[1], field=fld)

        k = len(t.completions)
        if k > MAX_COMPLETIONS:
            raise err(f"has {k} completions; the limit is {MAX_COMPLETIONS}", "completions")
        prompt = t.prompt.as_given()
        if _text_limit(prompt) > MAX_IMPORT_TEXT:
            raise err(f"is longer than {MAX_IMPORT_TEXT} characters", "prompt")
        for i, c in enumerate(t.completions):
            if _text_limit(c) > MAX_IMPORT_TEXT:
                raise err(f"is longer than {MAX_IMPORT_TEXT} characters", f"completions[{i}]")
        if t.kind and not _fits(t.kind, t_type, k):
            raise err(f"{KIND_NAMES.get(t.kind, t.kind)} records need a {t.kind} project; '{project.name}' is "
                      f"{t_type}")
        if t_type in ("pairwise", "ranking") and k < 2:
            raise err(f"a {t_type} task needs at least 2 completions", "completions")
        subsets = _subsets(t_type, k)
        tasks = [_TaskPlan(sub) for sub in subsets]
        ext = t.meta.get("id")
        if ext is None:  # no id: derive a stable one from the content, so a re-import is noticed
            ext = hashlib.sha1(json.dumps([prompt, t.completions], sort_keys=True).encode()).hexdigest()[:16]
        if not isinstance(ext, (str, int)) or isinstance(ext, bool) or len(str(ext)) > 200:
            raise err("must be a string or integer of at most 200 characters", "id")
        ext = str(ext)
        if ext in seen:
            raise err(f"prompt id '{ext}' appears twice in this file", "id")
        seen.add(ext)
        tasks[0].gold = _gold(project, t.gold, k, len(tasks), err)
        for j in t.judgments:
            _plan_judgment(project, j, tasks, k, default_labeler, labelers, err, _location(j.where, where))
        meta = readers.public_meta(t.meta)
        models = meta.pop("models", None)
        model = meta.pop("model", None)
        sampling = meta.pop("sampling", None)
        context = meta.pop("context", None)
        unc = meta.pop("uncertainty", None)
        meta.pop("id", None)
        if context is not None and not isinstance(context, (str, list, dict)):
            raise err("must be text, a list or an object", "context")
        models = [models[i] if isinstance(models, list) and i < len(models) else model for i in range(k)]
        plans.append(_PromptPlan(ext, prompt, context, meta, list(t.completions),
                                 [str(m) if m is not None else None for m in models],
                                 sampling if isinstance(sampling, dict) else {},
                                 unc if isinstance(unc, (int, float)) and not isinstance(unc, bool) else None,
                                 tasks, where))
    _refuse_known_ids(s, project, plans)
    return plans, labelers


def _plan_judgment(project: Project, j: Any, tasks: list[_TaskPlan], k: int, default_labeler: str,
                   labelers: dict[str, str], err: Callable[..., DataError], at: tuple[str | None, int | None]) -> None:
    """Check one judgment of a file against its task and add it there."""
    t_type = project.task_type
    want = list(range(k)) if j.completions is None else list(j.completions)
    target = next((tp for tp in tasks if tp.comps == want), None)
    if target is None:
        what = "all its completions" if j.completions is None else f"completions {want}"
        raise err(f"a judgment of {what} fits no task of a {t_type} project"
                  + (" (each pair of completions is its own task)" if t_type == "pairwise" else ""), at=at)
    try:
        answer = validate_answer(_Shape(target.comps, t_type), project, _answer(j, t_type, target.comps))
    except StoreError as exc:
        raise err(_store_message(exc), exc.field, at=at) from None
    name = j.labeler or default_labeler
    if not 1 <= len(name) <= 200:
        raise err("a labeler needs a name of 1 to 200 characters", "labeler", at=at)
    if j.labeler_kind not in LABELER_KINDS:
        raise err(f"'{j.labeler_kind}' is not one of {', '.join(LABELER_KINDS)}", "labeler_kind", at=at)
    labelers.setdefault(name, j.labeler_kind)
    if any(x["labeler"] == name for x in target.judgments):
        raise err(f"labeler '{name}' judged this task twice", "labeler", at=at)
    try:
        created = _time(j.created_at)
    except ValueError:
        raise err(f"expected an ISO 8601 time, got {j.created_at!r}", "created_at", at=at) from None
    display = j.display_order if j.display_order and sorted(j.display_order) == sorted(target.comps) else None
    target.judgments.append({"labeler": name, "answer": answer, "created_at": created, "duration_ms": j.duration_ms,
                             "display_order": display})


def _refuse_known_ids(s: Session, project: Project, plans: list[_PromptPlan]) -> None:
    for start in range(0, len(plans), 500):
        chunk = plans[start:start + 500]
        known = set(s.scalars(select(Prompt.external_id).where(
            Prompt.project_id == project.id, Prompt.external_id.in_([p.external_id for p in chunk]))))
        for p in chunk:
            if p.external_id in known:
                raise DataError(f"prompt id '{p.external_id}' is already in project '{project.name}'",
                                path=p.where[0], line=p.where[1], field="id")


# --------------------------------------------------------------------------------------------------
# Writing (batched inserts in the caller's transaction)
# --------------------------------------------------------------------------------------------------


_JSON_TEXT = json.JSONEncoder().encode  # what json.dumps (SQLAlchemy's JSON serializer) writes, one call shorter


def _bulk_insert(s: Session, model: Any, rows: list[dict[str, Any]]) -> None:
    """``INSERT`` many rows. PostgreSQL: a Core insert, which SQLAlchemy sends as multi-row ``VALUES`` statements
    (the driver's own executemany sends one statement a row). SQLite: one executemany of the driver, JSON values
    written as ``json.dumps`` writes them (None as SQL NULL, which reads back as None too) and other values through
    SQLAlchemy's bind processor for the dialect: what a Core insert stores, without its per-row bookkeeping, which
    was most of an import's time."""
    if not rows:
        return
    table = model.__table__
    conn = s.connection()
    dialect = conn.dialect
    if dialect.name != "sqlite":
        s.execute(insert(table), rows)
        return
    cols = list(rows[0])

    def converter(col: Any) -> Callable[[Any], Any] | None:
        if isinstance(col.type, JSON):
            return lambda v: None if v is None else _JSON_TEXT(v)
        return col.type.dialect_impl(dialect).bind_processor(dialect)

    convs = [(c, converter(table.c[c])) for c in cols]
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    sql = (f"INSERT INTO {table.name} ({', '.join(dialect.identifier_preparer.quote(c) for c in cols)}) "
           f"VALUES ({', '.join([marker] * len(cols))})")
    conn.exec_driver_sql(sql, [tuple([r[c] if f is None else f(r[c]) for c, f in convs]) for r in rows])


def _insert_tasks(s: Session, project: Project, plans: list[_PromptPlan], seq: int
                  ) -> tuple[list[list[int]], list[list[int]], int]:
    """Insert ``plans``' prompts, completions, tasks and gold answers: the one place tasks are added by an import
    (anything kept per task or per project, such as counters, is updated here). Returns each prompt's completion
    ids and task ids, and the next free ``seq``.

    Plain multi-row inserts, then one query per table for the new ids (RETURNING in parameter order runs one
    statement per row on SQLite)."""
    _bulk_insert(s, Prompt, [
        {"project_id": project.id, "external_id": p.external_id, "prompt": p.prompt, "context": p.context,
         "extra": p.extra} for p in plans])
    by_ext = dict(s.execute(select(Prompt.external_id, Prompt.id).where(
        Prompt.project_id == project.id, Prompt.external_id.in_([p.external_id for p in plans]))).all())
    prompt_ids = [by_ext[p.external_id] for p in plans]
    _bulk_insert(s, Completion, [
        {"prompt_id": pid, "position": i, "text": text, "model": p.models[i], "sampling": p.sampling}
        for p, pid in zip(plans, prompt_ids) for i, text in enumerate(p.completions)])
    at = {(pid, pos): cid for cid, pid, pos in s.execute(select(Completion.id, Completion.prompt_id,
                                                                Completion.position)
                                                         .where(Completion.prompt_id.in_(prompt_ids))).all()}
    comp_ids = [[at[(pid, i)] for i in range(len(p.completions))] for p, pid in zip(plans, prompt_ids)]
    now = utcnow()
    task_rows = []
    for p, pid, cids in zip(plans, prompt_ids, comp_ids):
        for tp in p.tasks:
            task_rows.append({"project_id": project.id, "prompt_id": pid, "task_type": project.task_type,
                              "completion_ids": [cids[i] for i in tp.comps], "seq": seq, "uncertainty": p.uncertainty,
                              "is_gold": tp.gold is not None, "created_at": now})
            seq += 1
    _bulk_insert(s, Task, task_rows)
    tasks_of: dict[int, list[int]] = defaultdict(list)
    for tid, pid in s.execute(select(Task.id, Task.prompt_id).where(Task.prompt_id.in_(prompt_ids))
                              .order_by(Task.id)).all():
        tasks_of[pid].append(tid)
    task_ids = [tasks_of[pid] for pid in prompt_ids]
    gold_rows = []
    for p, cids, tids in zip(plans, comp_ids, task_ids):
        for tp, tid in zip(p.tasks, tids):
            if tp.gold is not None:
                answer = dict(tp.gold)
                if "ranking" in answer:
                    answer["ranking"] = [cids[i] for i in answer["ranking"]]
                gold_rows.append({"task_id": tid, "answer": answer, "note": str(answer.get("note", ""))})
    _bulk_insert(s, GoldAnswer, gold_rows)
    return comp_ids, task_ids, seq


def _insert_judgments(s: Session, project: Project, plans: list[_PromptPlan], comp_ids: list[list[int]],
                      task_ids: list[list[int]], labeler_ids: dict[str, int]) -> int:
    """Insert the judgments ``plans`` hold (checked by ``_plan``): the one place an import adds judgments."""
    rows = []
    for p, cids, tids in zip(plans, comp_ids, task_ids):
        for tp, tid in zip(p.tasks, tids):
            for j in tp.judgments:
                a = j["answer"]
                rows.append({
                    "task_id": tid, "labeler_id": labeler_ids[j["labeler"]], "assignment_id": None,
                    "choice": a.choice, "strength": a.strength,
                    "ranking": [cids[i] for i in a.ranking] if a.ranking is not None else None,
                    "ratings": _keyed(a.ratings, cids), "flags": _keyed(a.flags, cids), "rewrite": a.rewrite,
                    "skipped": a.skip_reason is not None, "skip_reason": a.skip_reason,
                    "display_order": [cids[i] for i in j["display_order"]] if j["display_order"] else None,
                    "guideline_version": project.guidelines_version, "idempotency_key": None,
                    "duration_ms": j["duration_ms"], "created_at": j["created_at"] or utcnow()})
    _bulk_insert(s, Judgment, rows)
    return len(rows)


def _write(s: Session, project: Project, plans: list[_PromptPlan], labelers: dict[str, str],
           progress: Progress | None = None) -> dict[str, int]:
    labeler_ids = {name: get_or_create_labeler(s, name, kind=kind).id for name, kind in labelers.items()}
    seq = (s.scalar(select(func.max(Task.seq)).where(Task.project_id == project.id)) or 0) + 1
    counts = {"prompts": 0, "tasks": 0, "gold_tasks": 0, "judgments": 0}
    bar = progress(sum(len(p.tasks) for p in plans)) if progress else None
    try:
        for start in range(0, len(plans), BATCH):
            chunk = plans[start:start + BATCH]
            comp_ids, task_ids, seq = _insert_tasks(s, project, chunk, seq)
            n_judgments = _insert_judgments(s, project, chunk, comp_ids, task_ids, labeler_ids)
            if n_judgments:  # the bulk insert bypasses queries.add_judgment, so the lead's figures are kept here
                tallies.record_imported(s, project, [t for ts in task_ids for t in ts])
            counts["judgments"] += n_judgments
            n_tasks = sum(len(t) for t in task_ids)
            counts["prompts"] += len(chunk)
            counts["tasks"] += n_tasks
            counts["gold_tasks"] += sum(tp.gold is not None for p in chunk for tp in p.tasks)
            if bar is not None:
                bar.update(n_tasks)
        # the queue's counters: new tasks only (places_taken starts at 0 by itself), or, when the file brought
        # judgments (written in bulk, past queries.add_judgment), everything counted again from the rows
        if counts["judgments"]:
            assign.recount(s, project)
        else:
            assign.count_new_tasks(s, project)
    finally:
        if bar is not None:
            bar.close()
    return counts


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """A bulk import allocates millions of objects that live to its end; the cyclic garbage collector would scan
    them again and again (it tripled the time of an import of 20,000 tasks). An import makes no reference cycles
    that need it, so it waits until the import is done."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def import_labeled(s: Session, project: Project, lf: LabeledFile, source: str = "<records>",
                   labeler: str | None = None, progress: Progress | None = None) -> dict:
    """Import a file's labeled tasks into ``project`` inside the caller's transaction: everything is checked first
    (DataError on the first problem; the caller rolls back), then written in batches. Returns what was added and
    what was skipped, by reason."""
    with _collector_paused():
        plans, labelers = _plan(s, project, lf, labeler or f"import:{Path(source).name}")
        counts = _write(s, project, plans, labelers, progress)
    return {"format": lf.shape, "records": lf.rows, **counts, "skipped": dict(lf.skipped)}


def import_records(s: Session, project: Project, records: Iterable[tuple[int, Any]], source: str = "<records>",
                   labeler: str | None = None) -> dict:
    """Import ``(line, row)`` pairs (any shape ``alignloop.data.labeled`` reads) into ``project`` inside the
    caller's transaction; see ``import_labeled``."""
    return import_labeled(s, project, labeled_files.labeled_from_rows(records, source), source, labeler)


def inferred_task_type(lf: LabeledFile) -> str:
    """A new project's task type from its first record: what the file says it is, else 2 completions: pairwise, 1:
    binary, more: ranking."""
    first: LabeledTask = lf.tasks[0]
    k = len(first.completions)
    return first.kind or ("pairwise" if k == 2 else "binary" if k == 1 else "ranking")


def _file_criteria(lf: LabeledFile) -> list[str]:
    """The rating criteria a file's judgments use, in the order they first appear (a new rating project takes
    them, so ratings exported from another project come back)."""
    seen: dict[str, None] = {}
    for t in lf.tasks:
        for j in t.judgments:
            for per in (j.ratings or {}).values():
                seen.update(dict.fromkeys(per))
    return list(seen)


def _project_for(s: Session, name: str, lf: LabeledFile, settings: dict[str, Any]) -> Project:
    """The project to import into: created with ``settings`` when new; else ``settings`` (and guidelines) update
    it, and a different ``task_type`` is refused."""
    settings = {k: v for k, v in settings.items() if v is not None}
    guidelines, warning = settings.pop("guidelines", None), settings.pop("content_warning", None)
    project = s.scalar(select(Project).where(Project.name == name))
    try:
        if project is None:
            settings.setdefault("task_type", inferred_task_type(lf))
            if settings["task_type"] == "rating" and "criteria" not in settings and _file_criteria(lf):
                settings["criteria"] = _file_criteria(lf)
            return create_project(s, name, guidelines=guidelines or "", content_warning=warning or "", **settings)
        wanted = settings.pop("task_type", None)
        if wanted and wanted != project.task_type:
            raise DataError(f"project '{name}' is {project.task_type}; its task type cannot change (asked: {wanted})",
                            field="task_type")
        update_project(s, project, **settings)
        if (guidelines is not None and guidelines != project.guidelines) or \
                (warning is not None and warning != project.content_warning):
            set_guidelines(s, project, guidelines if guidelines is not None else project.guidelines, warning)
        return project
    except StoreError as exc:
        raise DataError(_store_message(exc), field=exc.field) from None


def import_file(db: Database, project_name: str, path: str | os.PathLike, labeler: str | None = None,
                progress: Progress | None = None, **settings: Any) -> dict:
    """Read ``path`` and import it into ``project_name`` in one transaction: the project is created with
    ``settings`` (``task_type``, ``overlap``, ..., ``guidelines``, ``content_warning``) when new, or updated by them;
    a different task type is refused before anything is written."""
    with _collector_paused():
        lf = read_import(path)
        with db.write() as s:
            project = _project_for(s, project_name, lf, settings)
            summary = import_labeled(s, project, lf, source=str(path), labeler=labeler, progress=progress)
    return {"project": project.name, "task_type": project.task_type, **summary}


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _as_answer(text: Any, prompt: Any) -> Any:
    """TRL's conversational format wants chosen/rejected as assistant message lists when the prompt is one."""
    if isinstance(prompt, list) and isinstance(text, str):
        return [{"role": "assistant", "content": text}]
    return text


def export_rows(s: Session, project: Project, fmt: str, method: str = "majority", min_judgments: int = 1
                ) -> tuple[list[dict], list[int], dict]:
    """(rows, judgment ids used, summary of what was left out and why) for one export format."""
    if fmt not in FORMATS:
        raise DataError(f"'{fmt}' is not one of {', '.join(FORMATS)}", field="format")
    data = ProjectData(s, project, include_skipped=fmt == "raw")
    excluded: dict[str, int] = defaultdict(int)
    rows: list[dict] = []
    used: list[int] = []
    if fmt == "raw":
        for j in data.judgments:
            task = data.tasks[j.task_id]
            prompt = data.prompts[task.prompt_id]
            lab = data.labelers[j.labeler_id]
            rows.append({"id": f"j{j.id}", "judgment_ids": [j.id], "task_id": task.id, "task_type": task.task_type,
                         "prompt_id": prompt.external_id, "prompt": prompt.prompt, "context": prompt.context,
                         "completions": [{"id": c, "text": data.text(c), "model": data.completions[c].model}
                                         for c in task.completion_ids],
                         "is_gold": task.is_gold, "gold": data.gold.get(task.id),
                         "labeler": lab.name, "labeler_kind": lab.kind,
                         "choice": j.choice, "strength": j.strength, "ranking": j.ranking, "ratings": j.ratings,
                         "flags": j.flags, "rewrite": j.rewrite, "skipped": j.skipped, "skip_reason": j.skip_reason,
                         "display_order": j.display_order, "guideline_version": j.guideline_version,
                         "duration_ms": j.duration_ms, "created_at": j.created_at.isoformat() + "Z"})
            used.append(j.id)
        return rows, used, {"rows": len(rows), "excluded": {}}
    if fmt == "sft":
        for j in data.judgments:
            if not j.rewrite:
                continue
            task = data.tasks[j.task_id]
            prompt = data.prompts[task.prompt_id]
            rows.append({"id": f"{prompt.external_id}-j{j.id}", "prompt": prompt.prompt,
                         "completion": _as_answer(j.rewrite, prompt.prompt), "judgment_ids": [j.id]})
            used.append(j.id)
        return rows, used, {"rows": len(rows), "excluded": {}}
    agreed = data.consensus(method)
    for tid, task in data.tasks.items():
        judged = data.by_task.get(tid, [])
        if not judged:
            excluded["no_judgments"] += 1
            continue
        if len(judged) < min_judgments:
            excluded["below_min_judgments"] += 1
            continue
        c = agreed[tid]
        if c["label"] is None:
            excluded["no_consensus_tie"] += 1
            continue
        prompt = data.prompts[task.prompt_id]
        ids = [j.id for j in judged]
        made = _rows_for(fmt, task, prompt, c["label"], data, project)
        if not made:
            excluded[f"no_{fmt}_rows_for_label"] += 1
            continue
        for r in made:
            r["judgment_ids"] = ids
        rows += made
        used += ids
    return rows, used, {"rows": len(rows), "method": method, "min_judgments": min_judgments,
                        "excluded": dict(excluded)}


def _rows_for(fmt: str, task: Task, prompt: Prompt, label: Any, data: ProjectData, project: Project) -> list[dict]:
    base = prompt.external_id if task.task_type != "pairwise" else f"{prompt.external_id}-t{task.id}"
    p = prompt.prompt
    ids = list(task.completion_ids)
    if task.task_type == "pairwise":
        if label in ("A", "B"):
            win, lose = (ids[0], ids[1]) if label == "A" else (ids[1], ids[0])
            order_pairs, good, bad = [(win, lose)], [win], [lose]
        else:  # a tie gives no preference; both bad says both are undesirable (a KTO signal)
            order_pairs, good, bad = [], [], (ids if label == "both_bad" else [])
    elif task.task_type == "binary":
        order_pairs, good, bad = [], ([ids[0]] if label == "good" else []), ([ids[0]] if label == "bad" else [])
    elif task.task_type == "ranking":
        order = list(label)
        order_pairs = list(itertools.combinations(order, 2))  # every pair, best-first order kept
        half = len(order) // 2  # upper half desirable, lower half undesirable; the middle of an odd K neither
        good, bad = order[:half], order[len(order) - half:]
    elif task.task_type == "rating":
        score = {int(c): sum(per.values()) / len(per) for c, per in label.items() if per}
        ranked = sorted(score, key=lambda c: -score[c])
        order_pairs = [(a, b) for a, b in itertools.combinations(ranked, 2) if score[a] > score[b]]
        mid = (1 + project.scale) / 2  # above the scale's midpoint is desirable, below undesirable
        good = [c for c in ranked if score[c] > mid]
        bad = [c for c in ranked if score[c] < mid]
    else:
        return []
    if fmt == "trl":
        return [{"id": f"{base}-{a}>{b}", "prompt": p, "chosen": _as_answer(data.text(a), p),
                 "rejected": _as_answer(data.text(b), p)} for a, b in order_pairs]
    return ([{"id": f"{base}-{c}+", "prompt": p, "completion": _as_answer(data.text(c), p), "label": True}
             for c in good] +
            [{"id": f"{base}-{c}-", "prompt": p, "completion": _as_answer(data.text(c), p), "label": False}
             for c in bad])


def export_file(db: Database, project_name: str, fmt: str, output: str | os.PathLike, method: str = "majority",
                min_judgments: int = 1) -> dict:
    """Write an export as JSONL (atomically) and record it with the judgments it contains."""
    out = Path(output)
    with db.write() as s:
        try:
            project = get_project(s, project_name)
        except StoreError as exc:
            raise DataError(str(exc)) from None
        rows, used, summary = export_rows(s, project, fmt, method, min_judgments)
        digest = hashlib.sha256()
        with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as f:
            for line in map(_jsonl_line, rows):
                digest.update(line.encode())
                f.write(line)
        # the record is committed only after the file is in place
        ex = record_export(s, project, fmt, used, path=str(out.resolve()), sha256=digest.hexdigest(),
                           n_rows=len(rows), summary=summary, method=_consensus_of(fmt, method))
        return {"export_id": ex.id, "path": str(out), "format": fmt, "sha256": ex.sha256, **summary}


def export_download(s: Session, project: Project, fmt: str, method: str = "majority", min_judgments: int = 1
                    ) -> tuple[str, int]:
    """(JSONL text, export id) of an export the web API sends as a download; recorded with its judgments."""
    rows, used, summary = export_rows(s, project, fmt, method, min_judgments)
    ex = record_export(s, project, fmt, used, path="(download)", n_rows=len(rows), summary=summary,
                       method=_consensus_of(fmt, method))
    return "".join(map(_jsonl_line, rows)), ex.id


def _jsonl_line(row: dict) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _consensus_of(fmt: str, method: str) -> str:
    """The consensus method an export records: only trl and kto rows come from a consensus."""
    return method if fmt in ("trl", "kto") else ""


def record_export(s: Session, project: Project, fmt: str, judgment_ids: Iterable[int], path: str = "",
                  sha256: str = "", n_rows: int = 0, summary: dict | None = None, method: str = "") -> Export:
    ex = Export(project_id=project.id, format=fmt, consensus=method, path=path, sha256=sha256, n_rows=n_rows,
                summary=summary or {})
    s.add(ex)
    s.flush()
    s.add_all([ExportJudgment(export_id=ex.id, judgment_id=j) for j in sorted(set(judgment_ids))])
    return ex


def export_preferences(s: Session, project: Project, method: str = "majority", min_judgments: int = 1) -> list[dict]:
    """Consensus preference pairs (TRL format) as a list, recorded as an export without a file."""
    rows, used, summary = export_rows(s, project, "trl", method, min_judgments)
    record_export(s, project, "trl", used, n_rows=len(rows), summary=summary, method=method)
    return rows


def iter_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
