"""Finding tasks by the words of their prompt and answers, through an index of each back-end's own kind.

SQLite: an FTS5 table ``task_search`` (contentless: the words of each task, rowid = task id). PostgreSQL: a table
``task_search`` of ``tsvector`` documents with a GIN index. Migration 0004 creates it; both live outside the
models, as neither kind is portable.

The index is brought up to date by ``catch_up``, which the search runs first, not by the import: indexing costs
about as much as the import itself (the words of every answer), and an import of 100,000 tasks must stay fast.
It indexes in batches of short transactions (labelers' writes wait only for one batch), within a time budget;
a search that ran out of it says how many tasks it did not cover yet, and the next one goes on.

A search is every word, each as a prefix (``egg boil`` finds "boiled eggs"), in the prompt or any answer of the
task; case and (on SQLite) accents do not matter; words are letters and digits, everything else separates them.
"""

from __future__ import annotations

import re
import time
from typing import Callable

from sqlalchemy import Integer, column, table, text
from sqlalchemy.orm import Session

from alignloop.feedback.errors import Invalid
from alignloop.feedback.models import Database

BATCH = 500  # tasks indexed per transaction
BUDGET_S = 3.0  # indexing a search may do before it answers over what is indexed
MAX_WORDS = 12
WORD = re.compile(r"[^\W_]+")

# the words of a task: every string in its prompt (text or messages) and in each of its answers
_SQLITE_TEXT = """
  coalesce((SELECT group_concat(value, ' ') FROM json_tree(p.prompt) WHERE type = 'text'), '') || ' ' ||
  coalesce((SELECT group_concat(w, ' ') FROM (
      SELECT (SELECT group_concat(value, ' ') FROM json_tree(c.text) WHERE type = 'text') AS w
      FROM json_each(t.completion_ids) AS je JOIN completions c ON c.id = je.value)), '')"""
_PG_DOC = """
  jsonb_to_tsvector('simple', p.prompt::jsonb, '["string"]') ||
  coalesce(jsonb_to_tsvector('simple', (SELECT jsonb_agg(c.text::jsonb) FROM completions c
      WHERE c.id IN (SELECT value::int FROM jsonb_array_elements_text(t.completion_ids::jsonb))), '["string"]'),
    ''::tsvector)"""


def words_of(query: str) -> list[str]:
    words = [w.lower() for w in WORD.findall(query or "")]
    if not words:
        raise Invalid("give at least one word (letters or digits) to search for", field="text")
    if len(words) > MAX_WORDS:
        raise Invalid(f"has {len(words)} words; search for {MAX_WORDS} at most", field="text")
    return words


def available(s: Session) -> bool:
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        return s.scalar(text("SELECT count(*) FROM sqlite_master WHERE name = 'task_search'")) == 1
    return s.scalar(text("SELECT to_regclass('task_search') IS NOT NULL"))


def catch_up(db: Database, project_id: int, budget_s: float = BUDGET_S,
             clock: Callable[[], float] = time.monotonic) -> int:
    """Index the tasks not yet indexed (of every project on SQLite, whose index goes by task id; of this project
    on PostgreSQL), in batches, until done or ``budget_s`` is spent. Returns how many of this project's tasks
    are still not indexed."""
    start = clock()
    key = (db.url, project_id)
    full = clock() - _full_check.get(key, float("-inf")) >= FULL_CHECK_S
    while True:
        with db.write() as s:
            if not available(s):
                raise Invalid("this database has no text search index (SQLite without FTS5)", field="text")
            done = _index_batch(s, project_id, full)
        if done < BATCH:
            if full:
                _full_check[key] = clock()
            return 0
        if clock() - start >= budget_s:
            with db.read() as s:
                return _pending(s, project_id)


# PostgreSQL draws ids before commit, so a task may commit after tasks of higher id that are indexed already
# (two imports into one project at once). Every search indexes what is above the project's highest indexed id (an
# index look-up); at most every FULL_CHECK_S per process, a search looks for any task without a document (which
# reads every task of the project): such a straggler is found within that time.
FULL_CHECK_S = 600.0
_full_check: dict[tuple[str, int], float] = {}


def _index_batch(s: Session, project_id: int, full: bool = True) -> int:
    if s.get_bind().dialect.name == "postgresql":
        new = "NOT EXISTS (SELECT 1 FROM task_search x WHERE x.task_id = t.id)" if full else \
            "t.id > coalesce((SELECT max(x.task_id) FROM task_search x WHERE x.project_id = :p), 0)"
        res = s.execute(text(f"""
            INSERT INTO task_search (task_id, project_id, doc)
            SELECT t.id, t.project_id, {_PG_DOC} FROM tasks t JOIN prompts p ON p.id = t.prompt_id
            WHERE t.project_id = :p AND {new}
            ORDER BY t.id LIMIT :n
            ON CONFLICT (task_id) DO NOTHING"""), {"p": project_id, "n": BATCH})
        # (ON CONFLICT: another search, in this process or another server process, is indexing the same tasks;
        # this one waits for its commit and leaves those rows to it instead of failing on the duplicate key)
        return res.rowcount or 0
    # SQLite commits one writer at a time, so task ids are committed in order: everything above the highest
    # indexed id is new (tasks are never deleted but with their project)
    mark = s.scalar(text("SELECT rowid FROM task_search ORDER BY rowid DESC LIMIT 1")) or 0
    res = s.execute(text(f"""
        INSERT INTO task_search (rowid, body)
        SELECT t.id, {_SQLITE_TEXT} FROM tasks t JOIN prompts p ON p.id = t.prompt_id
        WHERE t.id > :mark ORDER BY t.id LIMIT :n"""), {"mark": mark, "n": BATCH})
    return res.rowcount or 0


def _pending(s: Session, project_id: int) -> int:
    if s.get_bind().dialect.name == "postgresql":
        return s.scalar(text("SELECT count(*) FROM tasks t WHERE t.project_id = :p AND NOT EXISTS "
                             "(SELECT 1 FROM task_search x WHERE x.task_id = t.id)"), {"p": project_id}) or 0
    mark = s.scalar(text("SELECT rowid FROM task_search ORDER BY rowid DESC LIMIT 1")) or 0
    return s.scalar(text("SELECT count(*) FROM tasks WHERE project_id = :p AND id > :mark"),
                    {"p": project_id, "mark": mark}) or 0


def sqlite_index():
    """The SQLite index as a table to join: its rowid is the task id, and its matches come in rowid order."""
    return table("task_search", column("rowid", Integer))


def sqlite_match(words: list[str]):
    return text("task_search MATCH :words").bindparams(words=" AND ".join(f'"{w}"*' for w in words))


def matching_ids(dialect: str, words: list[str]):
    """A SELECT of the ids of tasks (of any project) whose words include every one of ``words`` as a prefix."""
    if dialect == "postgresql":
        query = " & ".join(f"'{w}':*" for w in words)  # words are letters and digits only (``words_of``)
        return text("SELECT task_id FROM task_search WHERE doc @@ to_tsquery('simple', :q)").bindparams(q=query)
    query = " AND ".join(f'"{w}"*' for w in words)
    return text("SELECT rowid FROM task_search WHERE task_search MATCH :q").bindparams(q=query)
