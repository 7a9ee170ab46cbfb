"""Imports into and exports out of the studio.

Imports (all-or-nothing: the caller's transaction is rolled back on the first bad row, whose file, line and
field the error names):

* ``alignloop generate`` JSONL: ``{"id", "prompt", "completions": [...], "model", "sampling", ...}`` plus
  optional ``uncertainty`` (active-learning order), ``context`` and ``gold`` (a known answer: ``{"choice":
  "A"}`` or ``{"ranking": [indices best first]}``). These become unlabeled tasks.
* TRL preferences ``{"prompt", "chosen", "rejected"}`` (also the implicit-prompt form, Anthropic HH transcripts
  included, split by ``alignloop.data.readers`` as the trainers split it), rankings
  ``{"prompt", "completions", "ranks"}`` and unpaired ``{"prompt", "completion", "label"}``: tasks plus the
  judgment the file records, by the labeler named ``labeler`` (default ``import:<file name>``).
* Label Studio JSON exports of pairwise tasks: ``data.prompt``, ``data.answer1``, ``data.answer2`` and per
  annotation ``result[].value.selected`` (left = answer1, right = answer2) by ``completed_by``.

Exports: ``trl`` (consensus preference pairs; rankings expanded to pairs, grouped per prompt), ``kto``
(unpaired good/bad labels), ``sft`` (the "write a better answer" demonstrations) and ``raw`` (every
judgment). Each row carries ``id`` and ``judgment_ids``; each export is recorded with the judgments it holds.
"""

from __future__ import annotations

import gzip
import hashlib
import itertools
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from alignloop.core.errors import DataError
from alignloop.core.files import atomic_path
from alignloop.data import readers
from alignloop.feedback import assign
from alignloop.feedback.errors import StoreError
from alignloop.feedback.models import (
    Completion,
    Database,
    Export,
    ExportJudgment,
    GoldAnswer,
    Labeler,
    Project,
    Prompt,
    Task,
)
from alignloop.feedback.queries import (
    MAX_COMPLETIONS,
    ProjectData,
    add_judgment,
    create_project,
    get_or_create_labeler,
    get_project,
)

MAX_IMPORT_TEXT = 200_000  # characters per prompt or completion; longer rows are refused, never cut
ROLES = ("system", "user", "assistant", "tool")
FORMATS = ("trl", "kto", "sft", "raw")


# --------------------------------------------------------------------------------------------------
# Reading files
# --------------------------------------------------------------------------------------------------


def read_records(path: str | os.PathLike) -> tuple[str, list[tuple[int, Any]]]:
    """("jsonl" | "labelstudio" | "json", [(line or item number, record)]) for a JSONL/JSON(.gz) file."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(p))
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise DataError(f"cannot read the file ({exc})", path=str(p)) from None
    return parse_records(decode_upload(data, source=str(p)), source=str(p))


def decode_upload(data: bytes, source: str | None = None) -> str:
    """Strict UTF-8 (an optional BOM is dropped): a byte that is not UTF-8 is an error naming its line and
    column, never a silent U+FFFD in the labels."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{data[start]:02x} at column {column})", path=source,
                        line=line) from None


def parse_records(text: str, source: str | None = None) -> tuple[str, list[tuple[int, Any]]]:
    """The records of a file's text or of an upload: a JSON array or one JSON value per line. The format is
    "labelstudio" when every record is a Label Studio task (it has a ``data`` object)."""
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"not valid JSON ({exc.msg})", path=source, line=exc.lineno) from None
        fmt, records = "json", [(i + 1, rec) for i, rec in enumerate(data)]
    else:
        fmt, records = "jsonl", []
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    records.append((n, json.loads(line)))
                except json.JSONDecodeError as exc:
                    raise DataError(f"not valid JSON ({exc.msg})", path=source, line=n) from None
    if records and all(isinstance(rec, dict) and "data" in rec for _, rec in records):
        fmt = "labelstudio"
    return fmt, records


# --------------------------------------------------------------------------------------------------
# Validating one record
# --------------------------------------------------------------------------------------------------


