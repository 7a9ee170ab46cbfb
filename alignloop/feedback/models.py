"""The feedback studio's tables (SQLAlchemy 2 models) and the database handle that migrates them.

Raw per-labeler judgments are the only source of truth; progress, agreement, consensus and exports are all
derived from them. The same database holds the model registry, so table names are generic nouns and the
schema is created and upgraded only through the Alembic migrations in ``migrations/``.
"""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Annotated, Any, Optional

from sqlalchemy import (
    JSON,
    Boolean,
    Computed,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from alignloop.core import db
from alignloop.core.db import utcnow

TASK_TYPES = ("pairwise", "ranking", "rating", "rewrite", "binary")
PAIRWISE_CHOICES = ("A", "B", "tie", "both_bad")
STRENGTHS = ("much_better", "better", "slightly_better")
BINARY_CHOICES = ("good", "bad")
LABELER_KINDS = ("human", "ai", "user")
ROLES = ("admin", "lead", "labeler")  # a lead may create projects and manages those they lead
MEMBER_ROLES = ("labeler", "lead")  # a member's role in one project
DEFAULT_CRITERIA = ["helpfulness", "honesty", "harmlessness"]
DEFAULT_FLAGS = ["factual_error", "unsafe"]


class Base(DeclarativeBase):
    """Every feedback-studio table. (The registry's tables share the database but keep their own metadata and
    Alembic chain, so these migrations never see them.)"""

    metadata = MetaData(naming_convention=db.NAMING_CONVENTION)


# columns many tables share
ProjectRef = Annotated[int, mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)]
Created = Annotated[dt.datetime, mapped_column(DateTime, default=utcnow)]


class Project(Base):
    __tablename__ = "projects"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    task_type: Mapped[str] = mapped_column(String(20), default="pairwise")
    criteria: Mapped[list] = mapped_column(JSON, default=lambda: list(DEFAULT_CRITERIA))
    flags: Mapped[list] = mapped_column(JSON, default=lambda: list(DEFAULT_FLAGS))
    scale: Mapped[int] = mapped_column(Integer, default=5)  # Likert points for rating tasks
    overlap: Mapped[int] = mapped_column(Integer, default=3)  # distinct labelers per task
    gold_rate: Mapped[float] = mapped_column(Float, default=0.0)  # share of assignments that are gold tasks
    order: Mapped[str] = mapped_column(String(20), default="import")  # or "uncertainty" (active learning)
    lease_minutes: Mapped[int] = mapped_column(Integer, default=60)  # an open assignment expires after this
    guidelines: Mapped[str] = mapped_column(Text, default="")
    content_warning: Mapped[str] = mapped_column(Text, default="")
    guidelines_version: Mapped[int] = mapped_column(Integer, default=1)
    # served-model feedback holds real users' prompts: only admins reach it, and it takes no members
    admin_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[Created]
    # maintained by ``assign`` (never counted per request): regular tasks with a free place, and the highest task
    # ``seq`` already counted into it (``assign.count_new_tasks`` counts what an import added above it)
    open_tasks: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    counted_seq: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class GuidelineVersion(Base):
    """Every version of a project's guidelines, so a judgment can be read with the text it was made under."""

    __tablename__ = "guideline_versions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[ProjectRef]
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    content_warning: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[Created]


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[ProjectRef]
    external_id: Mapped[str] = mapped_column(String(200))  # the record's "id" (alignloop generate writes one)
    prompt: Mapped[Any] = mapped_column(JSON)  # a string or a list of {"role", "content"} messages
    context: Mapped[Optional[Any]] = mapped_column(JSON, nullable=True)  # e.g. retrieved documents
    extra: Mapped[dict] = mapped_column(JSON, default=dict)  # any other columns, kept for exports


class Completion(Base):
    __tablename__ = "completions"
    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)  # index in the imported record's completions
    text: Mapped[Any] = mapped_column(JSON)  # a string or a list of assistant messages
    model: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)  # never shown to labelers
    sampling: Mapped[dict] = mapped_column(JSON, default=dict)


