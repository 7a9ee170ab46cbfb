"""Read data files into records: JSONL, JSON, CSV, Parquet (each optionally gzip-compressed) and saved
Hugging Face ``datasets`` folders, with the record kind detected from the columns.

Adapters for the real data the project ships: Anthropic HH transcripts (``\\n\\nHuman:`` / ``\\n\\nAssistant:``)
and FinanceBench questions (question + evidence as context + answer), and the ``question, context, answer`` CSV
shape financial teams keep their labelled Q&A in.

Every problem is reported as ``file:line: field 'x': what is wrong`` and nothing is dropped silently.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any, Iterator

from alignloop.core.errors import DataError
from alignloop.core.files import write_jsonl  # noqa: F401  (the one atomic JSONL writer; re-exported)
from alignloop.data.context import CONTEXT_CHARS, build_context, evidence_passages
from alignloop.data.records import (
    Preference,
    Prompt,
    PromptCompletion,
    PromptRecord,
    Ranking,
    Record,
    TextRecord,
    Unpaired,
)

KINDS = ("text", "prompt_completion", "prompt", "preference", "unpaired", "ranking")
ROLES = ("system", "user", "assistant")
QA_INSTRUCTION = "Answer the question using the context. If the context does not contain the answer, say so."


# --------------------------------------------------------------------------------------------------
# Rows: (line number, dict) from any supported file
# --------------------------------------------------------------------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def decode_text(data: bytes, source: str | None = None) -> str:
    """Strict UTF-8 (an optional BOM is dropped): a byte that is not UTF-8 is an error naming its line and column,
    never a silent U+FFFD in the data."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise DataError(f"not valid UTF-8 (byte 0x{data[start]:02x} at column {column})", path=source,
                        line=line) from None


def rows_from_text(text: str, source: str | None = None, json_document: bool = False
                   ) -> list[tuple[int, dict[str, Any]]]:
    """``(line, row)`` pairs of a JSON text: a JSON array of objects (``line`` = the record number), one object a line
    (JSONL), or with ``json_document`` one JSON value: an array, or an object holding the array under ``data``,
    ``rows``, ``records`` or ``examples``. An upload is read by the same rules as a file."""
    if text.lstrip().startswith("[") or json_document:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON ({exc.msg})", path=source, line=exc.lineno) from None
        if isinstance(data, dict):  # {"data": [...]} or {"rows": [...]}
            for key in ("data", "rows", "records", "examples"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
            else:
                raise DataError("expected a list of objects (or an object with a 'data' list)", path=source)
        if not isinstance(data, list):
            raise DataError("expected a list of objects", path=source)
        for n, row in enumerate(data, start=1):
            if not isinstance(row, dict):
                raise DataError(f"record {n} is not an object", path=source, line=n)
        return list(enumerate(data, start=1))
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"malformed JSON ({exc.msg} at column {exc.colno})", path=source, line=n) from None
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {type(row).__name__}", path=source, line=n)
        rows.append((n, row))
    return rows


