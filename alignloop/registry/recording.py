"""Recording a training run: its config, the sha256 and judgment ids of its data, its parent, metrics and model.

``pipelines.stages.run`` calls ``start_run`` before a trainer and ``finish_run`` after it. Recording never makes a
run fail: a database that cannot be reached gives a warning and the run goes on."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from alignloop.core.db import DatabaseError, default_db_url, utcnow
from alignloop.registry.cards import write_model_card
from alignloop.registry.store import Registry, model_dict, open_registry, resolve_model_ref, run_dict
from alignloop.registry.tables import ModelRow, RunRow, new_id

#: config fields that name input files whose hashes identify the data a run used
DATA_FIELDS = ("data", "dev_data", "prompts")


#: config fields that name another model a run depends on (besides its parent ``model``)
MODEL_FIELDS = ("reward_model", "ref_model", "reference")


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
    try:
        with reg.read() as s:
            rows = s.execute(text("SELECT ej.judgment_id FROM export_judgments ej JOIN exports e ON "
                                  "e.id = ej.export_id WHERE e.sha256 IN ("
                                  + ",".join(f":h{i}" for i in range(len(shas))) + ")"),
                             {f"h{i}": h for i, h in enumerate(shas)}).all()
    except (DatabaseError, SQLAlchemyError) as exc:  # recorded without the judgments behind its data (as before 0.2)
        print(f"warning: registry: cannot read the studio's exports ({exc}); the run is recorded without the "
              "judgments behind its data", file=sys.stderr)
        return []
    return [int(r[0]) for r in rows]


def stage_name(cfg: Any) -> str:
    return " ".join(getattr(type(cfg), "command", ())) or type(cfg).__name__


def _warn(msg: str) -> None:
    print(f"warning: registry: {msg} (the run goes on without being recorded)", file=sys.stderr, flush=True)


def _config_json(cfg: Any) -> dict:
    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    return json.loads(json.dumps(d, default=str))


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
               name: str | None = None, db: str | None = None, card: bool = True) -> str | None:
    """Record a finished run in one call (for code that trains outside ``alignloop <stage>``); returns the
    model id when ``output`` holds a model. ``card=False`` leaves the folder's model card alone (a folder another
    run made and described, registered again under another name). Never raises."""
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
        if card:
            write_model_card(final, model_view, run_view, reg)
        return model_view["id"]
    except Exception as exc:
        _warn(f"{exc.__class__.__name__}: {exc}")
        return None
