"""The few calls serving makes into the feedback studio's Python API (``alignloop.feedback``), in one file so
only this file changes when that API moves.

Feedback from use becomes ordinary studio data: the served prompt and answer are imported as a prompt with
its completion(s) and a task, and the user's verdict is a judgment by a labeler of kind ``"user"``. A project
has one task type, so feedback goes to up to three projects named after ``--feedback-project NAME``:

* ``NAME``           binary tasks: thumbs up/down ("good"/"bad"), with the user's edited answer as ``rewrite``
* ``NAME-rewrite``   rewrite tasks: an edited better answer without a thumbs verdict
* ``NAME-pairwise``  pairwise tasks: the user's choice between two served variants (A, B, tie, both_bad)

The studio's judgments have no free-text comment field yet, so a comment is kept with the prompt
(``extra["user_comments"]``, with the judgment id it came with).
"""

from __future__ import annotations

from typing import Any

THUMBS = {"up": "good", "down": "bad"}
#: the studio refuses empty completions; a model that said nothing still deserves its thumbs-down
EMPTY_ANSWER = "(the model gave an empty answer)"


def _nonempty(text: str) -> str:
    return text if isinstance(text, str) and text.strip() else EMPTY_ANSWER


class FeedbackUnavailable(RuntimeError):
    """The feedback studio package is not installed in this checkout."""


def available() -> bool:
    try:
        import alignloop.feedback.store  # noqa: F401
    except ImportError:
        return False
    return True


def _store():
    try:
        from alignloop.feedback import io, store
    except ImportError as exc:
        raise FeedbackUnavailable(f"the feedback studio (alignloop.feedback) is not available: {exc}") from None
    return store, io


def open_store(url: str):
    store, _ = _store()
    return store.open_db(url)


def store_error_types() -> tuple[type, ...]:
    try:
        store, _ = _store()
    except FeedbackUnavailable:
        return ()
    return (store.StoreError,)


def _project(s: Any, name: str, task_type: str):
    store, _ = _store()
    from sqlalchemy import select

    p = s.scalar(select(store.Project).where(store.Project.name == name))
    if p is None:
        p = store.create_project(s, name, task_type=task_type, overlap=1,
                                 guidelines="Feedback from users of a served model (alignloop serve).")
    elif p.task_type != task_type:
        raise store.Conflict(f"project '{name}' exists with task type {p.task_type}, not {task_type}", field="project")
    return p


def _task_for(s: Any, project: Any, external_id: str, prompt: Any, completions: list[Any], model: str,
              context: Any = None) -> tuple[Any, Any]:
    """The task of a served answer in ``project``, imported on first feedback."""
    store, io = _store()
    from sqlalchemy import select

    p = s.scalar(select(store.Prompt).where(store.Prompt.project_id == project.id,
                                            store.Prompt.external_id == external_id))
    if p is None:
        rec = {"id": external_id, "prompt": prompt, "completions": [_nonempty(c) for c in completions], "model": model}
        if context is not None:
            rec["context"] = context
        io.import_records(s, project, [(1, rec)], source="alignloop serve", labeler=None)
        p = s.scalar(select(store.Prompt).where(store.Prompt.project_id == project.id,
                                                store.Prompt.external_id == external_id))
    task = s.scalar(select(store.Task).where(store.Task.prompt_id == p.id).order_by(store.Task.id))
    return p, task


def _comment(p: Any, labeler: str, judgment_id: int, comment: str | None) -> None:
    if comment:
        extra = dict(p.extra or {})
        extra["user_comments"] = list(extra.get("user_comments", [])) + [
            {"labeler": labeler, "judgment_id": judgment_id, "text": comment}]
        p.extra = extra  # reassign: JSON columns track replacement, not in-place changes


def add_answer_feedback(db_url: str, project: str, answer_id: str, prompt: Any, answer: str, model: str,
                        user: str, thumbs: str | None = None, correction: str | None = None,
                        comment: str | None = None, idempotency_key: str | None = None) -> dict:
    """A verdict on one served answer. Returns ``{"judgment_id", "project", "task_id", "created"}``."""
    store, _ = _store()
    db = store.open_db(db_url)
    labeler = f"user:{user}"
    with db.write() as s:
        if thumbs is not None:
            proj = _project(s, project, "binary")
            p, task = _task_for(s, proj, answer_id, prompt, [answer], model)
            j, created = store.add_judgment(s, task.id, labeler, THUMBS[thumbs], rewrite=correction, kind="user",
                                            identity="alignloop serve", idempotency_key=idempotency_key)
        elif correction is not None:
            proj = _project(s, f"{project}-rewrite", "rewrite")
            p, task = _task_for(s, proj, answer_id, prompt, [answer], model)
            j, created = store.add_judgment(s, task.id, labeler, rewrite=correction, kind="user",
                                            identity="alignloop serve", idempotency_key=idempotency_key)
        else:
            raise store.Invalid("feedback needs a thumbs verdict ('up'/'down') or a corrected answer; "
                                "a comment goes with one of them", field="thumbs")
        if created:
            _comment(p, labeler, j.id, comment)
        return {"judgment_id": j.id, "project": proj.name, "task_id": task.id, "created": created}


def add_choice_feedback(db_url: str, project: str, pair_id: str, prompt: Any, answers: list[str], models: list[str],
                        user: str, choice: str, comment: str | None = None,
                        idempotency_key: str | None = None) -> dict:
    """The user's choice between two served variants of an answer (``choice``: A, B, tie or both_bad)."""
    store, _ = _store()
    db = store.open_db(db_url)
    labeler = f"user:{user}"
    with db.write() as s:
        proj = _project(s, f"{project}-pairwise", "pairwise")
        p, task = _task_for(s, proj, pair_id, prompt, list(answers), models[0] if len(set(models)) == 1 else None)
        if models and len(set(models)) > 1:
            p_extra = dict(p.extra or {})
            p_extra.setdefault("models", list(models))
            p.extra = p_extra
        j, created = store.add_judgment(s, task.id, labeler, choice, kind="user", identity="alignloop serve",
                                        idempotency_key=idempotency_key)
        if created:
            _comment(p, labeler, j.id, comment)
        return {"judgment_id": j.id, "project": proj.name, "task_id": task.id, "created": created}


def export(db_url: str, project: str, fmt: str, output: str) -> dict:
    """Write an export of ``project`` (``raw``, ``sft``, ``kto``, ``trl``) through the studio."""
    store, io = _store()
    return io.export_file(store.open_db(db_url), project, fmt, output)
