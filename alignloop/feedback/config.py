"""The configs of ``alignloop label serve | import | export | stats | add-user | user | member`` (torch-free)."""

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

#: requests a studio server process works on at once (``label serve --threads``; ``api.create_app``)
DEFAULT_THREADS = 4

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
    trusted_proxy: list[str] = opt([], "Addresses or networks (CIDR) of reverse proxies in front of the studio: "
                                   "only their X-Forwarded-For is believed (sign-in throttle, audit log).")
    workers: int = opt(1, "Server processes (PostgreSQL only): each one uses about a core when busy. SQLite takes "
                       "one writer at a time, and the studio queues its writers inside one process.")

    threads: int = opt(DEFAULT_THREADS, "Requests each server process works on at once (its handler threads, and "
                       "as many PostgreSQL connections); more wait their turn. More threads than a few per core "
                       "cost CPU instead of adding throughput (benchmarks/README.md).")

    def check(self) -> list[str]:
        p = check_db_url(self.db) + positive(self, "port") + in_range(self, "port", 1, 65535)
        p += positive(self, "workers") + positive(self, "threads")
        if self.workers > 1 and not self.db.startswith("postgresql"):
            p.append(f"workers: {self.workers} server processes need a PostgreSQL database (--db "
                     "postgresql+psycopg://...). On SQLite one process serves: SQLite takes one writer at a time, "
                     "and the studio queues its writers on a lock inside one process; several processes would "
                     "instead wait in SQLite's busy handler, which sleeps in growing steps (seconds under load)")
        import ipaddress

        for v in self.trusted_proxy:
            try:
                ipaddress.ip_network(v, strict=False)
            except ValueError:
                p.append(f"trusted_proxy: '{v}' is not an address or a network like 10.0.0.0/8")
        return p


@dataclass
class LabelImportConfig(StageConfig):
    """Import tasks and judgments: alignloop generate output, TRL files, Label Studio, Argilla or raw exports."""

    command: ClassVar[tuple[str, ...]] = ("label", "import")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_import"

    file: str = opt("", "File to import (JSONL, JSON, CSV, Parquet, optionally .gz); its shape is told from its rows. "
                    "All-or-nothing: checked whole before anything is written.", positional=True)
    db: str = opt("", DB_HELP)
    project: str = opt("", "Project to import into; created when new.")
    task_type: Optional[TaskType] = opt(None, "Task type of a new project; default: from the data (preferences: "
                                        "pairwise, rankings: ranking, unpaired labels: binary; candidates: 2 "
                                        "pairwise, 1 binary, more ranking). In a pairwise project, a prompt with K>2 "
                                        "completions becomes one task per pair. An existing project's type cannot "
                                        "change.")
    overlap: Optional[int] = opt(None, "Distinct labelers per task (new projects: 3); agreement needs at least 2.")
    gold_rate: Optional[float] = opt(None, "Share of assignments that are gold tasks (records with a 'gold' answer), "
                                     "0..1, placed at random in each labeler's queue (new projects: 0).")
    order: Optional[Literal["import", "uncertainty"]] = opt(
        None, "Hand out tasks in import order (new projects), or least certain first: active learning on the "
        "'uncertainty' column that `alignloop reward score` writes with an ensemble.")
    criteria: Optional[list[str]] = opt(None, "Rating criteria (default: helpfulness, honesty, harmlessness).")
    guidelines: Optional[str] = opt(None, "Markdown file with the labeling guidelines; importing a changed file "
                                    "makes a new version, and every judgment records the version it was made "
                                    "under.")
    content_warning: Optional[str] = opt(None, "Warning shown before labeling starts (e.g. for red-teaming data).")
    labeler: Optional[str] = opt(None, "Who made the judgments of a TRL file (preferences, rankings, unpaired labels); "
                                 "default: import:<file name>. Label Studio, Argilla and raw exports name their own "
                                 "labelers.")

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


PASSWORD_ENV_HELP = ("Name of an environment variable holding the password (at least 8 characters), so that it "
                     "stays out of the shell history and the process list; default: a generated one.")


def _password_problems(cfg) -> list[str]:  # noqa: ANN001
    import os

    p = []
    if getattr(cfg, "password", None) is not None and len(cfg.password) < 8:
        p.append("password: use at least 8 characters")
    if cfg.password_env is not None:
        value = os.environ.get(cfg.password_env)
        if value is None:
            p.append(f"password_env: the environment variable {cfg.password_env} is not set")
        elif len(value) < 8:
            p.append(f"password_env: the password in {cfg.password_env} has fewer than 8 characters")
    return p