def read_rows(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield ``(line, row)`` pairs; ``line`` is the 1-based line (JSONL, CSV) or record number (JSON, Parquet)."""
    p = Path(path)
    if not p.exists():
        raise DataError("file not found", path=str(p))
    if p.is_dir():
        yield from _read_datasets_folder(p)
        return
    kind = _base_suffix(p)
    try:
        if kind in (".jsonl", ".ndjson", ".json"):
            with (gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")) as fh:
                data = fh.read()
            yield from rows_from_text(decode_text(data, str(p)), str(p), json_document=kind == ".json")
        elif kind in (".csv", ".tsv"):
            with _open_text(p) as fh:
                reader = csv.DictReader(fh, delimiter="\t" if kind == ".tsv" else ",")
                if not reader.fieldnames:
                    raise DataError("empty CSV file (no header row)", path=str(p))
                for row in reader:
                    n = reader.line_num
                    if None in row:
                        raise DataError("more values than header columns", path=str(p), line=n)
                    yield n, dict(row)
        elif kind == ".parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(p if p.suffix != ".gz" else gzip.open(p, "rb"))
            for n, row in enumerate(table.to_pylist(), start=1):
                yield n, row
        else:
            raise DataError(
                f"unsupported file type '{kind or p.name}': use .jsonl, .json, .csv, .tsv or .parquet "
                "(optionally .gz), or a saved datasets folder", path=str(p))
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read file ({exc})", path=str(p)) from None


def _read_datasets_folder(p: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """A folder written by ``datasets.Dataset.save_to_disk``: Arrow stream files listed in state.json.

    Read with pyarrow directly so that ``datasets`` (and its dependencies) is not needed for this.
    """
    import pyarrow as pa

    state = p / "state.json"
    if state.exists():
        files = [p / f["filename"] for f in json.loads(state.read_text()).get("_data_files", [])]
    else:
        files = sorted(p.glob("*.arrow"))
    if not files:
        # a DatasetDict folder: take the train split, as `load_from_disk(...)["train"]` would
        if (p / "train").is_dir():
            yield from _read_datasets_folder(p / "train")
            return
        raise DataError("not a saved datasets folder (no state.json / .arrow files)", path=str(p))
    n = 0
    for f in files:
        with pa.memory_map(str(f)) as src:
            try:
                table = pa.ipc.open_stream(src).read_all()
            except pa.ArrowInvalid:
                table = pa.ipc.open_file(src).read_all()
        for row in table.to_pylist():
            n += 1
            yield n, row


# --------------------------------------------------------------------------------------------------
# Kind detection and conversion to records
# --------------------------------------------------------------------------------------------------


def detect_kind(columns: set[str]) -> str:
    """The record kind a row with these columns holds (TRL's dataset types plus the shapes above)."""
    if {"chosen", "rejected"} <= columns:
        return "preference"
    if {"completions", "ranks"} <= columns:
        return "ranking"
    if "label" in columns and "completion" in columns:
        return "unpaired"
    if "completion" in columns and ("prompt" in columns or "question" in columns):
        return "prompt_completion"
    if "answer" in columns and "question" in columns:
        return "prompt_completion"
    if "messages" in columns:
        return "prompt_completion"
    if "prompt" in columns or "question" in columns:
        return "prompt"
    if "text" in columns:
        return "text"
    raise ValueError(
        "cannot tell the data format from its columns "
        f"({', '.join(sorted(columns)) or 'none'}); expected one of: text | messages | prompt+completion | "
        "prompt+chosen+rejected | chosen+rejected | prompt+completion+label | prompt+completions+ranks | "
        "question(+context)(+answer)")


class _Row:
    """A row with its location, for error messages."""

    def __init__(self, path: str, line: int, row: dict[str, Any]):
        self.path, self.line, self.row = path, line, row

    def error(self, field: str | None, message: str) -> DataError:
        return DataError(message, path=self.path, line=self.line, field=field)

    def text(self, field: str, allow_empty: bool = False) -> str:
        if field not in self.row or self.row[field] is None:
            raise self.error(field, "missing")
        value = self.row[field]
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise self.error(field, "empty text")
        return value

    def messages(self, field: str) -> list[dict[str, str]]:
        value = self.row.get(field)
        if not isinstance(value, list) or not value:
            raise self.error(field, "expected a non-empty list of {role, content} messages")
        out = []
        for i, m in enumerate(value):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise self.error(field, f"message {i} must be an object with 'role' and 'content'")
            if m["role"] not in ROLES:
                raise self.error(field, f"message {i} has role '{m['role']}', expected one of {', '.join(ROLES)}")
            if not isinstance(m["content"], str):
                raise self.error(field, f"message {i} content must be a string")
            out.append({"role": m["role"], "content": m["content"]})
        return out

    def meta(self, used: set[str]) -> dict[str, Any]:
        meta = {k: v for k, v in self.row.items() if k not in used}
        meta["_where"] = f"{self.path}:{self.line}"
        return meta


def is_hh_transcript(text: str) -> bool:
    return "\n\nHuman:" in text and "\n\nAssistant:" in text


def parse_hh(text: str) -> list[dict[str, str]]:
    """Split an Anthropic HH transcript into chat messages.

    ``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` → ``[{"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"}]``. Text before the first marker is an error (not a transcript).
    """
    markers = {"\n\nHuman:": "user", "\n\nAssistant:": "assistant"}
    messages: list[dict[str, str]] = []
    pos = 0
    if not text.startswith("\n\nHuman:"):
        raise ValueError("an HH transcript starts with '\\n\\nHuman:'")
    while pos < len(text):
        role, start = None, None
        for marker, r in markers.items():
            if text.startswith(marker, pos):
                role, start = r, pos + len(marker)
                break
        assert role is not None and start is not None
        nxt = [i for i in (text.find("\n\nHuman:", start), text.find("\n\nAssistant:", start)) if i != -1]
        end = min(nxt) if nxt else len(text)
        messages.append({"role": role, "content": text[start:end].strip()})
        pos = end
    return messages


def qa_prompt(question: str, context: str | None = None) -> Prompt:
    """The prompt for a question answered from a context (FinanceBench, the Q&A CSV, ``model.predict``)."""
    if context:
        content = f"{QA_INSTRUCTION}\n\nContext:\n{context.strip()}\n\nQuestion: {question.strip()}"
    else:
        content = question.strip()
    return Prompt([{"role": "user", "content": content}])


def _prompt(r: _Row, field: str = "prompt") -> Prompt:
    value = r.row.get(field)
    if isinstance(value, list):
        return Prompt(r.messages(field))
    text = r.text(field)
    if is_hh_transcript(text):
        msgs = parse_hh(text)
        if msgs and msgs[-1]["role"] == "assistant" and not msgs[-1]["content"]:
            msgs = msgs[:-1]
        return Prompt(msgs)
    return Prompt([{"role": "user", "content": text}], text_given=True)


def _answer(r: _Row, field: str, allow_empty: bool = False) -> str:
    """An answer column: a string, or a conversational list whose last message is the assistant's.

    ``allow_empty``: an empty answer is data where answers are compared or labelled (preferences, rankings,
    unpaired labels: the model said nothing, and a labeler judged that); a demonstration to imitate must say
    something."""
    value = r.row.get(field)
    if isinstance(value, list):
        msgs = r.messages(field)
        if msgs[-1]["role"] != "assistant":
            raise r.error(field, "the last message must be the assistant's answer")
        if not allow_empty and not msgs[-1]["content"].strip():
            raise r.error(field, "empty text")
        return msgs[-1]["content"]
    return r.text(field, allow_empty=allow_empty)


def _question_prompt(r: _Row, context_chars: int | None = CONTEXT_CHARS) -> tuple[Prompt, set[str]]:
    """question (+ context, or FinanceBench evidence) → prompt. A ``context`` is used as given; ``evidence`` (a list
    of ``{"evidence_text": ...}`` items, or a string) becomes the context :func:`build_context` picks for the
    question within ``context_chars`` characters (``None`` or 0: all of it)."""
    question = r.text("question")
    context = None
    used = {"question"}
    if "context" in r.row and r.row["context"] not in (None, ""):
        context = r.text("context")
        used.add("context")
    elif r.row.get("evidence") not in (None, ""):  # FinanceBench
        try:
            passages = evidence_passages(r.row["evidence"])
        except ValueError as exc:
            raise r.error("evidence", str(exc)) from None
        context = build_context(question, passages, context_chars)
        used.add("evidence")
    return qa_prompt(question, context), used


def _implicit_prompt(r: _Row) -> tuple[Prompt, str, str]:
    """TRL's implicit-prompt preference: whole dialogues in ``chosen`` and ``rejected`` sharing every turn but the
    last answer (the HH format)."""
    chosen_v, rejected_v = r.row.get("chosen"), r.row.get("rejected")
    if isinstance(chosen_v, list) and isinstance(rejected_v, list):
        c, rj = r.messages("chosen"), r.messages("rejected")
        if len(c) < 2 or c[:-1] != rj[:-1]:
            raise r.error("rejected", "chosen and rejected must share every message but the last")
        if c[-1]["role"] != "assistant" or rj[-1]["role"] != "assistant":
            raise r.error("chosen", "the last message must be the assistant's answer")
        return Prompt(c[:-1]), c[-1]["content"], rj[-1]["content"]
    chosen, rejected = r.text("chosen"), r.text("rejected")
    if is_hh_transcript(chosen) and is_hh_transcript(rejected):
        try:
            c, rj = parse_hh(chosen), parse_hh(rejected)
        except ValueError as exc:
            raise r.error("chosen", str(exc)) from None
        # the prompt is the longest run of shared turns that ends with the human's turn. In the real HH data the
        # two transcripts share every turn but the last answer, except a handful (4 of 1,812 harmless-base rows)
        # where an answer swallowed a "Human:" without its blank line; there the rest of each transcript is the
        # answer, kept rather than dropped. An empty answer is kept too: "saying nothing" is a real choice
        # (3 rows of the harmless-base data).
        k = 0
        while k < min(len(c), len(rj)) - 1 and c[k] == rj[k]:
            k += 1
        while k > 0 and c[k - 1]["role"] != "user":
            k -= 1
        if k == 0:
            raise r.error("rejected", "chosen and rejected transcripts share no human turn to take the prompt from")
        return (Prompt(c[:k]), "\n\n".join(m["content"] for m in c[k:]),
                "\n\n".join(m["content"] for m in rj[k:]))
    # plain strings: the longest common prefix is the prompt (raw text)
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    # do not split inside a word: back up to the last whitespace
    while n > 0 and not chosen[n - 1].isspace():
        n -= 1
    if n == 0:
        raise r.error("prompt", "missing, and chosen/rejected share no common prefix to take it from")
    return Prompt([{"role": "user", "content": chosen[:n]}], raw=True), chosen[n:], rejected[n:]


STRENGTHS = {"much better": 1.0, "better": 0.5, "slightly better": 0.25, "negligibly better": 0.1}


def _margin(r: _Row) -> float | None:
    for field in ("margin", "strength"):
        if field in r.row and r.row[field] not in (None, ""):
            v = r.row[field]
            if isinstance(v, str) and v.strip().lower() in STRENGTHS:
                return STRENGTHS[v.strip().lower()]
            try:
                return float(v)
            except (TypeError, ValueError):
                raise r.error(field, f"expected a number or one of {', '.join(STRENGTHS)}, got {v!r}") from None
    return None


def _bool(r: _Row, field: str) -> bool:
    v = r.row.get(field)
    if isinstance(v, bool):
        return v
    if isinstance(v, (int, float)) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in ("true", "false", "1", "0", "yes", "no", "good", "bad"):
        return v.strip().lower() in ("true", "1", "yes", "good")
    raise r.error(field, f"expected true or false, got {v!r}")


def row_to_record(r: _Row, kind: str, context_chars: int | None = CONTEXT_CHARS) -> Record:
    """``r`` as a record of ``kind``; FinanceBench evidence becomes a context of ``context_chars`` characters."""
    row = r.row
    if kind == "preference":
        if "prompt" in row and row["prompt"] not in (None, ""):
            prompt = _prompt(r)
            chosen, rejected = _answer(r, "chosen", allow_empty=True), _answer(r, "rejected", allow_empty=True)
        else:
            prompt, chosen, rejected = _implicit_prompt(r)
        tie = bool(row.get("tie")) or str(row.get("choice", "")).lower() in ("tie", "both_bad", "both-bad")
        return Preference(prompt, chosen, rejected, margin=_margin(r), tie=tie,
                          meta=r.meta({"prompt", "chosen", "rejected", "margin", "strength", "tie"}))
    if kind == "ranking":
        completions, ranks = row.get("completions"), row.get("ranks")
        if not isinstance(completions, list) or len(completions) < 2:
            raise r.error("completions", "expected a list of at least 2 answers")
        # each answer a string, or an assistant message list (conversational), as a preference's answers
        completions = [_answer(_Row(r.path, r.line, {f"completions[{i}]": c}), f"completions[{i}]", allow_empty=True)
                       for i, c in enumerate(completions)]
        if not isinstance(ranks, list) or len(ranks) != len(completions):
            raise r.error("ranks", f"expected a list of {len(completions)} integers (one per completion)")
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in ranks):
            raise r.error("ranks", "ranks must be integers (1 = best)")
        return Ranking(_prompt(r), list(completions), list(ranks), meta=r.meta({"prompt", "completions", "ranks"}))
    if kind == "unpaired":
        return Unpaired(_prompt(r), _answer(r, "completion", allow_empty=True), _bool(r, "label"),
                        meta=r.meta({"prompt", "completion", "label"}))
    if kind == "prompt_completion":
        if "messages" in row and "prompt" not in row:
            msgs = r.messages("messages")
            if msgs[-1]["role"] != "assistant":
                raise r.error("messages", "the last message must be the assistant's answer to train on")
            if not msgs[-1]["content"].strip():
                raise r.error("messages", "empty final answer")
            return PromptCompletion(Prompt(msgs[:-1]), msgs[-1]["content"], meta=r.meta({"messages"}))
        if "question" in row and "prompt" not in row:
            prompt, used = _question_prompt(r, context_chars)
            field = "completion" if "completion" in row else "answer"
            return PromptCompletion(prompt, _answer(r, field), meta=r.meta(used | {field}))
        return PromptCompletion(_prompt(r), _answer(r, "completion"), meta=r.meta({"prompt", "completion"}))
    if kind == "prompt":
        if "question" in row and "prompt" not in row:
            prompt, used = _question_prompt(r, context_chars)
            return PromptRecord(prompt, meta=r.meta(used))
        return PromptRecord(_prompt(r), meta=r.meta({"prompt"}))
    if kind == "text":
        return TextRecord(r.text("text"), meta=r.meta({"text"}))
    raise ValueError(kind)


def read_records(path: str | os.PathLike, kind: str | None = None, limit: int | None = None,
                 context_chars: int | None = CONTEXT_CHARS) -> list[Record]:
    """Read a whole file into records of one kind (detected from the first row's columns when not given).

    Question rows with FinanceBench ``evidence`` get the context :func:`alignloop.data.context.build_context` picks
    for the question within ``context_chars`` characters (``None`` or 0: all of it); a ``context`` column is used
    as given.

    ``kind="prompt"`` also accepts files of other kinds and keeps only their prompts (with the reference answer
    in ``meta["answer"]`` when the file has one), so any data file can feed ``generate`` and the RL stages.
    """
    path = str(path)
    records: list[Record] = []
    detected: str | None = None
    for n, row in read_rows(path):
        r = _Row(path, n, row)
        if detected is None:
            try:
                detected = detect_kind(set(row))
            except ValueError as exc:
                raise DataError(str(exc), path=path, line=n) from None
            if kind is not None and kind != detected and not _convertible(detected, kind):
                raise DataError(f"expected {kind} data but the columns say {detected} "
                                f"({', '.join(sorted(row))})", path=path, line=n)
        rec = row_to_record(r, detected, context_chars)
        if kind is not None and kind != detected:
            rec = _convert(rec, kind)
        records.append(rec)
        if limit is not None and len(records) >= limit:
            break
    if not records:
        raise DataError("no records in file", path=path)
    return records


def _convertible(have: str, want: str) -> bool:
    return want == "prompt" or (have == "preference" and want == "unpaired") or (
        have == "ranking" and want == "preference")


def _convert(rec: Record, want: str) -> Record:
    if want == "prompt":
        meta = dict(getattr(rec, "meta", {}))
        if isinstance(rec, PromptCompletion):
            meta.setdefault("answer", rec.completion)
        if isinstance(rec, TextRecord):
            raise DataError("text records have no prompt", path=meta.get("_where"))
        return PromptRecord(rec.prompt, meta=meta)  # type: ignore[union-attr]
    raise DataError(f"cannot use {type(rec).__name__} as {want}")


def read_preferences(path: str | os.PathLike, limit: int | None = None, ties: str = "skip") -> list[Preference]:
    """Preference pairs from a preference file, or from a ranking file expanded to its pairs, each ranking counting
    as one comparison: ``ties="skip"`` leaves tied completions out and weights each kept pair 1/(pairs kept);
    ``ties="equal"`` keeps all K·(K-1)/2 pairs, the tied ones as ties (``tie=True``), each weighted 1/C(K,2).
    (Tied pairs of a preference file are returned either way, flagged; the trainer decides.)"""
    if ties not in ("skip", "equal"):
        raise ValueError(f"ties must be 'skip' or 'equal', got {ties!r}")
    records = read_records(path, limit=limit)
    out: list[Preference] = []
    for rec in records:
        if isinstance(rec, Preference):
            out.append(rec)
        elif isinstance(rec, Ranking):
            group = rec.meta.get("id", rec.meta["_where"])
            pairs = rec.pairs(keep_ties=ties == "equal")
            for i, j, tie in pairs:
                meta = dict(rec.meta, group=group, weight=1.0 / len(pairs))
                out.append(Preference(rec.prompt, rec.completions[i], rec.completions[j], tie=tie, meta=meta))
        else:
            raise DataError(f"expected preference or ranking data, found {type(rec).__name__}",
                            path=rec.meta.get("_where") if hasattr(rec, "meta") else str(path))
    return out


def public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta without internal keys (``_where``), for writing back out."""
    return {k: v for k, v in meta.items() if not k.startswith("_")}