#: a task's place in the uncertainty order as one ascending, indexable number: least certain first, tasks without
#: an uncertainty last (NULLs sort differently on SQLite and PostgreSQL, so they are mapped to the largest float)
UNCERTAINTY_RANK = "coalesce(-uncertainty, 1e308)"


class Task(Base):
    """A prompt with the 2..K completions a labeler judges together (1 for rewrite/binary tasks).

    ``places_taken`` counts the assignments that hold one of its ``overlap`` places (kept by ``assign``). The two
    queue indexes list a project's tasks by places taken, then in the project's order (import or uncertainty), so
    "the next free task" is an index seek, never a scan of the project."""

    __tablename__ = "tasks"
    __table_args__ = (
        Index("ix_tasks_queue_import", "project_id", "is_gold", "places_taken", "seq", "id"),
        Index("ix_tasks_queue_uncertainty", "project_id", "is_gold", "places_taken", "uncertainty_rank", "seq", "id"),
        Index("ix_tasks_project_id_seq", "project_id", "seq"),
    )
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[ProjectRef]
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    task_type: Mapped[str] = mapped_column(String(20))
    completion_ids: Mapped[list] = mapped_column(JSON)  # canonical order: "A" is completion_ids[0]
    seq: Mapped[int] = mapped_column(Integer)  # import order
    uncertainty: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[Created]
    places_taken: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # computed by the database (a plain insert of tasks needs to set nothing): see UNCERTAINTY_RANK
    uncertainty_rank: Mapped[Optional[float]] = mapped_column(Float, Computed(UNCERTAINTY_RANK), nullable=True)


class GoldAnswer(Base):
    __tablename__ = "gold_answers"
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    answer: Mapped[dict] = mapped_column(JSON)  # same fields as a judgment: choice / ranking (completion ids)
    note: Mapped[str] = mapped_column(Text, default="")


class Labeler(Base):
    __tablename__ = "labelers"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(10), default="human")  # human | ai (a judge) | user (served model)
    role: Mapped[str] = mapped_column(String(10), default="labeler")  # admin | lead | labeler
    identity: Mapped[str] = mapped_column(String(400), default="")  # e.g. the judge model and prompt version
    password_hash: Mapped[Optional[str]] = mapped_column(String(400), nullable=True)
    trust: Mapped[Optional[float]] = mapped_column(Float, nullable=True)  # fixed vote weight; else from gold
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # secret per-labeler seed of where gold tasks fall in their queue (never shown); made on first use
    gold_seed: Mapped[Optional[str]] = mapped_column(String(64), nullable=True)
    created_at: Mapped[Created]


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256: tokens are long random strings
    name: Mapped[str] = mapped_column(String(100), default="")  # what it is for, shown in token lists
    created_at: Mapped[Created]
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)
    last_used_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)


