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

import datetime as dt
import gzip
import hashlib
import json
import os
import secrets
import sys
import threading
from pathlib import Path
from typing import Any, Optional

from sqlalchemy import JSON, Boolean, DateTime, Integer, MetaData, String, Text, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from alignloop.core import db as core_db
from alignloop.core.db import NAMING_CONVENTION, Database, DatabaseError, make_parent_folder
from alignloop.core.db import default_db_url, utcnow  # noqa: F401  (the registry's names for them)
from alignloop.core.files import write_text

#: the registry's Alembic chain (run by path: its env.py imports this module, so this module does not import it)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: config fields that name input files whose hashes identify the data a run used
DATA_FIELDS = ("data", "dev_data", "prompts")
#: config fields that name another model a run depends on (besides its parent ``model``)
MODEL_FIELDS = ("reward_model", "ref_model", "reference")


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


# --------------------------------------------------------------------------------------------------
# Tables (own metadata: the feedback studio's migrations never see them)
# --------------------------------------------------------------------------------------------------


class RegistryBase(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class RunRow(RegistryBase):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    stage: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(12), default="running")  # running | completed | failed
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    output: Mapped[str] = mapped_column(Text, default="")
    data_hashes: Mapped[dict] = mapped_column(JSON, default=dict)  # {field: {"path", "sha256"}}
    judgment_ids: Mapped[list] = mapped_column(JSON, default=list)
    parent_model_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    base_model: Mapped[str] = mapped_column(String(400), default="")  # the --model as given
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    model_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    job_id: Mapped[Optional[int]] = mapped_column(Integer, nullable=True, index=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)


class ModelRow(RegistryBase):
    __tablename__ = "models"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), index=True)
    path: Mapped[str] = mapped_column(Text)
    stage: Mapped[str] = mapped_column(String(40))
    run_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    parent_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    base_model: Mapped[str] = mapped_column(String(400), default="")
    metrics: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)