class _Where:
    def __init__(self, path: str, line: int | None):
        self.path, self.line = path, line

    def error(self, msg: str, field: str | None = None) -> DataError:
        return DataError(msg, path=self.path, line=self.line, field=field)


def _messages(value: Any, where: _Where, field: str) -> list[dict]:
    if not value:
        raise where.error("an empty message list", field)
    for i, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise where.error(f"message {i} must be {{'role': one of {', '.join(ROLES)}, 'content': text}}", field)
        if len(m["content"]) > MAX_IMPORT_TEXT:
            raise where.error(f"message {i} is longer than {MAX_IMPORT_TEXT} characters", field)
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _text_or_messages(value: Any, where: _Where, field: str) -> Any:
    if isinstance(value, str):
        if not value.strip():
            raise where.error("is empty", field)
        if len(value) > MAX_IMPORT_TEXT:
            raise where.error(f"is {len(value)} characters; the limit is {MAX_IMPORT_TEXT}", field)
        return value
    if isinstance(value, list):
        return _messages(value, where, field)
    if isinstance(value, dict) and isinstance(value.get("text"), str):  # {"text": ...} completions
        return _text_or_messages(value["text"], where, field)
    raise where.error("must be a string or a list of {'role', 'content'} messages", field)


def _record_kind(rec: dict, where: _Where) -> str:
    if "chosen" in rec or "rejected" in rec:
        return "preference"
    if "completions" in rec:
        return "ranking" if "ranks" in rec else "generate"
    if "completion" in rec:
        return "unpaired" if "label" in rec else "single"
    raise where.error("not a record this studio imports: expected 'completions' (alignloop generate), "
                      "'chosen'/'rejected' (preferences), 'completions'+'ranks' or 'completion'(+'label')")


INFERRED_TYPE = {"preference": "pairwise", "ranking": "ranking", "unpaired": "binary", "single": "binary",
                 "labelstudio": "pairwise"}


def infer_task_type(kind: str, rec: dict) -> str:
    if kind == "generate":
        return "pairwise" if len(rec.get("completions") or []) == 2 else "ranking"
    return INFERRED_TYPE[kind]


def _split_implicit_prompt(rec: dict, where: _Where) -> tuple[Any, Any, Any]:
    """TRL's implicit-prompt form: chosen/rejected are whole conversations sharing the prompt turns (message lists,
    Anthropic HH transcripts, or texts with a common beginning). Split by the trainers' reader
    (``alignloop.data.readers``), so ``label import`` and ``reward train`` / ``dpo`` take the same pairs from a file.

    Message lists keep their answers as assistant messages. The studio also stores answers of several messages,
    which the trainers' reader refuses: for those lists the prompt is the longest run of shared leading
    messages (TRL's own rule)."""
    chosen, rejected = rec.get("chosen"), rec.get("rejected")
    row = readers._Row(where.path, where.line, {"chosen": chosen, "rejected": rejected})
    try:
        pair = readers.row_to_record(row, "preference")
    except DataError:
        if isinstance(chosen, list) and isinstance(rejected, list):
            return _split_conversations(chosen, rejected, where)
        raise
    if isinstance(chosen, list):
        return (pair.prompt.to_json(), [{"role": "assistant", "content": pair.chosen}],
                [{"role": "assistant", "content": pair.rejected}])
    return pair.prompt.to_json(), pair.chosen, pair.rejected


def _split_conversations(chosen: list, rejected: list, where: _Where) -> tuple[Any, Any, Any]:
    chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise where.error("is missing and chosen/rejected share no leading turns", "prompt")
    return chosen[:n], chosen[n:], rejected[n:]


# --------------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------------


