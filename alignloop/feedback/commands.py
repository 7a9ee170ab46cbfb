"""``alignloop label serve | import | export | stats | add-user``: configs and runners."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from alignloop.core.db import default_db_url, make_parent_folder  # noqa: F401  (default_db_url: re-exported)
from alignloop.core.errors import AlignloopError, DataError
from alignloop.feedback.config import (  # noqa: F401  (re-exported)
    LabelAddUserConfig,
    LabelExportConfig,
    LabelImportConfig,
    LabelServeConfig,
    LabelStatsConfig,
)


def _db(url: str):
    from alignloop.feedback.models import Database

    url = url or default_db_url()
    make_parent_folder(url)
    try:
        return Database(url)
    except Exception as exc:  # unreachable server, bad URL, a newer schema: say which database
        raise AlignloopError(f"cannot open the database {url}: {exc.__class__.__name__}: {exc}") from None


# --------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------


def _store_errors(fn):  # noqa: ANN001
    """Store errors (unknown project, duplicate name) become CLI errors without a traceback."""

    def wrapped(cfg):  # noqa: ANN001
        from alignloop.feedback.errors import StoreError

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
    from alignloop.feedback.models import Labeler

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
    from sqlalchemy import select

    from alignloop.feedback.io import import_file
    from alignloop.feedback.models import Project
    from alignloop.feedback.queries import get_project, set_guidelines, update_project

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
    from alignloop.feedback.queries import get_project
    from alignloop.feedback.stats import project_stats

    db = _db(cfg.db)
    with db.read() as s:
        stats = project_stats(s, get_project(s, cfg.project), method=cfg.method)
    print(json.dumps(stats, indent=2))
    return 0


@_store_errors
def run_add_user(cfg: LabelAddUserConfig) -> int:
    from alignloop.feedback import auth
    from alignloop.feedback.queries import create_labeler

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