@dataclass
class LabelAddUserConfig(StageConfig):
    """Create an admin, a lead or a labeler; prints their password (and an API token with --token), shown once."""

    command: ClassVar[tuple[str, ...]] = ("label", "add-user")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_add_user"
    print_config: ClassVar[bool] = False  # it would echo a given password

    db: str = opt("", DB_HELP)
    name: str = opt("", "Sign-in name.")
    role: Literal["admin", "lead", "labeler"] = opt(
        "labeler", "admin: everything, every project; lead: creates projects and manages those they lead; labeler: "
        "labels the projects they are a member of (label member add).")
    kind: Literal["human", "ai", "user"] = opt("human", "human labeler, ai judge, or user of a served model.")
    identity: str = opt("", "For AI judges: the model and prompt that make the judgments.")
    password_env: Optional[str] = opt(None, PASSWORD_ENV_HELP)
    password: Optional[str] = opt(None, "Deprecated: the password on the command line (other users of the machine "
                                  "can read it in the process list); use --password-env.")
    token: bool = opt(False, "Also issue an API token (for scripts); tokens are issued only on request.")
    token_days: int = opt(90, "Days until that token expires.")

    def check(self) -> list[str]:
        p = check_db_url(self.db)
        if not self.name:
            p.append("name: a name is required (--name NAME)")
        return p + _password_problems(self) + in_range(self, "token_days", 1, 366)


UserAction = Literal["deactivate", "reactivate", "reset-password", "end-sessions", "new-token", "list-tokens",
                     "revoke-tokens", "audit"]


@dataclass
class LabelUserConfig(StageConfig):
    """Manage an account: deactivate (ends every session, revokes every token), reactivate, reset-password (ends
    sessions), end-sessions, new-token, list-tokens, revoke-tokens; or show the audit log (audit)."""

    command: ClassVar[tuple[str, ...]] = ("label", "user")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_user"
    print_config: ClassVar[bool] = False

    action: Optional[UserAction] = opt(None, "What to do: deactivate, reactivate, reset-password, end-sessions, "
                                       "new-token, list-tokens, revoke-tokens or audit.", positional=True)
    db: str = opt("", DB_HELP)
    name: str = opt("", "The account (for audit: show only the entries about it).")
    password_env: Optional[str] = opt(None, "reset-password: " + PASSWORD_ENV_HELP)
    days: int = opt(90, "new-token: days until the token expires.")
    token_name: str = opt("", "new-token: what the token is for (shown by list-tokens).")
    token_id: Optional[int] = opt(None, "revoke-tokens: revoke only this token (an id from list-tokens); default: all.")
    limit: int = opt(50, "audit: how many of the latest entries to show.")

    def check(self) -> list[str]:
        p = check_db_url(self.db)
        if self.action is None:
            p.append("action: say what to do (alignloop label user deactivate --name NAME)")
        if not self.name and self.action not in (None, "audit"):
            p.append("name: the account is required (--name NAME)")
        return p + _password_problems(self) + in_range(self, "days", 1, 366) + positive(self, "limit")


@dataclass
class LabelMemberConfig(StageConfig):
    """Project membership: add (or change the role of) a member, remove one, or list a project's members."""

    command: ClassVar[tuple[str, ...]] = ("label", "member")
    runner: ClassVar[str] = "alignloop.feedback.commands:run_member"
    print_config: ClassVar[bool] = False

    action: Optional[Literal["add", "remove", "list"]] = opt(None, "add, remove or list.", positional=True)
    db: str = opt("", DB_HELP)
    project: str = opt("", "The project.")
    name: str = opt("", "add/remove: the account.")
    role: Literal["labeler", "lead"] = opt("labeler", "add: labeler (labels it) or lead (also manages it).")

    def check(self) -> list[str]:
        p = check_db_url(self.db)
        if self.action is None:
            p.append("action: say what to do (alignloop label member add --project P --name NAME)")
        if not self.project:
            p.append("project: a project name is required (--project NAME)")
        if not self.name and self.action in ("add", "remove"):
            p.append("name: the account is required (--name NAME)")
        return p
