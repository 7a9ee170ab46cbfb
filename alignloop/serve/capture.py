"""Feedback from use: the answers a server gave, kept (personal data masked) so users can refer to them, and the
rules that turn a user's feedback into studio data. The few calls serving makes into the feedback studio's
Python API (``alignloop.feedback``) are all here, so only this file changes when that API moves.

Feedback from use becomes ordinary studio data: the served prompt and answer are imported as a prompt with
its completion(s) and a task, and the user's verdict is a judgment by a labeler of kind ``"user"``. A project
has one task type, so feedback goes to up to three projects named after ``--feedback-project NAME``:

* ``NAME``           binary tasks: thumbs up/down ("good"/"bad"), with the user's edited answer as ``rewrite``
* ``NAME-rewrite``   rewrite tasks: an edited better answer without a thumbs verdict
* ``NAME-pairwise``  pairwise tasks: the user's choice between two served variants (A, B, tie, both_bad)

The labeler is the caller's key (``user:key-<10 hex digits of its SHA-256>``, ``user:anonymous`` on a server
without keys), never a name the request gives itself, so one key has one vote per answer and cannot vote again as
invented users. The request's ``user`` is kept as metadata only (``extra["user_names"]`` of the prompt, with the
judgment id). The studio's judgments have no free-text comment field yet, so a comment is kept with the prompt
too (``extra["user_comments"]``, with the judgment id it came with).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from sqlalchemy import select

from alignloop.feedback import io as studio_io
from alignloop.feedback import store as studio
from alignloop.registry.store import Registry, ServedAnswer, utcnow
from alignloop.serve.errors import ApiError
from alignloop.serve.pii import PersonalDataFilter
from alignloop.serve.schemas import FeedbackRequest

THUMBS = {"up": "good", "down": "bad"}
#: the studio refuses empty completions; a model that said nothing still deserves its thumbs-down
EMPTY_ANSWER = "(the model gave an empty answer)"


def _nonempty(text: str) -> str:
    return text if isinstance(text, str) and text.strip() else EMPTY_ANSWER


# --------------------------------------------------------------------------------------------------
# Served answers: what feedback refers to
# --------------------------------------------------------------------------------------------------


class ServedAnswers:
    """The answers a server gave, kept in the registry database (personal data masked) under the response id,
    so feedback can name them. ``keep`` does nothing without a registry or with ``--no-store-answers``."""

    def __init__(self, registry: Registry | None, pii: PersonalDataFilter, store: bool = True):
        self.reg, self.pii, self.store = registry, pii, store

    def keep(self, answer_id: str, model_id: str, prompt: Any, answers: list[str], user: str) -> None:
        if not self.store or self.reg is None:
            return
        try:
            with self.reg.write() as s:
                s.add(ServedAnswer(id=answer_id, model_id=model_id, prompt=self.pii.mask_any(prompt),
                                   answers=[self.pii.mask(a) for a in answers], user=user, created_at=utcnow()))
        except Exception as exc:  # serving must go on even if the database hiccups
            print(f"warning: could not store served answer {answer_id}: {exc}", file=sys.stderr)

    def get(self, ref: str) -> tuple[ServedAnswer, str, int]:
        """``(row, response id, choice index)`` for ``"ID"`` or ``"ID#K"``; 404 when it was not kept."""
        rid, _, idx = ref.partition("#")
        with self.reg.read() as s:
            row = s.get(ServedAnswer, rid)
            if row is None:
                raise ApiError(404, f"no served answer '{rid}' (answers are kept only with --store-answers)",
                               "response_id", "answer_not_found")
            s.expunge(row)
        return row, rid, int(idx) if idx.isdigit() else 0


# --------------------------------------------------------------------------------------------------
# The feedback rules: which verdicts a request may carry, and where each one goes
# --------------------------------------------------------------------------------------------------


def record_feedback(answers: ServedAnswers, db_url: str, project: str, req: FeedbackRequest, user: str) -> dict:
    """Store one ``POST /v1/feedback`` by ``user`` (the caller's key, ``deps.get_caller``): a choice between two
    served answers (``compare`` + ``choice``) or a verdict on one (``response_id`` + ``thumbs`` and/or
    ``correction``). Comment and correction are masked; the request's own ``user`` is metadata."""
    mask = answers.pii.mask
    comment = mask(req.comment) if req.comment else None
    correction = mask(req.correction) if req.correction else None
    if req.compare:
        return _choice_feedback(answers, db_url, project, req, user, comment)
    if not req.response_id:
        raise ApiError(422, "give response_id (with thumbs and/or correction) or compare (with choice)", "response_id")
    row, rid, _ = answers.get(req.response_id)
    k = req.choice_index
    if k >= len(row.answers):
        raise ApiError(422, f"answer {rid} has {len(row.answers)} choice(s); choice_index {k} is out of range",
                       "choice_index")
    if req.thumbs is None and correction is None:
        raise ApiError(422, "feedback needs thumbs ('up'/'down') or a correction (an edited better answer); "
                       "a comment goes with one of them", "thumbs")
    answer_id = f"{rid}#{k}" if len(row.answers) > 1 else rid
    return add_answer_feedback(db_url, project, answer_id, row.prompt, row.answers[k], row.model_id, user,
                               req.thumbs, correction, comment, req.idempotency_key, req.user)


def _choice_feedback(answers: ServedAnswers, db_url: str, project: str, req: FeedbackRequest, user: str,
                     comment: str | None) -> dict:
    """Two answers to the same prompt, each ``ID`` or ``ID#K``, and the user's choice between them."""
    if req.choice is None:
        raise ApiError(422, "compare needs a choice: A (the first answer), B, tie or both_bad", "choice")
    (a, ida, ka), (b, idb, kb) = answers.get(req.compare[0]), answers.get(req.compare[1])
    if json.dumps(a.prompt, sort_keys=True) != json.dumps(b.prompt, sort_keys=True):
        raise ApiError(422, "the two answers were given to different prompts", "compare")
    for row, k, ref in ((a, ka, req.compare[0]), (b, kb, req.compare[1])):
        if k >= len(row.answers):
            raise ApiError(422, f"{ref}: no choice {k}", "compare")
    return add_choice_feedback(db_url, project, f"{ida}#{ka}|{idb}#{kb}", a.prompt, [a.answers[ka], b.answers[kb]],
                               [a.model_id, b.model_id], user, req.choice, comment, req.idempotency_key, req.user)


# --------------------------------------------------------------------------------------------------
# Into the studio
# --------------------------------------------------------------------------------------------------



def _project(s: Any, name: str, task_type: str):
    p = s.scalar(select(studio.Project).where(studio.Project.name == name))
    if p is None:
        # admin-only: real users' prompts; an admin may open it to members later (PATCH admin_only: false)
        p = studio.create_project(s, name, task_type=task_type, overlap=1, admin_only=True,
                                  guidelines="Feedback from users of a served model (alignloop serve).")
    elif p.task_type != task_type:
        raise studio.Conflict(f"project '{name}' exists with task type {p.task_type}, not {task_type}", field="project")
    return p


def _task_for(s: Any, project: Any, external_id: str, prompt: Any, completions: list[Any], model: str,
              context: Any = None) -> tuple[Any, Any]:
    """The task of a served answer in ``project``, imported on first feedback."""
    p = s.scalar(select(studio.Prompt).where(studio.Prompt.project_id == project.id,
                                             studio.Prompt.external_id == external_id))
    if p is None:
        rec = {"id": external_id, "prompt": prompt, "completions": [_nonempty(c) for c in completions], "model": model}
        if context is not None:
            rec["context"] = context
        studio_io.import_records(s, project, [(1, rec)], source="alignloop serve", labeler=None)
        p = s.scalar(select(studio.Prompt).where(studio.Prompt.project_id == project.id,
                                                 studio.Prompt.external_id == external_id))
    task = s.scalar(select(studio.Task).where(studio.Task.prompt_id == p.id).order_by(studio.Task.id))
    return p, task


def _notes(p: Any, labeler: str, judgment_id: int, comment: str | None, user_name: str | None) -> None:
    """A judgment's comment and the user name its request gave, kept with the prompt."""
    extra = dict(p.extra or {})
    if comment:
        extra["user_comments"] = list(extra.get("user_comments", [])) + [
            {"labeler": labeler, "judgment_id": judgment_id, "text": comment}]
    if user_name:
        extra["user_names"] = list(extra.get("user_names", [])) + [
            {"labeler": labeler, "judgment_id": judgment_id, "user": user_name}]
    p.extra = extra  # reassign: JSON columns track replacement, not in-place changes


def add_answer_feedback(db_url: str, project: str, answer_id: str, prompt: Any, answer: str, model: str,
                        user: str, thumbs: str | None = None, correction: str | None = None,
                        comment: str | None = None, idempotency_key: str | None = None,
                        user_name: str | None = None) -> dict:
    """A verdict on one served answer by labeler ``user:USER``. Returns ``{"judgment_id", "project", "task_id",
    "created"}``."""
    db = studio.open_db(db_url)
    labeler = f"user:{user}"
    with db.write() as s:
        if thumbs is not None:
            proj = _project(s, project, "binary")
            p, task = _task_for(s, proj, answer_id, prompt, [answer], model)
            j, created = studio.add_judgment(s, task.id, labeler, THUMBS[thumbs], rewrite=correction, kind="user",
                                             identity="alignloop serve", idempotency_key=idempotency_key)
        elif correction is not None:
            proj = _project(s, f"{project}-rewrite", "rewrite")
            p, task = _task_for(s, proj, answer_id, prompt, [answer], model)
            j, created = studio.add_judgment(s, task.id, labeler, rewrite=correction, kind="user",
                                             identity="alignloop serve", idempotency_key=idempotency_key)
        else:
            raise studio.Invalid("feedback needs a thumbs verdict ('up'/'down') or a corrected answer; "
                                 "a comment goes with one of them", field="thumbs")
        if created:
            _notes(p, labeler, j.id, comment, user_name)
        return {"judgment_id": j.id, "project": proj.name, "task_id": task.id, "created": created}


def add_choice_feedback(db_url: str, project: str, pair_id: str, prompt: Any, answers: list[str], models: list[str],
                        user: str, choice: str, comment: str | None = None,
                        idempotency_key: str | None = None, user_name: str | None = None) -> dict:
    """The user's choice between two served variants of an answer (``choice``: A, B, tie or both_bad)."""
    db = studio.open_db(db_url)
    labeler = f"user:{user}"
    with db.write() as s:
        proj = _project(s, f"{project}-pairwise", "pairwise")
        p, task = _task_for(s, proj, pair_id, prompt, list(answers), models[0] if len(set(models)) == 1 else None)
        if models and len(set(models)) > 1:
            p_extra = dict(p.extra or {})
            p_extra.setdefault("models", list(models))
            p.extra = p_extra
        j, created = studio.add_judgment(s, task.id, labeler, choice, kind="user", identity="alignloop serve",
                                         idempotency_key=idempotency_key)
        if created:
            _notes(p, labeler, j.id, comment, user_name)
        return {"judgment_id": j.id, "project": proj.name, "task_id": task.id, "created": created}


def export(db_url: str, project: str, fmt: str, output: str) -> dict:
    """Write an export of ``project`` (``raw``, ``sft``, ``kto``, ``trl``) through the studio."""
    return studio_io.export_file(studio.open_db(db_url), project, fmt, output)
