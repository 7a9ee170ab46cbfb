"""The configs of ``alignloop label serve | import | export | stats | add-user`` (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Optional

from alignloop.core.config import (
    StageConfig,
    check_db_url,
    existing_file,
    in_range,
    opt,
    positive,
)

DB_HELP = ("Database URL: sqlite:///FILE.db or postgresql+psycopg://USER@HOST:PORT/DB; "
           "default: alignloop.db in the alignloop home.")


TaskType = Literal["pairwise", "ranking", "rating", "rewrite", "binary"]


Method = Literal["majority", "weighted", "bradley_terry", "ranked_pairs"]


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
        return check_db_url(self.db) + positive(self, "port") + in_range(self, "port", 1, 65535)


@dataclass
class LabelImportConfig(StageConfig):
    """Import prompts/completions (alignloop generate JSONL), TRL preferences or a Label Studio export."""

    command: ClassVar[tuple[str, ...]] = ("label", "import")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_import"

    file: str = opt("", "JSONL, JSON or .gz file to import (all-or-nothing).", positional=True)
    db: str = opt("", DB_HELP)
    project: str = opt("", "Project to import into; created when new.")
    task_type: Optional[TaskType] = opt(None, "Task type of a new project; default: from the data (2 completions: "
                                        "pairwise, more: ranking, preference files: pairwise). In a pairwise "
                                        "project, a prompt with K>2 completions becomes one task per pair.")
    overlap: Optional[int] = opt(None, "Distinct labelers per task (new projects: 3); agreement needs at least 2.")
    gold_rate: Optional[float] = opt(None, "Share of assignments that are gold tasks (records with a 'gold' answer), "
                                     "0..1, mixed in evenly (new projects: 0).")
    order: Optional[Literal["import", "uncertainty"]] = opt(
        None, "Hand out tasks in import order (new projects), or least certain first: active learning on the "
        "'uncertainty' column that `alignloop reward score` writes with an ensemble.")
    criteria: Optional[list[str]] = opt(None, "Rating criteria (default: helpfulness, honesty, harmlessness).")
    guidelines: Optional[str] = opt(None, "Markdown file with the labeling guidelines; importing a changed file "
                                    "makes a new version, and every judgment records the version it was made "
                                    "under.")
    content_warning: Optional[str] = opt(None, "Warning shown before labeling starts (e.g. for red-teaming data).")
    labeler: Optional[str] = opt(None, "Who made the judgments in a preference file; default: import:<file name>.")

    def check(self) -> list[str]:
        p = check_db_url(self.db)
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
        p = check_db_url(self.db)
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
        p = check_db_url(self.db)
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
        p = check_db_url(self.db)
        if not self.name:
            p.append("name: a name is required (--name NAME)")
        if self.password is not None and len(self.password) < 8:
            p.append("password: use at least 8 characters")
        return p