class JobRow(RegistryBase):
    """A training job queued through the server; the database is the queue."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    stage: Mapped[str] = mapped_column(String(40))
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    model_name: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    status: Mapped[str] = mapped_column(String(12), default="queued", index=True)  # queued|running|completed|failed|cancelled
    folder: Mapped[str] = mapped_column(Text, default="")
    pid: Mapped[Optional[int]] = mapped_column(Integer, nullable=True)
    model_id: Mapped[Optional[str]] = mapped_column(String(32), nullable=True)
    error: Mapped[Optional[str]] = mapped_column(Text, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)  # "host:pid" of the server running it
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[Optional[dt.datetime]] = mapped_column(DateTime, nullable=True)


class ServedAnswer(RegistryBase):
    """An answer the server gave, kept (with personal data masked) so feedback can refer to it by id."""

    __tablename__ = "served_answers"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model_id: Mapped[str] = mapped_column(String(400))
    prompt: Mapped[Any] = mapped_column(JSON)  # a string (completions) or a list of messages (chat)
    answers: Mapped[list] = mapped_column(JSON)  # one per choice (n)
    user: Mapped[Optional[str]] = mapped_column(String(200), nullable=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime, default=utcnow, index=True)


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
                                  f"WHERE j.id IN ({','.join(str(int(i)) for i in judgment_ids)}) GROUP BY l.kind")).all()
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


# --------------------------------------------------------------------------------------------------
# Recording runs (called once, from cli.run, for every trainer)
# --------------------------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():  # a datasets folder: hash the names and contents of its files in order
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()
    with open(p, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def data_hashes(cfg: Any) -> dict[str, dict]:
    out = {}
    for fld in DATA_FIELDS:
        v = getattr(cfg, fld, None)
        if isinstance(v, str) and v and Path(v).exists():
            out[fld] = {"path": str(Path(v).resolve()), "sha256": file_sha256(v)}
    return out


def judgment_ids_in(path: str | os.PathLike) -> list[int]:
    """The ``judgment_ids`` that feedback-studio exports put on every row (JSONL, optionally .gz)."""
    p = Path(path)
    if not p.is_file() or not (p.name.endswith(".jsonl") or p.name.endswith(".jsonl.gz") or p.suffix == ".json"):
        return []
    ids: set[int] = set()
    opener = gzip.open if p.name.endswith(".gz") else open
    try:
        with opener(p, "rt", encoding="utf-8") as fh:
            for line in fh:
                if '"judgment_ids"' not in line:
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                for j in row.get("judgment_ids") or []:
                    if isinstance(j, int) and not isinstance(j, bool):
                        ids.add(j)
    except (OSError, UnicodeDecodeError):
        return []
    return sorted(ids)


def _export_judgments(reg: Registry, hashes: dict[str, dict]) -> list[int]:
    """Judgment ids the studio recorded for exports whose file hash matches a data file of the run."""
    shas = [h["sha256"] for h in hashes.values()]
    if not shas or not reg.has_tables("export_judgments", "exports"):
        return []
    with reg.read() as s:
        rows = s.execute(text("SELECT ej.judgment_id FROM export_judgments ej JOIN exports e ON e.id = ej.export_id "
                              "WHERE e.sha256 IN (" + ",".join(f":h{i}" for i in range(len(shas))) + ")"),
                         {f"h{i}": h for i, h in enumerate(shas)}).all()
    return [int(r[0]) for r in rows]


def stage_name(cfg: Any) -> str:
    return " ".join(getattr(type(cfg), "command", ())) or type(cfg).__name__


def _warn(msg: str) -> None:
    print(f"warning: registry: {msg} (the run goes on without being recorded)", file=sys.stderr, flush=True)


def _config_json(cfg: Any) -> dict:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return json.loads(json.dumps(d, default=str))


def resolve_model_ref(ref: str, db: str | None = None) -> tuple[str, str | None]:
    """``(path or name to load, registry model id or None)``: registry ids and names map to their folder;
    aliases, folders and .gguf files pass through (with the id of the registered model at that folder)."""
    if not ref:
        return ref, None
    m = open_registry(db).find_model(ref)
    if m is None:
        return ref, None
    if Path(ref).exists():
        return ref, m.id
    return m.path, m.id


def start_run(cfg: Any) -> tuple[Any, str | None]:
    """Record a run as started; returns ``(cfg, run id)``. A ``--model`` naming a registered model (id or name)
    is replaced by its folder so the trainer loads it. ``None`` as id when the registry is unavailable."""
    db = getattr(cfg, "db", None)
    try:
        reg = open_registry(db)
        model = getattr(cfg, "model", "")
        path, parent = resolve_model_ref(model, db) if model else (model, None)
        if path != model and hasattr(cfg, "replace"):
            cfg = cfg.replace(model=path)
        hashes = data_hashes(cfg)
        judged = set()
        for h in hashes.values():
            judged.update(judgment_ids_in(h["path"]))
        judged.update(_export_judgments(reg, hashes))
        job = os.environ.get("ALIGNLOOP_JOB_ID")
        run = RunRow(id=new_id("run"), stage=stage_name(cfg), status="running", config=_config_json(cfg),
                     output=str(Path(getattr(cfg, "output", "") or ".").resolve()), data_hashes=hashes,
                     judgment_ids=sorted(judged), parent_model_id=parent, base_model=str(model),
                     job_id=int(job) if job and job.isdigit() else None)
        with reg.write() as s:
            s.add(run)
        return cfg, run.id
    except Exception as exc:  # never fail a training run for the registry
        _warn(f"cannot record the run in {db or default_db_url()}: {exc.__class__.__name__}: {exc}")
        return cfg, None


def read_final_metrics(output: Path) -> dict[str, Any]:
    """The last value of every metric in ``metrics.jsonl``, plus the step it was logged at."""
    path = output / "metrics.jsonl"
    if not path.exists():
        return {}
    out: dict[str, Any] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.update(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _final_folder(result: Any, output: Path) -> Path | None:
    for cand in ([Path(result)] if isinstance(result, (str, os.PathLike)) else []) + [output / "final", output]:
        if cand.is_dir() and ((cand / "config.json").exists() or (cand / "adapter_config.json").exists()):
            return cand
    return None


def finish_run(run_id: str | None, cfg: Any, result: Any = None, error: BaseException | None = None,
               name: str | None = None) -> str | None:
    """Mark the run completed (registering its final model and writing its model card) or failed.
    Returns the new model id (None on failure or when the registry is unavailable)."""
    if run_id is None:
        return None
    db = getattr(cfg, "db", None)
    try:
        reg = open_registry(db)
        output = Path(getattr(cfg, "output", "") or ".")
        metrics = read_final_metrics(output)
        with reg.write() as s:
            run = s.get(RunRow, run_id)
            if run is None:
                return None
            run.metrics, run.finished_at = metrics, utcnow()
            if error is not None:
                run.status = "failed"
                run.error = f"{error.__class__.__name__}: {error}"[:4000]
                return None
            run.status = "completed"
            final = _final_folder(result, output)
            if final is None:
                return None
            run_view, model_view = _add_model(s, run, final, name or os.environ.get("ALIGNLOOP_MODEL_NAME"), output)
        write_model_card(final, model_view, run_view, reg)
        return model_view["id"]
    except Exception as exc:
        _warn(f"cannot finish the run record {run_id}: {exc.__class__.__name__}: {exc}")
        return None


def _add_model(s: Any, run: RunRow, final: Path, name: str | None, output: Path) -> tuple[dict, dict]:
    """The model row of a finished run (its metrics and parent are the run's; default name
    ``<stage>-<output folder>``), linked to the run; returns the (run, model) views for the model card."""
    model = ModelRow(id=new_id("m"), name=name or f"{run.stage.replace(' ', '-')}-{output.resolve().name}",
                     path=str(final.resolve()), stage=run.stage, run_id=run.id, parent_id=run.parent_model_id,
                     base_model=run.base_model, metrics=run.metrics, created_at=utcnow())
    s.add(model)
    run.model_id = model.id
    return run_dict(run), model_dict(model)


def record_run(cfg: Any, output: str | os.PathLike, metrics: dict | None = None, parent: str | None = None,
               hashes: dict | None = None, judgment_ids: list[int] | None = None, stage: str | None = None,
               name: str | None = None, db: str | None = None) -> str | None:
    """Record a finished run in one call (for code that trains outside ``alignloop <stage>``); returns the
    model id when ``output`` holds a model. Never raises."""
    try:
        reg = open_registry(db or getattr(cfg, "db", None))
        out = Path(output)
        hashes = data_hashes(cfg) if hashes is None else hashes
        run = RunRow(id=new_id("run"), stage=stage or stage_name(cfg), status="completed", config=_config_json(cfg),
                     output=str(out.resolve()), data_hashes=hashes, judgment_ids=sorted(set(judgment_ids or [])),
                     parent_model_id=parent, base_model=str(getattr(cfg, "model", "") or ""),
                     metrics=metrics if metrics is not None else read_final_metrics(out), started_at=utcnow(),
                     finished_at=utcnow())
        final = _final_folder(out, out)
        with reg.write() as s:
            s.add(run)
            if final is None:
                return None
            run_view, model_view = _add_model(s, run, final, name, out)
        write_model_card(final, model_view, run_view, reg)
        return model_view["id"]
    except Exception as exc:
        _warn(f"{exc.__class__.__name__}: {exc}")
        return None


# --------------------------------------------------------------------------------------------------
# Model card
# --------------------------------------------------------------------------------------------------

METHODS = {
    "sft": "supervised fine-tuning on demonstrations (cross-entropy on answer tokens)",
    "dpo": "direct preference optimisation on chosen/rejected pairs",
    "reward train": "a Bradley-Terry reward model trained on preference pairs",
    "ppo": "PPO against a reward model with a per-token KL penalty",
    "grpo": "GRPO: group-relative advantages over K samples per prompt",
    "rloo": "RLOO: leave-one-out baselines over K samples per prompt",
}
CARD_HYPERPARAMETERS = ("learning_rate", "max_steps", "num_epochs", "batch_size", "grad_accum", "max_length",
                        "lora", "lora_r", "precision", "seed", "loss", "beta")


def model_card(model: dict, run: dict, lineage: dict | None = None) -> str:
    cfg = run.get("config") or {}
    metrics = {k: v for k, v in (run.get("metrics") or {}).items() if isinstance(v, (int, float))}
    lines = [f"# {model['name']}", "",
             f"Registry id `{model['id']}`, made by `alignloop {run['stage']}` (run `{run['id']}`) "
             f"on {run.get('finished_at') or run.get('started_at')}.", "",
             "## Base model", ""]
    parent = f" (registry model `{model['parent_id']}`)" if model.get("parent_id") else ""
    lines += [f"Started from `{model['base_model']}`{parent}."]
    if lineage and len(lineage.get("chain", [])) > 1:
        chain = " → ".join(f"`{c['model_id']}` ({c['stage']})" for c in reversed(lineage["chain"]))
        lines += ["", f"Lineage: `{lineage['base_model']}` → {chain}."]
    lines += ["", "## Data", ""]
    for fld, h in (run.get("data_hashes") or {}).items():
        lines.append(f"- `{fld}`: `{h['path']}` (sha256 `{h['sha256'][:16]}…`)")
    if not run.get("data_hashes"):
        lines.append("- (no input files recorded)")
    n = len(run.get("judgment_ids") or [])
    lines += ["", f"Labels: {n} judgment{'s' * (n != 1)} from the feedback store"
                  + (" (ids in the registry: `alignloop models lineage " + model['id'] + "`)." if n else
                     " (the data did not come from a feedback-store export).")]
    lines += ["", "## Method", "", METHODS.get(run["stage"], run["stage"]) + ".", ""]
    for k in CARD_HYPERPARAMETERS:
        if k in cfg and cfg[k] is not None:
            lines.append(f"- {k}: {cfg[k]}")
    lines += ["", "## Metrics (last logged values)", ""]
    lines += [f"- {k}: {v:.6g}" for k, v in sorted(metrics.items()) if k != "step"] or ["- (none logged)"]
    lines += ["", "## Intended use", "",
              "Research and internal assistants (e.g. question answering over provided documents) after "
              "evaluation on your own held-out questions. Serve it with `alignloop serve --model "
              f"{model['id']}` and collect user feedback for the next round.",
              "", "## Limits", "",
              "- Inherits the base model's knowledge cut-off, biases and failure modes; small models invent "
              "figures, so check answers against the source documents.",
              "- Trained on the data above only; quality outside that domain is unmeasured.",
              "- Not evaluated for safety-critical, legal, medical or financial advice without human review.", ""]
    return "\n".join(lines)


def write_model_card(folder: Path, model: dict, run: dict, reg: Registry | None = None) -> Path:
    lineage = None
    if reg is not None:
        try:
            lineage = reg.lineage(model["id"])
        except DatabaseError as exc:  # the card is still worth writing without its lineage line
            print(f"warning: registry: the model card of {model['id']} has no lineage: {exc}", file=sys.stderr)
    return write_text(folder / "README.md", model_card(model, run, lineage))