class _Importer:
    def __init__(self, s: Session, project: Project, source: str, labeler: str | None):
        self.s, self.project, self.source = s, project, source
        self.labeler_name = labeler or f"import:{Path(source).name}"
        self.seq = (s.scalar(select(func.max(Task.seq)).where(Task.project_id == project.id)) or 0) + 1
        self.seen_ids: set[str] = set()
        self.summary = {"prompts": 0, "tasks": 0, "gold_tasks": 0, "judgments": 0, "cancelled_annotations": 0}

    def prompt(self, rec: dict, where: _Where, prompt: Any, texts: list[Any]) -> tuple[Prompt, list[Completion]]:
        ext = rec.get("id")
        if ext is None:  # no id: derive a stable one from the content, so a re-import is noticed
            ext = hashlib.sha1(json.dumps([prompt, texts], sort_keys=True).encode()).hexdigest()[:16]
        if not isinstance(ext, (str, int)) or isinstance(ext, bool) or len(str(ext)) > 200:
            raise where.error("must be a string or integer of at most 200 characters", "id")
        ext = str(ext)
        if ext in self.seen_ids or self.s.scalar(select(Prompt.id).where(
                Prompt.project_id == self.project.id, Prompt.external_id == ext)) is not None:
            raise where.error(f"prompt id '{ext}' is already in project '{self.project.name}'", "id")
        self.seen_ids.add(ext)
        context = rec.get("context")
        if context is not None and not isinstance(context, (str, list, dict)):
            raise where.error("must be text, a list or an object", "context")
        known = {"id", "prompt", "completions", "completion", "chosen", "rejected", "ranks", "label", "model",
                 "sampling", "context", "uncertainty", "gold", "models"}
        extra = {k: v for k, v in rec.items() if k not in known}
        p = Prompt(project_id=self.project.id, external_id=ext, prompt=prompt, context=context, extra=extra)
        self.s.add(p)
        self.s.flush()
        models = rec.get("models") if isinstance(rec.get("models"), list) else None
        sampling = rec.get("sampling") if isinstance(rec.get("sampling"), dict) else {}
        comps = []
        for i, t in enumerate(texts):
            model = models[i] if models and i < len(models) else rec.get("model")
            c = Completion(prompt_id=p.id, position=i, text=t, model=str(model) if model is not None else None,
                           sampling=sampling)
            self.s.add(c)
            comps.append(c)
        self.s.flush()
        self.summary["prompts"] += 1
        return p, comps

    def task(self, p: Prompt, comps: list[Completion], uncertainty: float | None = None,
             gold: dict | None = None) -> Task:
        t = Task(project_id=self.project.id, prompt_id=p.id, task_type=self.project.task_type,
                 completion_ids=[c.id for c in comps], seq=self.seq, uncertainty=uncertainty,
                 is_gold=gold is not None)
        self.seq += 1
        self.s.add(t)
        self.s.flush()
        if gold is not None:
            self.s.add(GoldAnswer(task_id=t.id, answer=gold, note=str(gold.get("note", ""))))
            self.summary["gold_tasks"] += 1
        self.summary["tasks"] += 1
        return t

    def judge(self, task: Task, labeler: Labeler, where: _Where, **answer: Any) -> None:
        try:
            add_judgment(self.s, task.id, labeler, **answer)
        except StoreError as exc:
            raise where.error(str(exc)) from None
        self.summary["judgments"] += 1

    def need_type(self, wanted: str, kind: str, where: _Where) -> None:
        if self.project.task_type != wanted:
            raise where.error(f"{kind} records need a {wanted} project; '{self.project.name}' is "
                              f"{self.project.task_type}")

    # ---- record kinds ---------------------------------------------------------------------------
    def generate(self, rec: dict, where: _Where) -> None:
        comps_in = rec.get("completions")
        if not isinstance(comps_in, list) or not comps_in:
            raise where.error("must be a non-empty list", "completions")
        if len(comps_in) > MAX_COMPLETIONS:
            raise where.error(f"has {len(comps_in)} completions; the limit is {MAX_COMPLETIONS}", "completions")
        prompt = _text_or_messages(rec.get("prompt"), where, "prompt")
        texts = [_text_or_messages(c, where, f"completions[{i}]") for i, c in enumerate(comps_in)]
        unc = rec.get("uncertainty")
        if unc is not None and (not isinstance(unc, (int, float)) or isinstance(unc, bool) or unc != unc):
            raise where.error("must be a number", "uncertainty")
        gold = self._gold(rec.get("gold"), len(texts), where)
        t = self.project.task_type
        if t in ("pairwise", "ranking") and len(texts) < 2:
            raise where.error(f"a {t} task needs at least 2 completions", "completions")
        p, comps = self.prompt(rec, where, prompt, texts)
        if t == "pairwise":
            pairs = list(itertools.combinations(comps, 2))  # K > 2: every pair is its own task
            if gold is not None and len(pairs) > 1:
                raise where.error("a gold answer in a pairwise project needs exactly 2 completions", "gold")
            for a, b in pairs:
                self.task(p, [a, b], unc, gold)
        elif t == "binary":
            if gold is not None and len(comps) > 1:
                raise where.error("a gold answer in a binary project needs exactly 1 completion", "gold")
            for c in comps:
                self.task(p, [c], unc, gold)
        else:  # ranking, rating, rewrite: all completions together
            if gold is not None and "ranking" in gold:
                gold = {**gold, "ranking": [comps[i].id for i in gold["ranking"]]}
            self.task(p, comps, unc, gold)

    def _gold(self, gold: Any, k: int, where: _Where) -> dict | None:
        if gold is None:
            return None
        if not isinstance(gold, dict):
            raise where.error("must be an object such as {\"choice\": \"A\"} or {\"ranking\": [1, 0]}", "gold")
        if "ranking" in gold:
            r = gold["ranking"]
            if not isinstance(r, list) or sorted(r) != list(range(k)):
                raise where.error(f"ranking must list the completion indices 0..{k - 1} once, best first", "gold")
        allowed = {"pairwise": ("A", "B", "tie", "both_bad"), "binary": ("good", "bad")}.get(self.project.task_type)
        if "choice" in gold and (allowed is None or gold["choice"] not in allowed):
            raise where.error(f"choice '{gold['choice']}' does not fit a {self.project.task_type} project", "gold")
        if "choice" not in gold and "ranking" not in gold:
            raise where.error("needs a 'choice' or a 'ranking'", "gold")
        return dict(gold)

    def preference(self, rec: dict, where: _Where) -> None:
        self.need_type("pairwise", "preference", where)
        fields = (rec.get("prompt"), rec.get("chosen"), rec.get("rejected"))
        if fields[0] is None:
            fields = _split_implicit_prompt(rec, where)
        prompt, chosen, rejected = (_text_or_messages(v, where, name)
                                    for v, name in zip(fields, ("prompt", "chosen", "rejected")))
        p, comps = self.prompt(rec, where, prompt, [chosen, rejected])
        t = self.task(p, comps)
        self.judge(t, self.labeler(), where, choice="A")

    def ranking(self, rec: dict, where: _Where) -> None:
        self.need_type("ranking", "ranking", where)
        prompt = _text_or_messages(rec.get("prompt"), where, "prompt")
        comps_in, ranks = rec.get("completions"), rec.get("ranks")
        if not isinstance(comps_in, list) or len(comps_in) < 2:
            raise where.error("must list at least 2 completions", "completions")
        texts = [_text_or_messages(c, where, f"completions[{i}]") for i, c in enumerate(comps_in)]
        if not isinstance(ranks, list) or sorted(ranks) != list(range(1, len(texts) + 1)):
            raise where.error(f"must give each completion a distinct rank 1..{len(texts)} (1 = best)", "ranks")
        p, comps = self.prompt(rec, where, prompt, texts)
        t = self.task(p, comps)
        order = [c.id for _, c in sorted(zip(ranks, comps), key=lambda rc: rc[0])]
        self.judge(t, self.labeler(), where, ranking=order)

    def unpaired(self, rec: dict, where: _Where) -> None:
        self.need_type("binary", "unpaired (KTO)", where)
        if not isinstance(rec.get("label"), bool):
            raise where.error("must be true or false", "label")
        prompt = _text_or_messages(rec.get("prompt"), where, "prompt")
        p, comps = self.prompt(rec, where, prompt, [_text_or_messages(rec.get("completion"), where, "completion")])
        t = self.task(p, comps)
        self.judge(t, self.labeler(), where, choice="good" if rec["label"] else "bad")

    def single(self, rec: dict, where: _Where) -> None:
        if self.project.task_type in ("pairwise", "ranking"):
            raise where.error(f"a {self.project.task_type} task needs at least 2 completions", "completion")
        self.generate({**rec, "completions": [rec.get("completion")]}, where)

    def labelstudio(self, item: Any, where: _Where) -> None:
        self.need_type("pairwise", "Label Studio pairwise", where)
        if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
            raise where.error("expected a Label Studio task with a 'data' object", "data")
        data = item["data"]
        prompt = _text_or_messages(data.get("prompt"), where, "data.prompt")
        a1 = _text_or_messages(data.get("answer1"), where, "data.answer1")
        a2 = _text_or_messages(data.get("answer2"), where, "data.answer2")
        rec = {"id": f"labelstudio-{item['id']}" if "id" in item else None,
               **{k: v for k, v in data.items() if k not in ("prompt", "answer1", "answer2")}}
        if rec["id"] is None:
            rec.pop("id")
        p, comps = self.prompt(rec, where, prompt, [a1, a2])
        t = self.task(p, comps)
        seen: set[str] = set()
        for k, ann in enumerate(item.get("annotations") or []):
            field = f"annotations[{k}]"
            if not isinstance(ann, dict):
                raise where.error("must be an object", field)
            if ann.get("was_cancelled"):
                self.summary["cancelled_annotations"] += 1
                continue
            by = ann.get("completed_by")
            if isinstance(by, dict):
                by = by.get("email") or by.get("id")
            if by is None or by == "":
                raise where.error("is missing (who made this annotation?)", f"{field}.completed_by")
            selected = [r.get("value", {}).get("selected") for r in ann.get("result") or []
                        if isinstance(r, dict) and isinstance(r.get("value"), dict) and "selected" in r["value"]]
            if len(selected) != 1 or selected[0] not in ("left", "right"):
                raise where.error("needs exactly one result whose value.selected is 'left' or 'right'",
                                  f"{field}.result")
            name = f"labelstudio:{by}"
            if name in seen:
                raise where.error(f"labeler {by} annotated this task twice", f"{field}.completed_by")
            seen.add(name)
            lab = get_or_create_labeler(self.s, name, kind="human")
            self.judge(t, lab, where, choice="A" if selected[0] == "left" else "B")

    def labeler(self) -> Labeler:
        return get_or_create_labeler(self.s, self.labeler_name, kind="human")


