"""``alignloop label serve | import | export | stats | add-user | user | member``: configs and runners."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from alignloop.core.db import (  # noqa: F401  (default_db_url: re-exported)
    default_db_url,
    display_url,
    make_parent_folder,
)
from alignloop.core.errors import AlignloopError
from alignloop.feedback import processes
from alignloop.feedback.config import (  # noqa: F401  (re-exported)
    LabelAddUserConfig,
    LabelExportConfig,
    LabelImportConfig,
    LabelMemberConfig,
    LabelServeConfig,
    LabelStatsConfig,
    LabelUserConfig,
)


def _db(url: str, connections: int | None = None):
    from alignloop.feedback.models import Database

    url = url or default_db_url()
    make_parent_folder(url)
    try:
        return Database(url) if connections is None else Database(url, connections=connections)
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

    db = _db(cfg.db, connections=cfg.threads)
    with db.read() as s:
        if s.scalar(select(Labeler.id).where(Labeler.role == "admin")) is None:
            print("note: no admin yet; create one with `alignloop label add-user --role admin --name NAME"
                  f"{' --db ' + cfg.db if cfg.db else ''}`", file=sys.stderr)
    print(f"feedback studio on http://{cfg.host}:{cfg.port} (database {display_url(db.url)}"
          f"{f', {cfg.workers} server processes' if cfg.workers > 1 else ''})", file=sys.stderr)
    settings = dict(host=cfg.host, port=cfg.port, log_level=cfg.log_level, **proxy_settings(cfg.trusted_proxy))
    if cfg.workers == 1:
        uvicorn.run(create_app(db, trusted_proxies=cfg.trusted_proxy, threads=cfg.threads), **settings)
        return 0
    # several processes: each starts from an import string and builds its app from the environment (nothing of
    # the app is shared between them but the database: sessions, tokens, the sign-in throttle and the counters are
    # all rows there); each listens on a socket of its own where the platform allows it (``processes``)
    db.dispose()
    os.environ.update(studio_environment(db.url, cfg.trusted_proxy, cfg.threads))
    if processes.supported():
        return processes.serve(STUDIO_APP, cfg.workers, **settings)
    uvicorn.run(STUDIO_APP, factory=True, workers=cfg.workers, **settings)
    return 0


#: the app factory each of several server processes runs
STUDIO_APP = "alignloop.feedback.api:app_from_environment"


def studio_environment(url: str, trusted_proxies: list[str], threads: int) -> dict[str, str]:
    """What ``api.app_from_environment`` reads in each server process."""
    from alignloop.feedback.api import DB_ENV, PROXIES_ENV, THREADS_ENV

    return {DB_ENV: url, PROXIES_ENV: json.dumps(list(trusted_proxies)), THREADS_ENV: str(threads)}


def proxy_settings(trusted_proxies: list[str]) -> dict:
    """uvicorn's forwarded-header settings: believe ``X-Forwarded-For`` / ``-Proto`` only from the proxies named
    with ``--trusted-proxy``. (uvicorn's default believes them from 127.0.0.1, so any process on the machine
    could pick the client address the sign-in throttle and the audit log see.)"""
    return {"proxy_headers": bool(trusted_proxies), "forwarded_allow_ips": list(trusted_proxies) or None}


@_store_errors
def run_import(cfg: LabelImportConfig) -> int:
    from tqdm.auto import tqdm

    from alignloop.feedback.io import import_file

    db = _db(cfg.db)
    guidelines = Path(cfg.guidelines).read_text(encoding="utf-8") if cfg.guidelines else None
    settings = {"task_type": cfg.task_type, "overlap": cfg.overlap, "gold_rate": cfg.gold_rate, "order": cfg.order,
                "criteria": cfg.criteria, "guidelines": guidelines, "content_warning": cfg.content_warning}

    def bar(total: int):  # noqa: ANN202
        return tqdm(total=total, desc="import", unit="task", file=sys.stderr, dynamic_ncols=True)

    summary = import_file(db, cfg.project, cfg.file, labeler=cfg.labeler, progress=bar, **settings)
    print(import_report(summary), file=sys.stderr)
    print(json.dumps(summary))
    return 0


def import_report(summary: dict) -> str:
    """One line saying what an import added and what it skipped, by reason."""
    line = (f"imported {summary['tasks']} tasks ({summary['prompts']} prompts, {summary['judgments']} judgments"
            + (f", {summary['gold_tasks']} gold" if summary["gold_tasks"] else "")
            + f") from a {summary['format']} file into '{summary['project']}' ({summary['task_type']})")
    skipped = summary.get("skipped") or {}
    if skipped:
        line += f"; skipped {sum(skipped.values())}: " + ", ".join(f"{k} {v}" for k, v in skipped.items())
    return line


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


def _password_from(cfg) -> str | None:  # noqa: ANN001
    """The password of --password-env (checked by the config), or of the deprecated --password (with a warning)."""
    import os

    if cfg.password_env:
        return os.environ[cfg.password_env]
    if getattr(cfg, "password", None):
        print("warning: --password puts the password in the shell history and the process list; use "
              "--password-env NAME instead", file=sys.stderr)
        return cfg.password
    return None


@_store_errors
def run_add_user(cfg: LabelAddUserConfig) -> int:
    from alignloop.feedback import accounts, auth
    from alignloop.feedback.queries import create_labeler

    given = _password_from(cfg)
    password = given or auth.new_password()
    with _db(cfg.db).write() as s:
        lab = create_labeler(s, cfg.name, role=cfg.role, kind=cfg.kind, identity=cfg.identity, password=password)
        accounts.audit(s, "user.create", accounts.CLI_ACTOR, lab.name, role=lab.role, kind=lab.kind)
        token = accounts.issue_token(s, lab, accounts.CLI_ACTOR, cfg.token_days, "created with the user") \
            if cfg.token else None
    print(f"created {cfg.role} '{cfg.name}'")
    if not given:
        print(f"password: {password}")
    if token:
        print(f"token: {token} (expires in {cfg.token_days} days)")
    print("(shown once; only hashes are stored)", file=sys.stderr)
    return 0


@_store_errors
def run_user(cfg: LabelUserConfig) -> int:
    from alignloop.feedback import accounts, auth

    db = _db(cfg.db)
    who = accounts.CLI_ACTOR
    if cfg.action == "audit":
        with db.read() as s:
            print(json.dumps(accounts.audit_rows(s, cfg.limit, cfg.name or None), indent=2))
        return 0
    if cfg.action == "reset-password":
        given = _password_from(cfg)
        password = given or auth.new_password()
        password_hash = auth.hash_password(password)  # before the write lock: argon2 is slow on purpose
    with db.write() as s:
        lab = accounts.get_user(s, cfg.name)
        if cfg.action == "deactivate":
            out = accounts.deactivate(s, lab, who)
            print(f"deactivated '{lab.name}': ended {out['sessions']} sessions, revoked {out['tokens']} tokens")
        elif cfg.action == "reactivate":
            accounts.reactivate(s, lab, who)
            print(f"reactivated '{lab.name}' (old tokens stay revoked: issue one with new-token)")
        elif cfg.action == "reset-password":
            n = accounts.reset_password(s, lab, password_hash, who)
            print(f"reset the password of '{lab.name}'; ended {n} sessions")
            if not given:
                print(f"password: {password}")
        elif cfg.action == "end-sessions":
            print(f"ended {accounts.end_sessions(s, lab, who)} sessions of '{lab.name}'")
        elif cfg.action == "new-token":
            token = accounts.issue_token(s, lab, who, cfg.days, cfg.token_name)
            print(f"token: {token} (expires in {cfg.days} days; shown once)")
        elif cfg.action == "revoke-tokens":
            print(f"revoked {accounts.revoke_tokens(s, lab, who, token_id=cfg.token_id)} tokens of '{lab.name}'")
        else:  # list-tokens
            print(json.dumps(accounts.list_tokens(s, lab), indent=2))
    return 0


@_store_errors
def run_member(cfg: LabelMemberConfig) -> int:
    from alignloop.feedback import access, accounts
    from alignloop.feedback.queries import get_project

    with _db(cfg.db).write() as s:
        p = get_project(s, cfg.project)
        if cfg.action == "list":
            print(json.dumps(access.members(s, p), indent=2))
        elif cfg.action == "add":
            m = access.add_member(s, p, accounts.get_user(s, cfg.name), cfg.role, accounts.CLI_ACTOR)
            print(f"'{cfg.name}' is a {m.role} of '{p.name}'")
        else:
            access.remove_member(s, p, accounts.get_user(s, cfg.name), accounts.CLI_ACTOR)
            print(f"'{cfg.name}' is no longer a member of '{p.name}'")
    return 0
