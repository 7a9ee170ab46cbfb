"""``alignloop label serve | import | export | stats | add-user``: configs and runners."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal, Optional

from alignloop.core.config import StageConfig, alignloop_home, existing_file, in_range, opt, positive
from alignloop.core.errors import AlignloopError, DataError

DB_HELP = "Database URL: sqlite:///FILE.db or postgresql+psycopg://USER@HOST:PORT/DB; default: alignloop.db in the alignloop home."
TaskType = Literal["pairwise", "ranking", "rating", "rewrite", "binary"]
Method = Literal["majority", "weighted", "bradley_terry", "ranked_pairs"]


def default_db_url() -> str:
    home = alignloop_home()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'alignloop.db'}"


def _db(url: str):
    from alignloop.feedback.store import Database

    url = url or default_db_url()
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        return Database(url)
    except Exception as exc:  # unreachable server, bad URL, a newer schema: say which database
        raise AlignloopError(f"cannot open the database {url}: {exc.__class__.__name__}: {exc}") from None


def _check_db(url: str) -> list[str]:
    if url and not (url.startswith("sqlite:") or url.startswith("postgresql")):
        return [f"db: '{url}' is not a sqlite:/// or postgresql+psycopg:// URL"]
    return []


@dataclass
class LabelServeConfig(StageConfig):
    """Run the feedback studio web app (labeler pages, lead view, JSON API)."""

    command: ClassVar[tuple[str, ...]] = ("label", "serve")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_serve"

    db: str = opt("", DB_HELP)
    host: str = opt("127.0.0.1", "Interface to listen on (0.0.0.0 for every interface; put TLS in front then).")
    port: int = opt(8000, "TCP port.")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = opt("info", "Server log level.")

    def check(self) -> list[str]:
        return _check_db(self.db) + positive(self, "port") + in_range(self, "port", 1, 65535)


@dataclass
class LabelImportConfig(StageConfig):
    """Import prompts/completions (alignloop generate JSONL), TRL preferences or a Label Studio export."""

    command: ClassVar[tuple[str, ...]] = ("label", "import")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_import"

    file: str = opt("", "JSONL, JSON or .gz file to import (all-or-nothing).", positional=True)
    db: str = opt("", DB_HELP)
    project: str = opt("", "Project to import into; created when new.")
    task_type: Optional[TaskType] = opt(None, "Task type of a new project; default: from the data (2 completions: "
                                        "pairwise, more: ranking, preference files: pairwise).")
    overlap: Optional[int] = opt(None, "Distinct labelers per task (new projects: 3).")
    gold_rate: Optional[float] = opt(None, "Share of assignments that are gold tasks, 0..1 (new projects: 0).")
    order: Optional[Literal["import", "uncertainty"]] = opt(
        None, "Hand out tasks in import order, or least certain first (needs an 'uncertainty' column).")
    criteria: Optional[list[str]] = opt(None, "Rating criteria (default: helpfulness, honesty, harmlessness).")
    guidelines: Optional[str] = opt(None, "Markdown file with the labeling guidelines (a new version if changed).")
    content_warning: Optional[str] = opt(None, "Warning shown before labeling starts (e.g. for red-teaming data).")
    labeler: Optional[str] = opt(None, "Who made the judgments in a preference file; default: import:<file name>.")

    def check(self) -> list[str]:
        p = _check_db(self.db)
        if not self.file:
            p.append("file: a file to import is required (alignloop label import --project NAME FILE)")
        if not self.project:
            p.append("project: a project name is required (--project NAME)")
        p += existing_file(self, "file", "guidelines")
        p += positive(self, "overlap")
        if self.gold_rate is not None:
            p += in_range(self, "gold_rate", 0.0, 1.0)
        return p


@dataclass
class LabelExportConfig(StageConfig):
    """Export consensus preferences (trl), unpaired labels (kto), written answers (sft) or raw judgments."""

    command: ClassVar[tuple[str, ...]] = ("label", "export")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_export"

    db: str = opt("", DB_HELP)
    project: str = opt("", "Project to export.")
    format: Literal["trl", "kto", "sft", "raw"] = opt("trl", "trl: prompt/chosen/rejected pairs; kto: prompt/"
                                                      "completion/label; sft: prompt/completion; raw: every judgment.")
    output: str = opt("", "Output JSONL file.")
    method: Method = opt("majority", "Consensus for trl/kto: majority, weighted (by trust), bradley_terry or "
                         "ranked_pairs (rankings).")
    min_judgments: int = opt(1, "Leave out tasks with fewer non-skipped judgments than this (trl/kto).")

    def check(self) -> list[str]:
        p = _check_db(self.db)
        if not self.project:
            p.append("project: a project name is required (--project NAME)")
        if not self.output:
            p.append("output: an output file is required (--output FILE)")
        return p + positive(self, "min_judgments")


@dataclass
class LabelStatsConfig(StageConfig):
    """Progress, per-labeler throughput and quality, agreement and consensus as JSON on stdout."""

    command: ClassVar[tuple[str, ...]] = ("label", "stats")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_stats"
    print_config: ClassVar[bool] = False

    db: str = opt("", DB_HELP)
    project: str = opt("", "Project to report on.")
    method: Method = opt("majority", "Consensus method for the consensus figures.")

    def check(self) -> list[str]:
        p = _check_db(self.db)
        if not self.project:
            p.append("project: a project name is required (--project NAME)")
        return p


@dataclass
class LabelAddUserConfig(StageConfig):
    """Create an admin or a labeler; prints their password and an API token (shown once)."""

    command: ClassVar[tuple[str, ...]] = ("label", "add-user")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_add_user"
    print_config: ClassVar[bool] = False  # it would echo a given password

    db: str = opt("", DB_HELP)
    name: str = opt("", "Sign-in name.")
    role: Literal["admin", "labeler"] = opt("labeler", "admin: everything incl. lead views, imports, exports; "
                                            "labeler: only their own assignments.")
    kind: Literal["human", "ai", "user"] = opt("human", "human labeler, ai judge, or user of a served model.")
    identity: str = opt("", "For AI judges: the model and prompt that make the judgments.")
    password: Optional[str] = opt(None, "Password (at least 8 characters); default: a generated one.")

    def check(self) -> list[str]:
        p = _check_db(self.db)
        if not self.name:
            p.append("name: a name is required (--name NAME)")
        if self.password is not None and len(self.password) < 8:
            p.append("password: use at least 8 characters")
        return p


# --------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------


def _store_errors(fn):  # noqa: ANN001
    """Store errors (unknown project, duplicate name) become CLI errors without a traceback."""

    def wrapped(cfg):  # noqa: ANN001
        from alignloop.feedback.store import StoreError

        try:
            return fn(cfg)
        except StoreError as exc:
            raise AlignloopError(str(exc)) from None

    wrapped.__name__ = fn.__name__
    return wrapped


@_store_errors
def run_serve(cfg: LabelServeConfig) -> int:
    import uvicorn
    from sqlalchemy import select

    from alignloop.feedback.api import create_app
    from alignloop.feedback.store import Labeler

    db = _db(cfg.db)
    with db.read() as s:
        if s.scalar(select(Labeler.id).where(Labeler.role == "admin")) is None:
            print("note: no admin yet; create one with `alignloop label add-user --role admin --name NAME"
                  f"{' --db ' + cfg.db if cfg.db else ''}`", file=sys.stderr)
    print(f"feedback studio on http://{cfg.host}:{cfg.port} (database {db.url})", file=sys.stderr)
    uvicorn.run(create_app(db), host=cfg.host, port=cfg.port, log_level=cfg.log_level)
    return 0


@_store_errors
def run_import(cfg: LabelImportConfig) -> int:
    from alignloop.feedback.io import import_file
    from alignloop.feedback.store import Project, set_guidelines
    from sqlalchemy import select

    db = _db(cfg.db)
    guidelines = Path(cfg.guidelines).read_text(encoding="utf-8") if cfg.guidelines else None
    settings = {"task_type": cfg.task_type, "overlap": cfg.overlap, "gold_rate": cfg.gold_rate,
                "order": cfg.order, "criteria": cfg.criteria}
    with db.read() as s:
        exists = s.scalar(select(Project.id).where(Project.name == cfg.project)) is not None
    summary = import_file(db, cfg.project, cfg.file, labeler=cfg.labeler,
                          **({} if exists else {**settings, "guidelines": guidelines or "",
                                                "content_warning": cfg.content_warning or ""}))
    if exists:  # settings given for an existing project update it after the import
        from alignloop.feedback.store import get_project, update_project

        with db.write() as s:
            p = get_project(s, cfg.project)
            update_project(s, p, **{k: v for k, v in settings.items() if k != "task_type"})
            if cfg.task_type and cfg.task_type != p.task_type:
                raise DataError(f"project '{p.name}' is {p.task_type}; its task type cannot change", field="task_type")
            if guidelines is not None and guidelines != p.guidelines or cfg.content_warning is not None:
                set_guidelines(s, p, guidelines if guidelines is not None else p.guidelines, cfg.content_warning)
    print(json.dumps(summary))
    return 0


@_store_errors
def run_export(cfg: LabelExportConfig) -> int:
    from alignloop.feedback.io import export_file

    summary = export_file(_db(cfg.db), cfg.project, cfg.format, cfg.output, cfg.method, cfg.min_judgments)
    left_out = sum(summary.get("excluded", {}).values())
    print(f"wrote {summary['rows']} rows to {cfg.output} (export {summary['export_id']})"
          + (f"; left out {left_out} tasks: {summary['excluded']}" if left_out else ""), file=sys.stderr)
    print(json.dumps(summary))
    return 0


@_store_errors
def run_stats(cfg: LabelStatsConfig) -> int:
    from alignloop.feedback.stats import project_stats
    from alignloop.feedback.store import get_project

    db = _db(cfg.db)
    with db.read() as s:
        stats = project_stats(s, get_project(s, cfg.project), method=cfg.method)
    print(json.dumps(stats, indent=2))
    return 0


@_store_errors
def run_add_user(cfg: LabelAddUserConfig) -> int:
    from alignloop.feedback import auth
    from alignloop.feedback.store import create_labeler

    password = cfg.password or auth.new_password()
    with _db(cfg.db).write() as s:
        lab = create_labeler(s, cfg.name, role=cfg.role, kind=cfg.kind, identity=cfg.identity, password=password)
        token = auth.new_token(s, lab)
    print(f"created {cfg.role} '{cfg.name}'")
    if not cfg.password:
        print(f"password: {password}")
    print(f"token: {token}")
    print("(shown once; only hashes are stored)", file=sys.stderr)
    return 0
