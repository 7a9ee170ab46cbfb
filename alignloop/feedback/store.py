"""The feedback studio's data: SQLAlchemy 2 models, the database handle, and the queries other modules call.

Raw per-labeler judgments are the only source of truth; progress, agreement, consensus and exports are all
derived from them. The same database later holds the model registry, so table names are generic nouns and
the schema is created and upgraded only through the Alembic migrations in ``migrations/``.

Python API (no HTTP needed; used by the AI judge, the serving feedback capture and the tests)::

    db = open_db("sqlite:///labels.db")            # runs migrations on first use
    with db.write() as s:
        judge = get_or_create_labeler(s, "judge:qwen", kind="ai", identity="qwen2.5-7b")
        add_judgment(s, task_id, judge, choice="A")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Integer, MetaData, String, Text, UniqueConstraint,
                        create_engine, event, func, select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

TASK_TYPES = ("pairwise", "ranking", "rating", "rewrite", "binary")
PAIRWISE_CHOICES = ("A", "B", "tie", "both_bad")
STRENGTHS = ("much_better", "better", "slightly_better")
BINARY_CHOICES = ("good", "bad")
LABELER_KINDS = ("human", "ai", "user")
ROLES = ("admin", "labeler")
DEFAULT_CRITERIA = ["helpfulness", "honesty", "harmlessness"]
DEFAULT_FLAGS = ["factual_error", "unsafe"]
MAX_TEXT = 20_000  # characters of a written answer, a skip reason or a note; longer is refused, never cut
MAX_COMPLETIONS = 16


def utcnow() -> dt.datetime:
    # naive UTC everywhere: SQLite drops time zones, and mixing aware/naive values breaks comparisons
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    """Every feedback-studio table. (The registry's tables share the database but keep their own metadata and
    Alembic chain, so these migrations never see them.)"""

    # named constraints, so later migrations can drop or alter them (SQLite batch mode needs the names)
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"})


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
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class GuidelineVersion(Base):
    """Every version of a project's guidelines, so a judgment can be read with the text it was made under."""

    __tablename__ = "guideline_versions"
    __table_args__ = (UniqueConstraint("project_id", "version"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text, default="")
    content_warning: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("project_id", "external_id"),)
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
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


class Task(Base):
    """A prompt with the 2..K completions a labeler judges together (1 for rewrite/binary tasks)."""

    __tablename__ = "tasks"
    id: Mapped[int] = mapped_column(primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    task_type: Mapped[str] = mapped_column(String(20))
    completion_ids: Mapped[list] = mapped_column(JSON)  # canonical order: "A" is completion_ids[0]
    seq: Mapped[int] = mapped_column(Integer)  # import order
    uncertainty: Mapped[Optional[float]] = mapped_column(Float, nullable=True)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


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
    role: Mapped[str] = mapped_column(String(10), default="labeler")  # admin | labeler
    identity: Mapped[str] = mapped_column(String(400), default="")  # e.g. the judge model and prompt version
    password_hash: Mapped[Optional[str]] = mapped_column(String(400), nullable=True)
    trust: Mapped[Optional[float]] = mapped_column(Float, nullable=True)  # fixed vote weight; else from gold
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ApiToken(Base):
    __tablename__ = "api_tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256: tokens are long random strings
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class LoginSession(Base):
    __tablename__ = "login_sessions"
    id: Mapped[int] = mapped_column(primary_key=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(DateTime)


class Assignment(Base):
    """One labeler's turn at one task. ``slot`` numbers the task's ``overlap`` places: the unique constraints
    make it impossible for two labelers to take the same place or for one labeler to get a task twice, even
    when requests race. Released (skipped, expired) and gold assignments hold no slot (NULL)."""

    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"), UniqueConstraint("task_id", "slot"))
    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id", ondelete="CASCADE"), index=True)
    labeler_id: Mapped[int] = mapped_column(ForeignKey("labelers.id", ondelete="CASCADE"), index=True)
    slot: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    display_order: Mapped[list] = mapped_column(JSON)  # completion ids left to right, randomised per task
    status: Mapped[str] = mapped_column(String(10), default="open")  # open | done | skipped | expired
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    completed_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)


class Judgment(Base):
    """A labeler's raw answer to a task, in canonical terms ("A" is ``task.completion_ids[0]``)."""

    __tablename__ = "judgments"
    __table_args__ = (UniqueConstraint("task_id", "labeler_id"), UniqueConstraint("labeler_id", "idempotency_key"))
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
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    format: Mapped[str] = mapped_column(String(10))
    consensus: Mapped[str] = mapped_column(String(20), default="")
    path: Mapped[str] = mapped_column(Text, default="")
    sha256: Mapped[str] = mapped_column(String(64), default="")  # of the file, to match a training data file
    n_rows: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict] = mapped_column(JSON, default=dict)  # rows excluded and why
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class ExportJudgment(Base):
    __tablename__ = "export_judgments"
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), primary_key=True)
    judgment_id: Mapped[int] = mapped_column(ForeignKey("judgments.id", ondelete="CASCADE"), primary_key=True,
                                             index=True)