def import_records(s: Session, project: Project, records: Iterable[tuple[int, Any]], source: str = "<records>",
                   fmt: str = "jsonl", labeler: str | None = None) -> dict:
    """Import records into ``project`` inside the caller's transaction; raises DataError on the first bad
    row (the caller rolls back, so nothing of the file stays). Returns counts of what was added."""
    imp = _Importer(s, project, source, labeler)
    n = 0
    for line, rec in records:
        n += 1
        where = _Where(source, line)
        if fmt == "labelstudio":
            imp.labelstudio(rec, where)
            continue
        if not isinstance(rec, dict):
            raise where.error("expected a JSON object per line")
        getattr(imp, _record_kind(rec, where))(rec, where)
    if n == 0:
        raise DataError("no records found", path=source)
    assign.count_new_tasks(s, project)  # the project's queue counters (places_taken starts at 0 by itself)
    return {"records": n, **imp.summary}


def import_file(db: Database, project_name: str, path: str | os.PathLike, labeler: str | None = None,
                **settings: Any) -> dict:
    """Read ``path`` and import it into ``project_name`` (created with ``settings`` when new) in one
    transaction."""
    fmt, records = read_records(path)
    with db.write() as s:
        project = s.scalar(select(Project).where(Project.name == project_name))
        if project is None:
            if not settings.get("task_type") and records:
                first = records[0][1]
                kind = "labelstudio" if fmt == "labelstudio" else (
                    _record_kind(first, _Where(str(path), records[0][0])) if isinstance(first, dict) else "generate")
                settings["task_type"] = infer_task_type(kind, first if isinstance(first, dict) else {})
            try:
                project = create_project(s, project_name, **{k: v for k, v in settings.items() if v is not None})
            except StoreError as exc:
                raise DataError(str(exc)) from None
        summary = import_records(s, project, records, source=str(path), fmt=fmt, labeler=labeler)
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
                         "is_gold": task.is_gold, "labeler": lab.name, "labeler_kind": lab.kind,
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
