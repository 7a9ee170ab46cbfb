"""The model registry: every training run, the model it produced, and where that model came from.

Each run of a trainer records its resolved config, the sha256 of its input files, the judgment ids of the
labels in them (exports of the feedback studio carry a ``judgment_ids`` field per row, and the studio's
``exports`` table maps a file's sha256 to the judgments it holds), its parent model, its final metrics and its
artifact folder. Lineage walks these links back: model → run → data → judgments, and model → parent model.

The tables live in the same database as the feedback studio (default: ``alignloop.db`` under the alignloop
home) and are opened through the same handle (``alignloop.core.db.Database``), but have their own Alembic
chain and version table, see ``registry/migrations/``.

Recording never makes a training run fail: if the database cannot be reached the run warns and goes on
(``start_run``, ``finish_run`` and ``record_run`` catch and warn). Reads (``models list``, ``lineage``) do not
hide a broken database: they raise ``DatabaseError``, which the CLI prints as a message.

    from alignloop.registry import store as registry
    reg = registry.open_registry()                 # default SQLite file, migrated on first use
    registry.record_run(cfg, output, metrics, parent, data_hashes, judgment_ids)
    reg.list_models(); reg.lineage("m-1a2b3c4d")
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError

from alignloop.core import db as core_db
from alignloop.core.db import NAMING_CONVENTION, Database, DatabaseError, default_db_url, make_parent_folder, utcnow  # noqa: F401  (the registry's names for them)
from alignloop.registry.tables import JobRow, ModelRow, RegistryBase, RunRow, ServedAnswer, new_id  # noqa: F401  (old names of the tables)

#: the registry's Alembic chain (run by path: its env.py imports this module, so this module does not import it)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


# --------------------------------------------------------------------------------------------------
# Tables (own metadata: the feedback studio's migrations never see them)
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# The database handle
# --------------------------------------------------------------------------------------------------


class Registry(Database):
    """The one database handle (``alignloop.core.db``) on the registry tables, migrated on open, and the
    queries the CLI and the server use."""

    def __init__(self, url: str | None = None, migrate: bool = True):
        url = url or default_db_url()
        make_parent_folder(url)
        super().__init__(url)
        if migrate:
            core_db.upgrade(self.engine, MIGRATIONS)

    # ---- models -----------------------------------------------------------------------------------
    def list_models(self) -> list[dict]:
        with self.read() as s:
            return [model_dict(m) for m in s.scalars(select(ModelRow).order_by(ModelRow.created_at, ModelRow.id))]

    def find_model(self, ref: str) -> ModelRow | None:
        """A model by id, by name (the newest of that name), or by its folder."""
        with self.read() as s:
            m = s.get(ModelRow, ref)
            if m is None:
                m = s.scalars(select(ModelRow).where(ModelRow.name == ref)
                              .order_by(ModelRow.created_at.desc(), ModelRow.id.desc())).first()
            if m is None and ref and Path(ref).exists():
                want = _real(ref)
                for cand in s.scalars(select(ModelRow)):
                    if _real(cand.path) == want or _real(Path(cand.path).parent) == want:
                        return cand
            return m

    def model(self, ref: str) -> ModelRow:
        m = self.find_model(ref)
        if m is None:
            from alignloop.core.errors import AlignloopError

            raise AlignloopError(f"no model '{ref}' in the registry {self.url} (see `alignloop models list`)")
        return m

    def show(self, ref: str) -> dict:
        m = self.model(ref)
        out = model_dict(m)
        with self.read() as s:
            run = s.get(RunRow, m.run_id) if m.run_id else None
            out["run"] = run_dict(run) if run else None
        return out

    def lineage(self, ref: str) -> dict:
        """The chain of models back to the base, each with the run, data and labels that produced it."""
        chain: list[dict] = []
        m: ModelRow | None = self.model(ref)
        seen: set[str] = set()
        while m is not None and m.id not in seen:
            seen.add(m.id)
            with self.read() as s:
                run = s.get(RunRow, m.run_id) if m.run_id else None
            data = []
            for fld, h in (run.data_hashes if run else {}).items():
                data.append({"field": fld, **h, "exports": self._exports_for(h.get("sha256", ""))})
            chain.append({"model_id": m.id, "name": m.name, "stage": m.stage, "path": m.path,
                          "base_model": m.base_model, "parent_id": m.parent_id, "run_id": m.run_id,
                          "data": data, "judgment_ids": list(run.judgment_ids) if run else [],
                          "labelers": self._labelers_for(list(run.judgment_ids) if run else [])})
            m = self.find_model(m.parent_id) if m.parent_id else None
        base = chain[-1]["base_model"] if chain else ""
        return {"model_id": chain[0]["model_id"] if chain else ref, "base_model": base, "chain": chain,
                "judgment_ids": sorted({j for c in chain for j in c["judgment_ids"]})}

    def _exports_for(self, sha256: str) -> list[dict]:
        """Feedback-studio exports whose file had this hash (empty when the studio's tables are absent)."""
        if not sha256 or not self.has_tables("exports", "projects"):
            return []
        with self.read() as s:
            rows = s.execute(text("SELECT e.id, p.name, e.format, e.path, e.n_rows FROM exports e "
                                  "JOIN projects p ON p.id = e.project_id WHERE e.sha256 = :h ORDER BY e.id"),
                             {"h": sha256}).all()
        return [{"export_id": r[0], "project": r[1], "format": r[2], "path": r[3], "rows": r[4]} for r in rows]

    def _labelers_for(self, judgment_ids: list[int]) -> dict[str, int]:
        """How many of the judgments each labeler kind gave (human / ai / user), when the studio's tables exist."""
        if not judgment_ids or not self.has_tables("judgments", "labelers"):
            return {}
        with self.read() as s:
            rows = s.execute(text("SELECT l.kind, COUNT(*) FROM judgments j JOIN labelers l ON l.id = j.labeler_id "
                                  f"WHERE j.id IN ({','.join(str(int(i)) for i in judgment_ids)}) "
                                  "GROUP BY l.kind")).all()
        return {str(k): int(n) for k, n in rows}


def _real(p: Any) -> str:
    try:
        return str(Path(p).expanduser().resolve())
    except OSError:
        return str(p)


def model_dict(m: ModelRow) -> dict:
    return {"id": m.id, "name": m.name, "path": m.path, "stage": m.stage, "run_id": m.run_id,
            "parent_id": m.parent_id, "base_model": m.base_model, "metrics": m.metrics,
            "created_at": m.created_at.isoformat() + "Z"}


def run_dict(r: RunRow) -> dict:
    return {"id": r.id, "stage": r.stage, "status": r.status, "output": r.output, "config": r.config,
            "data_hashes": r.data_hashes, "judgment_ids": r.judgment_ids, "parent_model_id": r.parent_model_id,
            "base_model": r.base_model, "metrics": r.metrics, "model_id": r.model_id, "job_id": r.job_id,
            "error": r.error, "started_at": r.started_at.isoformat() + "Z",
            "finished_at": r.finished_at.isoformat() + "Z" if r.finished_at else None}


_registries: dict[str, Registry] = {}
_lock = threading.Lock()


def open_registry(url: str | None = None) -> Registry:
    """The process-wide registry for ``url`` (default database), migrated on first use."""
    url = url or default_db_url()
    with _lock:
        if url not in _registries:
            _registries[url] = Registry(url)
        return _registries[url]


def resolve_model_ref(ref: str, db: str | None = None) -> tuple[str, str | None]:
    """``(path or name to load, registry model id or None)``: registry ids and names map to their folder;
    aliases, folders and .gguf files pass through (with the id of the registered model at that folder)."""
    if not ref:
        return ref, None
    try:
        m = open_registry(db).find_model(ref)
    except (DatabaseError, SQLAlchemyError) as exc:  # a broken registry does not stop a folder loading (as before 0.2)
        print(f"warning: registry: cannot look {ref!r} up ({exc}); loading it as given", file=sys.stderr)
        return ref, None
    if m is None:
        return ref, None
    if Path(ref).exists():
        return ref, m.id
    return m.path, m.id


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------