# --------------------------------------------------------------------------------------------------
# The database handle
# --------------------------------------------------------------------------------------------------


def _sqlite_setup(engine: Engine) -> None:
    """WAL for concurrent readers, FULL sync so a commit survives power loss, and BEGIN IMMEDIATE for writers:
    a deferred transaction that later writes fails at once (SQLITE_BUSY_SNAPSHOT) instead of waiting."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record):  # noqa: ANN001
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (pysqlite's own handling breaks savepoints)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn):  # noqa: ANN001
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("writer") else "BEGIN")


class Database:
    """An engine plus ``read()`` / ``write()`` sessions; ``write()`` commits on success, rolls back on error."""

    def __init__(self, url: str, migrate: bool = True):
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        kwargs: dict[str, Any] = {}
        if self.is_sqlite:
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=20, max_overflow=40, pool_pre_ping=True)
        self.engine = create_engine(url, **kwargs)
        if self.is_sqlite:
            _sqlite_setup(self.engine)
        self._write_lock: contextlib.AbstractContextManager = threading.Lock() if self.is_sqlite else \
            contextlib.nullcontext()
        self._reader = sessionmaker(self.engine, expire_on_commit=False)
        self._writer = sessionmaker(self.engine.execution_options(writer=True), expire_on_commit=False)
        if migrate:
            from alignloop.feedback.migrations import upgrade

            upgrade(self.engine)

    @contextlib.contextmanager
    def write(self) -> Iterator[Session]:
        # SQLite has one writer at a time. Threads of this process queue on a lock (woken at once) rather
        # than in SQLite's busy handler, which sleeps in growing steps and wrecks latency under load;
        # busy_timeout still covers other processes.
        with self._write_lock, self._writer() as s, s.begin():
            yield s

    @contextlib.contextmanager
    def read(self) -> Iterator[Session]:
        with self._reader() as s, s.begin():
            yield s

    def dispose(self) -> None:
        self.engine.dispose()


_dbs: dict[str, Database] = {}
_dbs_lock = threading.Lock()


def open_db(url: str) -> Database:
    """The process-wide handle for ``url``, migrated to the latest schema on first use."""
    with _dbs_lock:
        if url not in _dbs:
            _dbs[url] = Database(url)
        return _dbs[url]


def sqlite_url(path: str) -> str:
    return f"sqlite:///{path}"


# --------------------------------------------------------------------------------------------------
# Errors the API turns into 4xx and the CLI into messages
# --------------------------------------------------------------------------------------------------


class StoreError(ValueError):
    """Bad input. ``status`` is the HTTP status the API answers with; ``field`` names what to fix."""

    status = 400

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotFound(StoreError):
    status = 404


class Conflict(StoreError):
    status = 409


class Invalid(StoreError):
    status = 422


# --------------------------------------------------------------------------------------------------
# Projects and labelers
# --------------------------------------------------------------------------------------------------


def get_project(s: Session, name: str) -> Project:
    p = s.scalar(select(Project).where(Project.name == name))
    if p is None:
        raise NotFound(f"no project named '{name}'", field="project")
    return p


PROJECT_FIELDS = ("task_type", "criteria", "flags", "scale", "overlap", "gold_rate", "order", "lease_minutes")


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
    for name in ("criteria", "flags"):
        v = settings.get(name)
        if v is not None and (not isinstance(v, list) or not all(isinstance(x, str) and x for x in v)):
            p.append(f"{name}: must be a list of names")
    return p


def create_project(s: Session, name: str, guidelines: str = "", content_warning: str = "", **settings: Any) -> Project:
    if not name or len(name) > 200:
        raise Invalid("a project needs a name of 1 to 200 characters", field="name")
    if s.scalar(select(Project.id).where(Project.name == name)) is not None:
        raise Conflict(f"a project named '{name}' already exists", field="name")
    problems = check_project_settings(settings) + [f"{k}: unknown setting" for k in settings if k not in PROJECT_FIELDS]
    if problems:
        raise Invalid("; ".join(problems))
    project = Project(name=name, guidelines=guidelines, content_warning=content_warning,
                      **{k: v for k, v in settings.items() if v is not None})
    s.add(project)
    s.flush()
    s.add(GuidelineVersion(project_id=project.id, version=1, text=guidelines, content_warning=content_warning))
    return project


def update_project(s: Session, project: Project, **settings: Any) -> Project:
    settings = {k: v for k, v in settings.items() if v is not None}
    problems = check_project_settings(settings) + [f"{k}: unknown setting" for k in settings if k not in PROJECT_FIELDS]
    if problems:
        raise Invalid("; ".join(problems))
    if "task_type" in settings and settings["task_type"] != project.task_type and \
            s.scalar(select(func.count(Task.id)).where(Task.project_id == project.id)):
        raise Conflict("task_type cannot change once the project has tasks", field="task_type")
    for k, v in settings.items():
        setattr(project, k, v)
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


def get_labeler(s: Session, name: str) -> Labeler:
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    if lab is None:
        raise NotFound(f"no labeler named '{name}'", field="labeler")
    return lab


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
    from alignloop.feedback.auth import hash_password

    lab = Labeler(name=name, role=role, kind=kind, identity=identity, trust=trust,
                  password_hash=hash_password(password) if password else None)
    s.add(lab)
    s.flush()
    return lab


def get_or_create_labeler(s: Session, name: str, kind: str = "human", identity: str = "") -> Labeler:
    """For judges and imports: the labeler of that name, created (without login) when new."""
    lab = s.scalar(select(Labeler).where(Labeler.name == name))
    return lab if lab is not None else create_labeler(s, name, kind=kind, identity=identity)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
                 duration_ms: int | None = None, kind: str = "ai", identity: str = "") -> tuple[Judgment, bool]:
    """Store one judgment; returns ``(judgment, created)``. A repeat with the same idempotency key returns the
    stored judgment with ``created=False``. ``labeler`` may be a name: judges and imports get a labeler of
    ``kind`` made on the fly. Human labelers go through an ``assignment`` (see ``assign.next_assignment``)."""
    if isinstance(labeler, str):
        labeler = get_or_create_labeler(s, labeler, kind=kind, identity=identity)
    if idempotency_key is not None:
        if not isinstance(idempotency_key, str) or not 1 <= len(idempotency_key) <= 100:
            raise Invalid("must be a string of 1 to 100 characters", field="idempotency_key")
        previous = s.scalar(select(Judgment).where(Judgment.labeler_id == labeler.id,
                                                   Judgment.idempotency_key == idempotency_key))
        if previous is not None:
            if previous.task_id != task_id:
                raise Conflict("this key was already used for another task", field="idempotency_key")
            return previous, False
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
    if s.scalar(select(Judgment.id).where(Judgment.task_id == task.id, Judgment.labeler_id == labeler.id)):
        raise Conflict("this labeler already judged this task", field="task_id")
    j = Judgment(task_id=task.id, labeler_id=labeler.id, assignment_id=assignment.id if assignment else None,
                 choice=answer.choice, strength=answer.strength, ranking=answer.ranking, ratings=answer.ratings,
                 flags=answer.flags, rewrite=answer.rewrite, skipped=answer.skip_reason is not None,
                 skip_reason=answer.skip_reason, display_order=assignment.display_order if assignment else None,
                 guideline_version=project.guidelines_version, idempotency_key=idempotency_key,
                 duration_ms=duration_ms if isinstance(duration_ms, int) and duration_ms >= 0 else None)
    try:
        with s.begin_nested():  # a racing retry with the same key loses here, not in the outer transaction
            s.add(j)
            s.flush()
    except IntegrityError:
        if idempotency_key is not None:
            previous = s.scalar(select(Judgment).where(Judgment.labeler_id == labeler.id,
                                                       Judgment.idempotency_key == idempotency_key))
            if previous is not None:
                return previous, False
        raise Conflict("this labeler already judged this task", field="task_id") from None
    if assignment is not None:
        assignment.status = "skipped" if j.skipped else "done"
        assignment.completed_at = utcnow()
        if j.skipped:
            assignment.slot = None  # a skip frees the place for another labeler
    return j, True


def judgments_for(s: Session, project: Project, include_skipped: bool = False) -> list[Judgment]:
    q = select(Judgment).join(Task, Task.id == Judgment.task_id).where(Task.project_id == project.id)
    if not include_skipped:
        q = q.where(Judgment.skipped.is_(False))
    return list(s.scalars(q.order_by(Judgment.id)))
