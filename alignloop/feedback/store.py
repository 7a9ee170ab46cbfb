"""The studio's data and Python API under its documented name: the tables and the database handle
(``models``), the queries (``queries``) and their errors (``errors``).

    db = open_db("sqlite:///labels.db")            # runs migrations on first use
    with db.write() as s:
        judge = get_or_create_labeler(s, "judge:qwen", kind="ai", identity="qwen2.5-7b")
        add_judgment(s, task_id, judge, choice="A")
"""

from alignloop.core.db import sqlite_url  # noqa: F401
from alignloop.feedback.auth import hash_token  # noqa: F401
from alignloop.feedback.errors import Conflict, Forbidden, Invalid, NotFound, StoreError, Throttled  # noqa: F401
from alignloop.feedback.models import (  # noqa: F401
    BINARY_CHOICES,
    DEFAULT_CRITERIA,
    DEFAULT_FLAGS,
    LABELER_KINDS,
    MEMBER_ROLES,
    PAIRWISE_CHOICES,
    ROLES,
    STRENGTHS,
    TASK_TYPES,
    Adjudication,
    ApiToken,
    Assignment,
    AuditEvent,
    Base,
    Completion,
    DailyActivity,
    Database,
    Export,
    ExportJudgment,
    GoldAnswer,
    GoldMiss,
    GuidelineVersion,
    Judgment,
    Labeler,
    LabelerProgress,
    LoginSession,
    LoginThrottle,
    Membership,
    Project,
    Prompt,
    Task,
    TaskTally,
    WarningAcceptance,
    open_db,
    utcnow,
)
from alignloop.feedback.queries import (  # noqa: F401
    MAX_COMPLETIONS,
    MAX_TEXT,
    PROJECT_FIELDS,
    Answer,
    add_judgment,
    check_project_settings,
    create_labeler,
    create_project,
    get_or_create_labeler,
    get_project,
    judgments_for,
    set_guidelines,
    update_project,
    validate_answer,
)
