"""The configs of ``alignloop models list | show | lineage`` (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from alignloop.core.config import StageConfig, check_db_url, opt

DB_HELP = ("Registry database URL (sqlite:///FILE.db or postgresql+psycopg://...); "
           "default: alignloop.db in the alignloop home.")


@dataclass
class ModelsListConfig(StageConfig):
    """List registered models, newest last (a table, or JSON with --json)."""

    command: ClassVar[tuple[str, ...]] = ("models", "list")
    runner: ClassVar[str] = "alignloop.registry.commands:run_list"
    print_config: ClassVar[bool] = False

    db: Optional[str] = opt(None, DB_HELP)
    json: bool = opt(False, "Print JSON instead of a table.")

    def check(self) -> list[str]:
        return check_db_url(self.db)


@dataclass
class ModelsShowConfig(StageConfig):
    """Show one model (by id, name or folder) with the run that made it, as JSON."""

    command: ClassVar[tuple[str, ...]] = ("models", "show")
    runner: ClassVar[str] = "alignloop.registry.commands:run_show"
    print_config: ClassVar[bool] = False

    model: str = opt("", "Model id (m-...), name or folder.", positional=True)
    db: Optional[str] = opt(None, DB_HELP)

    def check(self) -> list[str]:
        return (["model: which model? (alignloop models show ID)"] if not self.model else []) + check_db_url(self.db)


@dataclass
class ModelsLineageConfig(StageConfig):
    """The labels and parent models behind a model: model → run → data files → exports → judgments."""

    command: ClassVar[tuple[str, ...]] = ("models", "lineage")
    runner: ClassVar[str] = "alignloop.registry.commands:run_lineage"
    print_config: ClassVar[bool] = False

    model: str = opt("", "Model id (m-...), name or folder.", positional=True)
    db: Optional[str] = opt(None, DB_HELP)
    json: bool = opt(False, "Print JSON instead of text.")

    def check(self) -> list[str]:
        return (["model: which model? (alignloop models lineage ID)"] if not self.model else []) + check_db_url(self.db)