class Membership(Base):
    """Who may label (role ``labeler``) or manage (role ``lead``) a project. Admins need none."""

    __tablename__ = "memberships"
    __table_args__ = (UniqueConstraint("project_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[ProjectRef]
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(10), default="labeler")  # labeler | lead
    created_at: Mapped[Created]


class WarningAcceptance(Base):
    """A labeler accepted a project's content warning (its text's sha256: a changed warning asks again)."""

    __tablename__ = "warning_acceptances"
    __table_args__ = (UniqueConstraint("project_id", "labeler_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[ProjectRef]
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    warning_sha256: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[Created]


class AuditEvent(Base):
    """Sign-ins (good and failed) and every change to an account, its tokens, sessions or memberships."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200), default="")  # who did it ("cli" from the command line)
    action: Mapped[str] = mapped_column(String(40))
    target: Mapped[str] = mapped_column(String(200), default="")  # the account or project acted on
    client: Mapped[str] = mapped_column(String(100), default="")  # client address, for web requests
    ok: Mapped[bool] = mapped_column(Boolean, default=True)
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class LoginThrottle(Base):
    """Failed sign-ins per account name or client address, shared by every worker through the database."""

    __tablename__ = "login_throttle"
    key: Mapped[str] = mapped_column(String(300), primary_key=True)  # "name:ann" or "addr:10.0.0.7"
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[dt.datetime] = mapped_column(DateTime)
    locked_until: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)


class LoginSession(Base):
    __tablename__ = "login_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[Created]
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Assignment(Base):
    """One labeler's turn at one task. ``slot`` numbers the task's ``overlap`` places: the unique constraints
    make it impossible for two labelers to take the same place or for one labeler to get a task twice, even
    when requests race. Released (skipped, expired) and gold assignments hold no slot (NULL)."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"), UniqueConstraint("task_id", "slot"),
                      # a labeler's open assignment, and the leases that ran out, without reading anyone's history
                      Index("ix_assignments_labeler_id_status", "labeler_id", "status"),
                      Index("ix_assignments_status_created_at", "status", "created_at"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    slot: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    display_order: Mapped[list] = mapped_column(JSON)  # completion ids left to right, randomised per task
    status: Mapped[str] = mapped_column(String(10), default="open")  # open | done | skipped | expired
    created_at: Mapped[Created]
    completed_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    # the lease runs from here: set when handed out, moved on by the labeler's page while it is open (heartbeat)
    last_seen_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True, default=utcnow)


class LabelerProgress(Base):
    """One labeler in one project, kept by ``assign`` as they work, so that nothing about them is counted per
    request: how many assignments they were handed (the gold draw is numbered by it), how many judgments they made
    (skips included), how many regular tasks they have seen that still have a free place (what they can still get
    is the project's ``open_tasks`` less these), and where they are in the project's order (the task furthest along
    it that they were handed, for ``order``; gold tasks have their own)."""

    __tablename__ = "labeler_progress"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    assignments: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    judgments: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    seen_open: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # task ids without a foreign key: a cursor is a hint (a missing task reads as "from the start"), and a key would
    # make SQLite look through this table for every task a project deletion removes
    cursor_task_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    cursor_order: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)
    gold_cursor_task_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)


class Judgment(Base):
    """A labeler's raw answer to a task, in canonical terms ("A" is ``task.completion_ids[0]``)."""

    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"), UniqueConstraint("labeler_id", "idempotency_key"),
                      # a labeler's judgments in task order: the lead's "judged by" filter reads a page off it
                      Index("ix_judgments_labeler_task", "labeler_id", "task_id"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    assignment_id: Mapped[Optional[int]] = mapped_column(ForeignKey("assignments.id", ondelete="SET NULL"),
                                                         nullable=True)
    choice: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)  # pairwise / binary
    strength: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)
    ranking: Mapped[Optional[list]] = mapped_column(JSON, nullable=True)  # completion ids, best first
    ratings: Mapped[Optional[dict]] = mapped_column(JSON, nullable=True)  # {completion id: {criterion: 1..scale}}
    flags: Mapped[Optional[dict]] = mapped_column(JSON, nullable=True)  # {completion id: {flag: bool}}
    rewrite: Mapped[Optional[str]] = mapped_column(Text, nullable=True)  # "write a better answer"
    skipped: Mapped[bool] = mapped_column(Boolean, default=False)
    skip_reason: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    display_order: Mapped[Optional[list]] = mapped_column(JSON, nullable=True)  # what the labeler saw
    guideline_version: Mapped[int] = mapped_column(Integer, default=1)
    idempotency_key: Mapped[Optional[str]] = mapped_column(String(100), nullable=True)
    duration_ms: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


class Export(Base):
    """A file written by ``label export``: which judgments it holds, so a model traces back to its labels."""

    __tablename__ = "exports"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[ProjectRef]
    format: Mapped[str] = mapped_column(String(10))
    consensus: Mapped[str] = mapped_column(String(20), default="")
    path: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(String(64), default="")  # of the file, to match a training data file
    n_rows: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)  # rows excluded and why
    created_at: Mapped[Created]


