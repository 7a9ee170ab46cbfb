"""Labeled tasks from the files labeling teams already have, each shape told from the file itself:

* **Label Studio** JSON exports (``[{"id", "data", "annotations", "predictions", ...}]``): the pairwise template
  (``data.prompt``, ``data.answer1``, ``data.answer2``; a result ``{"type": "pairwise", "value": {"selected":
  "left" | "right"}}``) and the ranker template (``data.prompt`` and a list of ``{"id", "title", "body"}`` items;
  a result ``{"type": "ranker", "value": {"ranker": {"<tag name>": [item ids, best first]}}}``). One judgment per
  annotation, by ``labelstudio:<completed_by>``.
* **Argilla 2.x** records as its SDK exports them (``dataset.records.to_json(path)``, ``to_list()``:
  ``[{"id", "fields", "metadata", "suggestions", "responses": {question: [{"value", "user_id"}]}, "vectors",
  "status", "_server_id"}]``). A ranking question whose values name the record's fields ranks those fields (the
  completions); the one other text field is the prompt. One judgment per user, by ``argilla:<user_id>``.
* **alignloop's own files**: ``alignloop generate`` candidates (``{"id", "prompt", "completions", "model", ...}``,
  no judgments) and the studio's ``raw`` export (one row per judgment; read back, the same judgments).
* **TRL** files, read row by row with ``alignloop.data.readers.row_to_record``, so the studio and the trainers take
  the same pairs from a file: preferences (explicit or implicit prompt, standard or conversational, Anthropic HH
  transcripts), rankings (``completions`` + ``ranks``) and unpaired labels (``completion`` + ``label``).

An empty answer is data. What a file holds that is neither a task nor a judgment (a cancelled annotation, a model's
prediction or suggestion, a response to a question the studio has no place for) is counted by reason in
``LabeledFile.skipped``; everything else that does not fit is an error naming the file, the line (record number in
a JSON array) and the field.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections import Counter
from typing import Any, Iterable

from alignloop.core.errors import DataError
from alignloop.data import readers
from alignloop.data.readers import _answer, _prompt, _Row
from alignloop.data.records import (
    Judgment,
    LabeledFile,
    LabeledTask,
    Preference,
    Prompt,
    Ranking,
    Unpaired,
)

#: what ``LabeledFile.shape`` says: a tool's export, or rows of TRL files and ``alignloop generate`` output
SHAPES = ("labelstudio", "argilla", "alignloop_raw", "trl", "generate", "generate+trl")
#: a preference row's margin as a studio strength (the values ``readers.STRENGTHS`` gives these words)
MARGIN_STRENGTHS = {1.0: "much_better", 0.5: "better", 0.25: "slightly_better"}
#: names of an Argilla field that holds the prompt, when a record has more than one field that is not ranked
PROMPT_FIELDS = ("prompt", "instruction", "input", "question", "query", "chat", "conversation", "messages", "text")


def read_labeled(path: str | os.PathLike) -> LabeledFile:
    """The labeled tasks of a file (any container ``readers.read_rows`` reads), its shape told from its rows."""
    return labeled_from_rows(readers.read_rows(path), str(path))


def labeled_from_text(text: str, source: str = "upload") -> LabeledFile:
    """The labeled tasks of an upload's text: a JSON array or one JSON object a line."""
    return labeled_from_rows(readers.rows_from_text(text, source), source)


def labeled_from_rows(rows: Iterable[tuple[int, Any]], source: str) -> LabeledFile:
    """The labeled tasks of ``(line, row)`` pairs from ``source``."""
    rows = list(rows)
    if not rows:
        raise DataError("no records in file", path=source)
    for n, row in rows:
        if not isinstance(row, dict):
            raise DataError("expected a JSON object per line", path=source, line=n)
    shape = detect_shape(rows[0][1])
    skipped: Counter[str] = Counter()
    if shape == "labelstudio":
        tasks = [labelstudio_task(_Row(source, n, row), skipped) for n, row in rows]
    elif shape == "argilla":
        tasks = argilla_tasks(rows, source, skipped)
    elif shape == "alignloop_raw":
        tasks = raw_export_tasks(rows, source)
    else:
        tasks = [row_task(_Row(source, n, row)) for n, row in rows]
        shape = "+".join(sorted({"trl" if t.kind else "generate" for t in tasks}))
    return LabeledFile(shape, tasks, dict(sorted(skipped.items())), rows=len(rows))


