"""``alignloop models list | show ID | lineage ID``: what the registry knows about trained models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import ClassVar, Optional

from alignloop.core.config import StageConfig, opt

DB_HELP = "Registry database URL (sqlite:///FILE.db or postgresql+psycopg://...); default: alignloop.db in the alignloop home."


def _check_db(url: Optional[str]) -> list[str]:
    if url and not (url.startswith("sqlite:") or url.startswith("postgresql")):
        return [f"db: '{url}' is not a sqlite:/// or postgresql+psycopg:// URL"]
    return []


@dataclass
class ModelsListConfig(StageConfig):
    """List registered models, newest last (a table, or JSON with --json)."""

    command: ClassVar[tuple[str, ...]] = ("models", "list")
    runner: ClassVar[str] = "alignloop.registry.commands:run_list"
    print_config: ClassVar[bool] = False

    db: Optional[str] = opt(None, DB_HELP)
    json: bool = opt(False, "Print JSON instead of a table.")

    def check(self) -> list[str]:
        return _check_db(self.db)


@dataclass
class ModelsShowConfig(StageConfig):
    """Show one model (by id, name or folder) with the run that made it, as JSON."""

    command: ClassVar[tuple[str, ...]] = ("models", "show")
    runner: ClassVar[str] = "alignloop.registry.commands:run_show"
    print_config: ClassVar[bool] = False

    model: str = opt("", "Model id (m-...), name or folder.", positional=True)
    db: Optional[str] = opt(None, DB_HELP)

    def check(self) -> list[str]:
        return (["model: which model? (alignloop models show ID)"] if not self.model else []) + _check_db(self.db)


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
        return (["model: which model? (alignloop models lineage ID)"] if not self.model else []) + _check_db(self.db)


def _registry(url: Optional[str]):
    from alignloop.core.errors import AlignloopError
    from alignloop.registry.store import default_db_url, open_registry

    try:
        return open_registry(url)
    except Exception as exc:
        raise AlignloopError(f"cannot open the registry {url or default_db_url()}: {exc.__class__.__name__}: {exc}") from None


def run_list(cfg: ModelsListConfig) -> int:
    models = _registry(cfg.db).list_models()
    if cfg.json:
        print(json.dumps(models, indent=1))
        return 0
    if not models:
        print("no models registered yet (train one: alignloop sft --model tiny --data FILE --output DIR)")
        return 0
    print(f"{'ID':<12} {'NAME':<28} {'STAGE':<13} {'PARENT':<12} {'CREATED':<20} PATH")
    for m in models:
        print(f"{m['id']:<12} {m['name'][:28]:<28} {m['stage']:<13} {(m['parent_id'] or m['base_model'])[:12]:<12} "
              f"{m['created_at'][:19]:<20} {m['path']}")
    return 0


def run_show(cfg: ModelsShowConfig) -> int:
    print(json.dumps(_registry(cfg.db).show(cfg.model), indent=1))
    return 0


def format_lineage(lin: dict) -> str:
    lines = [f"model {lin['model_id']} — base model: {lin['base_model']}"]
    for depth, c in enumerate(lin["chain"]):
        pad = "  " * depth
        lines.append(f"{pad}{c['model_id']} '{c['name']}' made by {c['stage']} (run {c['run_id']}) from "
                     f"{c['parent_id'] or c['base_model']}")
        for d in c["data"]:
            lines.append(f"{pad}  {d['field']}: {d['path']} (sha256 {d['sha256'][:12]})")
            for e in d["exports"]:
                lines.append(f"{pad}    = export {e['export_id']} of project '{e['project']}' ({e['format']}, {e['rows']} rows)")
        ids = c["judgment_ids"]
        if ids:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(c["labelers"].items()))
            shown = ", ".join(map(str, ids[:20])) + (f", … ({len(ids)} in all)" if len(ids) > 20 else "")
            lines.append(f"{pad}  labels: judgments {shown}" + (f" [{kinds}]" if kinds else ""))
        else:
            lines.append(f"{pad}  labels: none recorded (data not from a feedback-store export)")
    return "\n".join(lines)


def run_lineage(cfg: ModelsLineageConfig) -> int:
    lin = _registry(cfg.db).lineage(cfg.model)
    print(json.dumps(lin, indent=1) if cfg.json else format_lineage(lin))
    return 0