class ExportJudgment(Base):
    __tablename__ = "export_judgments"
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), primary_key=True)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id", ondelete="CASCADE"), primary_key=True,
                                             index=True)


class Adjudication(Base):
    """A lead's decision on a task: it is the task's consensus, whatever the method, and it is no labeler's vote
    (agreement figures and labelers' records never count it). One per task; deciding again replaces it."""

    __tablename__ = "adjudications"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[ProjectRef]
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), unique=True)
    labeler_id: Mapped[Optional[int]] = mapped_column(ForeignKey("labelers.id", ondelete="SET NULL"), nullable=True)
    choice: Mapped[Optional[str]] = mapped_column(String(20), nullable=True)  # canonical, as in a judgment
    ranking: Mapped[Optional[list]] = mapped_column(JSON, nullable=True)
    ratings: Mapped[Optional[dict]] = mapped_column(JSON, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[Created]
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class TaskTally(Base):
    """A judged task's figures, kept up to date with each judgment (``tallies``) so that a lead can filter a
    project of 100,000+ tasks by agreement through an index instead of reading every judgment."""

    __tablename__ = "task_tallies"
    __table_args__ = (Index("ix_task_tallies_project_agreement", "project_id", "agreement", "task_id"),)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), primary_key=True,
                                         autoincrement=False)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    judgments: Mapped[int] = mapped_column(Integer, default=0)  # answers (skips not counted), any kind of labeler
    skips: Mapped[int] = mapped_column(Integer, default=0)
    # share of pairs of the task's answers that agree (percent agreement on this one task); None below 2 answers
    agreement: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    gold_misses: Mapped[int] = mapped_column(Integer, default=0)  # answers to this gold task that miss its answer
    last_judged_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class GoldMiss(Base):
    """A judgment that missed its gold task's answer (kept with each judgment, so "where did this labeler fail
    gold" is an index look-up)."""

    __tablename__ = "gold_misses"
    __table_args__ = (Index("ix_gold_misses_project_task", "project_id", "task_id"),)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id", ondelete="CASCADE"), primary_key=True,
                                             autoincrement=False)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"))
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)


class DailyActivity(Base):
    """Per project and UTC day: people's judgments and skips, and how their answers agreed with earlier people's
    answers to the same task (the lead view's charts). Kept up to date with each judgment."""

    __tablename__ = "daily_activity"
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[dt.date] = mapped_column(Date, primary_key=True)
    judgments: Mapped[int] = mapped_column(Integer, default=0)  # by human labelers, skips not counted
    skips: Mapped[int] = mapped_column(Integer, default=0)
    other_judgments: Mapped[int] = mapped_column(Integer, default=0)  # by AI judges and served-model users
    compared: Mapped[int] = mapped_column(Integer, default=0)  # (item, earlier human answer) pairs compared
    agreeing: Mapped[int] = mapped_column(Integer, default=0)  # ... of which the two answers agree


# --------------------------------------------------------------------------------------------------
# The database handle
# --------------------------------------------------------------------------------------------------


#: the studio's Alembic chain (run by path: its env.py imports this module, so this module does not import it)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


class Database(db.Database):
    """The one database handle (``alignloop.core.db``), migrated to the studio's latest schema on open."""

    def __init__(self, url: str, migrate: bool = True, connections: int = db.DEFAULT_CONNECTIONS):
        super().__init__(url, connections)
        if migrate:
            db.upgrade(self.engine, MIGRATIONS)


_dbs: dict[str, Database] = {}
_dbs_lock = threading.Lock()


def open_db(url: str) -> Database:
    """The process-wide handle for ``url``, migrated to the latest schema on first use."""
    with _dbs_lock:
        if url not in _dbs:
            _dbs[url] = Database(url)
        return _dbs[url]