def detect_shape(row: dict[str, Any]) -> str:
    """Which tool wrote a file, from its first row."""
    if isinstance(row.get("data"), dict):
        return "labelstudio"
    if isinstance(row.get("fields"), dict) and any(k in row for k in ("responses", "suggestions", "_server_id")):
        return "argilla"
    if any(k.endswith(".responses") for k in row):
        return "argilla"
    if {"task_id", "labeler", "completions", "judgment_ids"} <= set(row):
        return "alignloop_raw"
    return "rows"


def _where(r: _Row) -> str:
    return f"{r.path}:{r.line}"


def _sub(r: _Row, prefix: str, values: dict[str, Any]) -> _Row:
    """A row over ``values`` whose errors name ``prefix.key`` (e.g. ``data.answer1``) at ``r``'s line."""
    return _Row(r.path, r.line, {f"{prefix}{k}": v for k, v in values.items()})


def _answer_value(r: _Row, value: Any, field: str) -> Any:
    """A completion as a tool gives it: text (empty is data), ``{"text": ...}``, or a list of messages."""
    if isinstance(value, dict) and "text" in value:
        value = value["text"]
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return _Row(r.path, r.line, {field: value}).messages(field)
    raise r.error(field, "must be text or a list of {'role', 'content'} messages")


def _tool_id(value: Any) -> Any:
    """A tool's id as the studio keeps it (a JSON number stays a number; a float that is an integer becomes one)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _iso_time(r: _Row, value: Any, field: str) -> str | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise r.error(field, f"expected an ISO 8601 time, got {value!r}")
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        raise r.error(field, f"expected an ISO 8601 time, got {value!r}") from None
    return value


# --------------------------------------------------------------------------------------------------
# TRL rows and alignloop generate candidates
# --------------------------------------------------------------------------------------------------

ROW_SHAPES = ("expected 'completions' (alignloop generate), 'chosen'/'rejected' (preferences), 'completions'+'ranks' "
              "(rankings) or 'completion'(+'label'); or a Label Studio task ('data'), an Argilla record ('fields') or "
              "a row of alignloop's raw export")


def row_task(r: _Row) -> LabeledTask:
    """One row of a TRL file or of ``alignloop generate`` output."""
    row = r.row
    if "chosen" in row or "rejected" in row:
        return _preference(r)
    if "completions" in row:
        return _ranking(r) if "ranks" in row else _candidates(r)
    if "completion" in row:
        if "label" in row:
            return _unpaired(r)
        return _candidates(_Row(r.path, r.line, {**{k: v for k, v in row.items() if k != "completion"},
                                                 "completions": [row["completion"]]}))
    raise r.error(None, f"not a record the studio imports: {ROW_SHAPES}")


def _preference(r: _Row) -> LabeledTask:
    row = r.row
    try:
        rec = readers.row_to_record(r, "preference")
    except DataError:
        if row.get("prompt") in (None, "") and isinstance(row.get("chosen"), list) and \
                isinstance(row.get("rejected"), list):
            return _conversations(r)
        raise
    assert isinstance(rec, Preference)
    both_bad = str(row.get("choice", "")).lower() in ("both_bad", "both-bad")
    choice = "both_bad" if both_bad else "tie" if rec.tie else "A"
    strength = MARGIN_STRENGTHS.get(rec.margin) if choice == "A" and rec.margin is not None else None
    meta = {k: v for k, v in rec.meta.items() if k != "choice"}
    if rec.margin is not None and strength is None:
        meta["margin"] = rec.margin  # no studio strength says it: kept with the prompt
    return LabeledTask(rec.prompt, [rec.chosen, rec.rejected],
                       [Judgment(choice=choice, strength=strength, where=_where(r))], kind="pairwise", meta=meta)


def _conversations(r: _Row) -> LabeledTask:
    """TRL's implicit prompt for conversations whose answers are several messages, which the trainers' reader
    refuses (a trainer's answer is one message): the prompt is the longest run of shared leading messages, and each
    answer the messages after it (TRL's ``extract_prompt`` rule)."""
    chosen, rejected = r.messages("chosen"), r.messages("rejected")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise r.error("prompt", "is missing and chosen/rejected share no leading turns")
    meta = r.meta({"chosen", "rejected", "prompt"})
    return LabeledTask(Prompt(chosen[:n]), [chosen[n:], rejected[n:]],
                       [Judgment(choice="A", where=_where(r))], kind="pairwise", meta=meta)


def _ranking(r: _Row) -> LabeledTask:
    rec = readers.row_to_record(r, "ranking")
    assert isinstance(rec, Ranking)
    if len(set(rec.ranks)) != len(rec.ranks):
        raise r.error("ranks", f"must give each completion a distinct rank (1 = best); equal ranks are a tie, and a "
                               f"labeled ranking orders every completion: {rec.ranks}")
    order = sorted(range(len(rec.ranks)), key=lambda i: rec.ranks[i])
    return LabeledTask(rec.prompt, list(rec.completions), [Judgment(ranking=order, where=_where(r))],
                       kind="ranking", meta=rec.meta)


def _unpaired(r: _Row) -> LabeledTask:
    rec = readers.row_to_record(r, "unpaired")
    assert isinstance(rec, Unpaired)
    return LabeledTask(rec.prompt, [rec.completion],
                       [Judgment(choice="good" if rec.label else "bad", where=_where(r))], kind="binary", meta=rec.meta)


def _candidates(r: _Row) -> LabeledTask:
    """``alignloop generate`` output: a prompt and its candidates, with optional ``uncertainty`` (active-learning
    order), ``context``, ``model`` / ``models``, ``sampling`` and ``gold`` (a known answer)."""
    row = r.row
    comps = row.get("completions")
    if not isinstance(comps, list) or not comps:
        raise r.error("completions", "must be a non-empty list")
    texts = [_answer_value(r, c, f"completions[{i}]") for i, c in enumerate(comps)]
    unc = row.get("uncertainty")
    if unc is not None and (not isinstance(unc, (int, float)) or isinstance(unc, bool) or math.isnan(unc)):
        raise r.error("uncertainty", "must be a number")
    context = row.get("context")
    if context is not None and not isinstance(context, (str, list, dict)):
        raise r.error("context", "must be text, a list or an object")
    gold = row.get("gold")
    if gold is not None:
        if not isinstance(gold, dict) or ("choice" not in gold and "ranking" not in gold):
            raise r.error("gold", "must be an object such as {\"choice\": \"A\"} or {\"ranking\": [1, 0]}")
        if "ranking" in gold and (not isinstance(gold["ranking"], list) or
                                  sorted(gold["ranking"]) != list(range(len(texts)))):
            raise r.error("gold", f"ranking must list the completion indices 0..{len(texts) - 1} once, best first")
    meta = r.meta({"prompt", "completions", "gold"})
    return LabeledTask(_prompt(r), texts, [], kind=None, gold=dict(gold) if gold is not None else None, meta=meta)


# --------------------------------------------------------------------------------------------------
# Label Studio
# --------------------------------------------------------------------------------------------------


def _ls_items(data: dict[str, Any]) -> list[str]:
    """Keys of ``data`` holding a ranker template's List: objects with an ``id`` each."""
    return [k for k, v in data.items() if isinstance(v, list) and v and
            all(isinstance(x, dict) and "id" in x for x in v)]


def labelstudio_task(r: _Row, skipped: Counter[str]) -> LabeledTask:
    """A task of a Label Studio JSON export: the pairwise template or the ranker template."""
    item = r.row
    data = item.get("data")
    if not isinstance(data, dict):
        raise r.error("data", "expected a Label Studio task with a 'data' object")
    d = _sub(r, "data.", data)
    if "prompt" not in data:
        raise r.error("data.prompt", "missing (the Label Studio task's prompt)")
    prompt = _prompt(d, "data.prompt")
    lists = _ls_items(data)
    meta: dict[str, Any] = {"_where": _where(r)}
    if "answer1" in data or "answer2" in data:
        kind, used = "pairwise", {"prompt", "answer1", "answer2"}
        comps = [_answer(d, "data.answer1", allow_empty=True), _answer(d, "data.answer2", allow_empty=True)]
        item_ids: list[str] = []
    elif len(lists) == 1:
        kind, used = "ranking", {"prompt", lists[0]}
        items = data[lists[0]]
        comps, item_ids, models = [], [], []
        for i, x in enumerate(items):
            field = f"data.{lists[0]}[{i}]"
            text = x.get("body", x.get("text"))
            if not isinstance(text, str):
                raise r.error(f"{field}.body", "missing or not text (the ranked answer)")
            comps.append(text)
            item_ids.append(str(x["id"]))
            models.append(x.get("title") if isinstance(x.get("title"), str) else None)
        if len(set(item_ids)) != len(item_ids):
            raise r.error(f"data.{lists[0]}", "item ids must be distinct")
        if any(models):
            meta["models"] = models
    else:
        raise r.error("data", "neither the pairwise template (data.prompt, data.answer1, data.answer2) nor the ranker "
                              "template (data.prompt and one list of {id, title, body} items)"
                              + (f"; lists of items: {', '.join(lists)}" if lists else ""))
    if "id" in item:
        meta["id"] = f"labelstudio-{_tool_id(item['id'])}"
    meta.update({k: v for k, v in data.items() if k not in used})
    for key, reason in (("predictions", "prediction"), ("drafts", "draft")):
        if isinstance(item.get(key), list) and item[key]:
            skipped[reason] += len(item[key])
    return LabeledTask(prompt, comps, _ls_judgments(r, kind, item_ids, skipped), kind=kind, meta=meta)


def _ls_judgments(r: _Row, kind: str, item_ids: list[str], skipped: Counter[str]) -> list[Judgment]:
    """One judgment per annotation that is not cancelled and holds the template's choice or ranking."""
    judgments: list[Judgment] = []
    seen: set[str] = set()
    annotations = r.row.get("annotations") or []
    if not isinstance(annotations, list):
        raise r.error("annotations", "must be a list")
    key = "selected" if kind == "pairwise" else "ranker"
    for k, ann in enumerate(annotations):
        field = f"annotations[{k}]"
        if not isinstance(ann, dict):
            raise r.error(field, "must be an object")
        if ann.get("was_cancelled"):
            skipped["cancelled_annotation"] += 1
            continue
        results = ann.get("result") or []
        if not isinstance(results, list):
            raise r.error(f"{field}.result", "must be a list")
        mine = [x for x in results if isinstance(x, dict) and isinstance(x.get("value"), dict) and key in x["value"]]
        for x in results:
            if x not in mine:
                skipped[f"unused_result:{x.get('type', '?') if isinstance(x, dict) else '?'}"] += 1
        if not mine:
            skipped["annotation_without_choice" if kind == "pairwise" else "annotation_without_ranking"] += 1
            continue
        if len(mine) > 1:
            raise r.error(f"{field}.result", f"holds {len(mine)} {key} results; one annotation gives one")
        by = ann.get("completed_by")
        if isinstance(by, dict):
            by = by.get("email") or by.get("id")
        if by is None or by == "":
            raise r.error(f"{field}.completed_by", "is missing (who made this annotation?)")
        name = f"labelstudio:{_tool_id(by)}"
        if name in seen:
            raise r.error(f"{field}.completed_by", f"labeler {by} annotated this task twice")
        seen.add(name)
        value = mine[0]["value"][key]
        lead = ann.get("lead_time")  # seconds
        seconds = lead if isinstance(lead, (int, float)) and not isinstance(lead, bool) and lead >= 0 else None
        j = Judgment(labeler=name, where=_where(r), duration_ms=round(seconds * 1000) if seconds is not None else None,
                     created_at=_iso_time(r, ann.get("created_at"), f"{field}.created_at"))
        if kind == "pairwise":
            if value not in ("left", "right"):
                raise r.error(f"{field}.result", f"value.selected must be 'left' or 'right', got {value!r}")
            j.choice = "A" if value == "left" else "B"
        else:
            j.ranking = _ls_ranking(r, f"{field}.result", value, item_ids)
        judgments.append(j)
    return judgments


def _ls_ranking(r: _Row, field: str, value: Any, item_ids: list[str]) -> list[int]:
    """A ranker result: item ids best first, as a list or under the Ranker tag's name (``{"rank": [ids]}``)."""
    if isinstance(value, dict):
        if len(value) != 1:
            raise r.error(field, f"value.ranker groups the items into buckets ({', '.join(value)}): a grouping, not "
                                 "a ranking; the studio imports the ranker template without Bucket tags")
        value = next(iter(value.values()))
    if not isinstance(value, list) or sorted(map(str, value)) != sorted(item_ids):
        raise r.error(field, f"value.ranker must list every item id once, best first ({', '.join(item_ids)}), "
                             f"got {value!r}")
    return [item_ids.index(str(v)) for v in value]


# --------------------------------------------------------------------------------------------------
# Argilla 2.x
# --------------------------------------------------------------------------------------------------


def _ranked_names(value: Any) -> list[tuple[str, int | None]] | None:
    """An Argilla ranking response as ``[(option, rank or None)]``: the SDK's list of option values best first, or
    the server's ``[{"value", "rank"}]``. None when the value is not a ranking."""
    if not isinstance(value, list) or not value:
        return None
    if all(isinstance(v, str) for v in value):
        return [(v, None) for v in value]
    if all(isinstance(v, dict) and isinstance(v.get("value"), str) for v in value):
        return [(v["value"], v.get("rank")) for v in value]
    return None


def argilla_tasks(rows: list[tuple[int, dict[str, Any]]], source: str, skipped: Counter[str]) -> list[LabeledTask]:
    """Argilla 2.x records: the ranking question's responses are the judgments; its options (the record's field
    names) are the completions."""
    for n, row in rows:
        if not isinstance(row.get("fields"), dict):
            r = _Row(source, n, row)
            if any(k.endswith(".responses") for k in row):
                raise r.error(None, "an Argilla export flattened with to_list(flatten=True): export the records "
                                    "with dataset.records.to_json(path) or to_list() (nested)")
            raise r.error("fields", "expected an Argilla record with a 'fields' object")
    # the ranking questions and the fields they rank, over the whole file (a record without responses has no
    # ranking to show which fields are the answers)
    rankings: dict[str, list[str]] = {}
    for _, row in rows:
        fields = row["fields"]
        for q, responses in (row.get("responses") or {}).items():
            for resp in responses if isinstance(responses, list) else []:
                names = _ranked_names(resp.get("value")) if isinstance(resp, dict) else None
                if names and all(name in fields for name, _ in names):
                    ranked = rankings.setdefault(q, [])
                    ranked += [f for f in fields if f in {name for name, _ in names} and f not in ranked]
    if len(rankings) > 1:
        raise DataError(f"holds {len(rankings)} ranking questions ({', '.join(rankings)}); a studio task keeps one "
                        "ranking", path=source)
    question, answer_fields = next(iter(rankings.items())) if rankings else (None, [])
    return [_argilla_task(_Row(source, n, row), question, answer_fields, skipped) for n, row in rows]


def _argilla_prompt_field(r: _Row, others: list[str]) -> str:
    if len(others) == 1:
        return others[0]
    named = [f for f in PROMPT_FIELDS if f in others]
    if named:
        return named[0]
    raise r.error("fields", f"cannot tell the prompt field among {', '.join(others) or 'none'}: name it one of "
                            f"{', '.join(PROMPT_FIELDS)}")


def _argilla_task(r: _Row, question: str | None, answer_fields: list[str], skipped: Counter[str]) -> LabeledTask:
    row = r.row
    fields = row["fields"]
    if not answer_fields:  # no ranking anywhere in the file: every field but the prompt is an answer
        prompt_field = _argilla_prompt_field(r, list(fields))
        answer_fields = [f for f in fields if f != prompt_field]
    else:
        prompt_field = _argilla_prompt_field(r, [f for f in fields if f not in answer_fields])
    f = _sub(r, "fields.", fields)
    for name in answer_fields:
        if name not in fields:
            raise r.error(f"fields.{name}", "missing (an answer the ranking question ranks)")
    if not answer_fields:
        raise r.error("fields", "holds no answer to judge (only the prompt)")
    prompt = _prompt(f, f"fields.{prompt_field}")
    comps = [_answer_value(r, fields[name], f"fields.{name}") for name in answer_fields]
    meta: dict[str, Any] = {"_where": _where(r)}
    if row.get("id") is not None:
        meta["id"] = f"argilla-{_tool_id(row['id'])}"
    meta.update({k: v for k, v in fields.items() if k != prompt_field and k not in answer_fields})
    if row.get("metadata"):
        meta["metadata"] = row["metadata"]
    if isinstance(row.get("suggestions"), dict) and row["suggestions"]:
        skipped["suggestion"] += len(row["suggestions"])
    if isinstance(row.get("vectors"), dict) and row["vectors"]:
        skipped["vector"] += len(row["vectors"])
    responses = row.get("responses") or {}
    if not isinstance(responses, dict):
        raise r.error("responses", "must map each question to its list of responses")
    judgments = []
    seen: set[str] = set()
    for q, answers in responses.items():
        if not isinstance(answers, list):
            raise r.error(f"responses.{q}", "must be a list of {value, user_id} responses")
        for k, resp in enumerate(answers):
            field = f"responses.{q}[{k}]"
            if not isinstance(resp, dict):
                raise r.error(field, "must be an object with 'value' and 'user_id'")
            status = resp.get("status")
            if status in ("draft", "discarded"):
                skipped[f"{status}_response"] += 1
                continue
            if q != question:
                skipped[f"unused_question:{q}"] += 1
                continue
            user = resp.get("user_id")
            if user in (None, ""):
                raise r.error(f"{field}.user_id", "is missing (who gave this response?)")
            name = f"argilla:{user}"
            if name in seen:
                raise r.error(f"{field}.user_id", f"user {user} answered this question twice")
            seen.add(name)
            judgments.append(_argilla_judgment(r, field, resp.get("value"), answer_fields, name))
    kind = "pairwise" if len(comps) == 2 else "ranking"
    return LabeledTask(prompt, comps, judgments, kind=kind, meta=meta)


def _argilla_judgment(r: _Row, field: str, value: Any, answer_fields: list[str], name: str) -> Judgment:
    names = _ranked_names(value)
    if names is None or sorted(n for n, _ in names) != sorted(answer_fields):
        raise r.error(f"{field}.value", f"must rank each of {', '.join(answer_fields)} once, best first; got {value!r}")
    ranks = [rank for _, rank in names]
    order = [answer_fields.index(n) for n, _ in names]
    if all(rank is not None for rank in ranks):
        order = [answer_fields.index(n) for n, _ in sorted(names, key=lambda nr: nr[1])]
        if len(set(ranks)) < len(ranks):
            if len(answer_fields) == 2:
                return Judgment(labeler=name, choice="tie", where=_where(r))
            raise r.error(f"{field}.value", f"ranks {ranks} hold a tie; a ranking of more than 2 answers in the "
                                            "studio orders every answer")
    if len(answer_fields) == 2:
        return Judgment(labeler=name, choice="A" if order[0] == 0 else "B", where=_where(r))
    return Judgment(labeler=name, ranking=order, where=_where(r))


# --------------------------------------------------------------------------------------------------
# alignloop's raw export (a round trip)
# --------------------------------------------------------------------------------------------------


def raw_export_tasks(rows: list[tuple[int, dict[str, Any]]], source: str) -> list[LabeledTask]:
    """The studio's ``raw`` export, one row per judgment, back as tasks: a prompt's completions are those its rows
    show (ordered by their ids, which follow the import order), and each judgment names the completions its task
    held. Tasks without judgments are not in a raw export."""
    groups: dict[str, list[_Row]] = {}
    completions: dict[str, dict[int, tuple[Any, Any]]] = {}
    for n, row in rows:
        r = _Row(source, n, row)
        if not {"task_id", "labeler", "completions", "prompt_id"} <= set(row):
            raise r.error(None, "expected a row of alignloop's raw export (task_id, prompt_id, labeler, completions)")
        pid = row["prompt_id"]
        if not isinstance(pid, (str, int)) or isinstance(pid, bool):
            raise r.error("prompt_id", "must be a string")
        comps = row["completions"]
        if not isinstance(comps, list) or not comps or not all(isinstance(c, dict) and isinstance(c.get("id"), int)
                                                               for c in comps):
            raise r.error("completions", "must be a list of {id, text, model}")
        seen = completions.setdefault(str(pid), {})
        for i, c in enumerate(comps):
            seen.setdefault(c["id"], (_answer_value(r, c.get("text"), f"completions[{i}].text"), c.get("model")))
        groups.setdefault(str(pid), []).append(r)
    tasks = []
    for pid, members in groups.items():
        ids = sorted(completions[pid])
        index = {cid: i for i, cid in enumerate(ids)}
        first = members[0]
        row = first.row
        prompt = row.get("prompt")
        if isinstance(prompt, list):
            p = Prompt(first.messages("prompt"))
        else:
            p = Prompt([{"role": "user", "content": first.text("prompt")}], text_given=True)
        meta: dict[str, Any] = {"_where": _where(first), "id": pid}
        if row.get("context") is not None:
            meta["context"] = row["context"]
        models = [completions[pid][cid][1] for cid in ids]
        if any(m is not None for m in models):
            meta["models"] = models
        gold = None
        judgments = []
        for r in members:
            judgments.append(_raw_judgment(r, index))
            g = r.row.get("gold")
            if isinstance(g, dict) and gold is None:
                gold = _map_ids(r, "gold", g, index)
        tasks.append(LabeledTask(p, [completions[pid][cid][0] for cid in ids], judgments, kind=row.get("task_type"),
                                 gold=gold, meta=meta))
    return tasks


def _map_ids(r: _Row, field: str, answer: dict[str, Any], index: dict[int, int]) -> dict[str, Any]:
    out = dict(answer)
    if "ranking" in out:
        out["ranking"] = _indices(r, field, out["ranking"], index)
    return out


def _indices(r: _Row, field: str, ids: Any, index: dict[int, int]) -> list[int]:
    if not isinstance(ids, list) or not all(isinstance(c, int) and c in index for c in ids):
        raise r.error(field, f"must list completion ids of this row's completions, got {ids!r}")
    return [index[c] for c in ids]


def _per_completion(r: _Row, field: str, value: Any, index: dict[int, int]) -> dict[int, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise r.error(field, "must map completion ids to {name: value}")
    out = {}
    for cid, inner in value.items():
        try:
            out[index[int(cid)]] = inner
        except (KeyError, ValueError):
            raise r.error(field, f"'{cid}' is not one of this row's completion ids") from None
    return out


def _raw_judgment(r: _Row, index: dict[int, int]) -> Judgment:
    row = r.row
    own = _indices(r, "completions", [c["id"] for c in row["completions"]], index)
    labeler = row.get("labeler")
    if not isinstance(labeler, str) or not labeler:
        raise r.error("labeler", "must be a labeler's name")
    return Judgment(
        labeler=labeler, labeler_kind=str(row.get("labeler_kind") or "human"), choice=row.get("choice"),
        strength=row.get("strength"),
        ranking=_indices(r, "ranking", row["ranking"], index) if row.get("ranking") is not None else None,
        ratings=_per_completion(r, "ratings", row.get("ratings"), index),
        flags=_per_completion(r, "flags", row.get("flags"), index), rewrite=row.get("rewrite"),
        skip_reason=(row.get("skip_reason") or "skipped") if row.get("skipped") else None,
        completions=None if own == list(range(len(index))) else own,
        duration_ms=row.get("duration_ms") if isinstance(row.get("duration_ms"), int) else None,
        created_at=_iso_time(r, row.get("created_at"), "created_at"),
        display_order=_indices(r, "display_order", row["display_order"], index)
        if row.get("display_order") is not None else None,
        where=_where(r))

