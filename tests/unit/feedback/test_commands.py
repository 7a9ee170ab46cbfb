"""``alignloop label ...`` through the real CLI entry point."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import pytest
from feedback_helpers import generate_records, write_jsonl

from alignloop.cli.main import build_parser, main
from alignloop.feedback import commands

CONFIGS = [commands.LabelServeConfig, commands.LabelImportConfig, commands.LabelExportConfig,
           commands.LabelStatsConfig, commands.LabelAddUserConfig, commands.LabelUserConfig, commands.LabelMemberConfig]


@pytest.mark.parametrize("cls", CONFIGS)
def test_every_field_is_documented_and_flags_exist(cls):
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
    flags = build_parser(cls).format_help()
    assert "--db" in flags


def test_required_flags_parse():
    from alignloop.cli.main import parse

    _, cfg = parse(["label", "serve", "--db", "sqlite:///x.db", "--host", "0.0.0.0", "--port", "9000"])
    assert (cfg.db, cfg.host, cfg.port) == ("sqlite:///x.db", "0.0.0.0", 9000)
    _, cfg = parse(["label", "export", "--db", "sqlite:///x.db", "--project", "p", "--format", "kto",
                    "--output", "o.jsonl"])
    assert cfg.format == "kto"
    with pytest.raises(SystemExit):
        parse(["label", "export", "--project", "p", "--format", "csv", "--output", "o"])


def test_cli_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path / "home"))
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    assert main(["label", "add-user", "--db", db, "--name", "lead", "--role", "admin", "--token"]) == 0
    out = capsys.readouterr().out
    assert "password: " in out and "token: al_" in out and "(expires in 90 days)" in out

    data = write_jsonl(tmp_path / "gen.jsonl", generate_records(3))
    guide = tmp_path / "guide.md"
    guide.write_text("# Prefer correct answers")
    assert main(["label", "import", "--db", db, "--project", "demo", str(data), "--overlap", "2",
                 "--guidelines", str(guide), "--content-warning", "May contain insults"]) == 0
    assert json.loads(capsys.readouterr().out)["tasks"] == 3

    assert main(["label", "stats", "--db", db, "--project", "demo"]) == 0
    captured = capsys.readouterr()
    stats = json.loads(captured.out)  # stdout is pure JSON
    assert stats["progress"]["tasks"] == 3 and stats["project"]["overlap"] == 2

    out_file = tmp_path / "pairs.jsonl"
    assert main(["label", "export", "--db", db, "--project", "demo", "--format", "trl", "--output",
                 str(out_file)]) == 0
    assert out_file.exists() and "left out 3 tasks" in capsys.readouterr().err

    # the default database lives in the alignloop home
    assert main(["label", "add-user", "--name", "x"]) == 0
    assert (tmp_path / "home" / "alignloop.db").exists()


def test_cli_errors_are_clear(tmp_path, capsys):
    db = f"sqlite:///{tmp_path / 'labels.db'}"
    assert main(["label", "stats", "--db", db, "--project", "missing"]) == 2
    assert "no project named 'missing'" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completions": ["a", "b"]}\n{"prompt": ""}\n')
    assert main(["label", "import", "--db", db, "--project", "p", str(bad)]) == 2
    assert f"{bad}:2:" in capsys.readouterr().err
    assert main(["label", "import", "--db", db, "--project", "p"]) == 2
    assert "file: a file to import is required" in capsys.readouterr().err
    assert main(["label", "add-user", "--db", db, "--name", "a", "--password", "short"]) == 2
    assert main(["label", "serve", "--db", "mysql://x"]) == 2


def test_cli_user_lifecycle_and_members(tmp_path, capsys, monkeypatch):
    from alignloop.feedback import auth
    from alignloop.feedback.store import Database, Labeler, LoginSession

    db = f"sqlite:///{tmp_path / 'labels.db'}"
    monkeypatch.setenv("ANN_PASSWORD", "ann's long password")
    assert main(["label", "add-user", "--db", db, "--name", "ann", "--password-env", "ANN_PASSWORD"]) == 0
    out = capsys.readouterr().out
    assert out == "created labeler 'ann'\n"  # no password echoed, no token unless asked
    assert main(["label", "add-user", "--db", db, "--name", "bob", "--password", "bob-pass-1"]) == 0
    assert "--password-env NAME instead" in capsys.readouterr().err  # still works, with a warning
    assert main(["label", "add-user", "--db", db, "--name", "x", "--password-env", "UNSET_VAR"]) == 2
    assert "UNSET_VAR is not set" in capsys.readouterr().err

    handle = Database(db)
    with handle.write() as s:
        ann = s.query(Labeler).filter_by(name="ann").one()
        assert auth.verify_password(ann.password_hash, "ann's long password")
        auth.open_session(s, ann)
    assert main(["label", "user", "new-token", "--db", db, "--name", "ann", "--days", "3", "--token-name", "ci"]) == 0
    assert "expires in 3 days" in capsys.readouterr().out
    assert main(["label", "user", "list-tokens", "--db", db, "--name", "ann"]) == 0
    assert [t["name"] for t in json.loads(capsys.readouterr().out)] == ["ci"]
    assert main(["label", "user", "deactivate", "--db", db, "--name", "ann"]) == 0
    assert capsys.readouterr().out == "deactivated 'ann': ended 1 sessions, revoked 1 tokens\n"
    with handle.read() as s:
        assert s.query(LoginSession).count() == 0 and not s.query(Labeler).filter_by(name="ann").one().active
    assert main(["label", "user", "reactivate", "--db", db, "--name", "ann"]) == 0
    assert main(["label", "user", "reset-password", "--db", db, "--name", "ann"]) == 0
    assert "password: " in capsys.readouterr().out
    assert main(["label", "user", "audit", "--db", db, "--name", "ann"]) == 0
    assert [e["action"] for e in json.loads(capsys.readouterr().out)] == [
        "user.reset_password", "user.reactivate", "user.deactivate", "tokens.revoke", "sessions.end", "token.issue",
        "user.create"]
    assert main(["label", "user", "deactivate", "--db", db, "--name", "nobody"]) == 2
    assert "no user named 'nobody'" in capsys.readouterr().err

    data = write_jsonl(tmp_path / "gen.jsonl", generate_records(2))
    assert main(["label", "import", "--db", db, "--project", "demo", str(data)]) == 0
    capsys.readouterr()
    assert main(["label", "member", "add", "--db", db, "--project", "demo", "--name", "bob"]) == 0
    assert main(["label", "member", "list", "--db", db, "--project", "demo"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1]) == [{"name": "bob", "role": "labeler",
                                                                      "active": True}]
    handle.dispose()


def test_forwarded_headers_are_believed_only_from_the_named_proxies(tmp_path):
    """``label serve`` runs uvicorn with its forwarded-header settings from --trusted-proxy: without one, a request
    from 127.0.0.1 that writes X-Forwarded-For is recorded with its real address (uvicorn's default believed the
    header from 127.0.0.1, so a local process could dodge the per-address sign-in throttle)."""
    import asyncio
    import re

    import httpx
    import uvicorn
    from sqlalchemy import select

    from alignloop.feedback.api import create_app
    from alignloop.feedback.store import AuditEvent, Database

    db = Database(f"sqlite:///{tmp_path / 'labels.db'}")

    async def failed_login_seen_from(trusted: list[str], peer: str) -> str:
        config = uvicorn.Config(create_app(db, trusted_proxies=trusted), **commands.proxy_settings(trusted))
        config.load()
        transport = httpx.ASGITransport(app=config.loaded_app, client=(peer, 5000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            page = await client.get("/login")
            token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            await client.post("/login", data={"name": "nobody", "password": "x" * 8, "csrf_token": token},
                              headers={"X-Forwarded-For": "6.6.6.6"})
        with db.read() as s:
            return s.scalars(select(AuditEvent.client).order_by(AuditEvent.id.desc())).first()

    assert asyncio.run(failed_login_seen_from([], "127.0.0.1")) == "127.0.0.1"
    assert asyncio.run(failed_login_seen_from(["10.0.0.0/8"], "10.0.0.2")) == "6.6.6.6"
    assert asyncio.run(failed_login_seen_from(["10.0.0.0/8"], "127.0.0.1")) == "127.0.0.1"
    db.dispose()


def test_several_server_processes_need_postgresql(tmp_path, capsys):
    """SQLite takes one writer at a time and the studio queues its writers inside one process: ``--workers 2``
    on SQLite (the default database too) is refused before anything starts, saying why."""
    assert main(["label", "serve", "--db", f"sqlite:///{tmp_path / 'labels.db'}", "--workers", "2"]) == 2
    err = capsys.readouterr().err
    assert "workers: 2 server processes need a PostgreSQL database" in err and "one writer at a time" in err
    assert main(["label", "serve", "--workers", "2"]) == 2
    assert main(["label", "serve", "--workers", "0"]) == 2


def test_several_server_processes_build_their_app_from_the_environment(monkeypatch, tmp_path):
    """With ``--workers N`` uvicorn starts N processes from an import string (an app object cannot be handed to
    them); each builds the studio's app from the database URL and the trusted proxies ``label serve`` put in the
    environment."""
    import uvicorn

    from alignloop.feedback import api
    from alignloop.feedback.models import Database

    url = f"sqlite:///{tmp_path / 'labels.db'}"  # (run_serve is called directly: the config check is above)
    Database(url).dispose()
    ran, served = {}, {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app, **kw))
    monkeypatch.setattr(commands.processes, "serve", lambda app, workers, **kw: served.update(
        app=app, workers=workers, **kw) or 0)
    for name in (api.DB_ENV, api.PROXIES_ENV, api.THREADS_ENV):  # (the test's end takes away what run_serve sets)
        monkeypatch.setenv(name, "")
    cfg = commands.LabelServeConfig(db=url, workers=3, trusted_proxy=["10.0.0.0/8"], port=8123, threads=2)
    assert commands.run_serve(cfg) == 0
    # a process each with a socket of its own (processes.serve), where the platform has SO_REUSEPORT
    assert served["app"] == "alignloop.feedback.api:app_from_environment" and ran == {}
    assert served["workers"] == 3 and served["port"] == 8123 and served["forwarded_allow_ips"] == ["10.0.0.0/8"]
    monkeypatch.setattr(commands.processes, "supported", lambda: False)  # elsewhere: uvicorn's workers
    assert commands.run_serve(cfg) == 0
    assert ran["app"] == "alignloop.feedback.api:app_from_environment" and ran["factory"] is True
    assert ran["workers"] == 3 and ran["port"] == 8123 and ran["forwarded_allow_ips"] == ["10.0.0.0/8"]
    app = api.app_from_environment()  # what each process does
    state = app.app.state  # (create_app wraps the FastAPI app in the Limits middleware)
    assert state.db.url == url and [str(n) for n in state.trusted_proxies] == ["10.0.0.0/8"]
    assert _handler_threads_when_served(app.app) == 2
    state.db.dispose()


def _handler_threads_when_served(app) -> int:  # noqa: ANN001
    """The size of AnyIO's thread pool (where Starlette runs plain-function handlers) while ``app`` is served."""
    import anyio.to_thread

    async def served() -> int:
        async with app.router.lifespan_context(app):
            return anyio.to_thread.current_default_thread_limiter().total_tokens

    return asyncio.run(served())


def test_handler_threads_and_database_connections_follow_threads(tmp_path):
    """``label serve --threads N``: each server process runs at most N handlers at once (AnyIO's default is 40)
    and keeps N PostgreSQL connections open (up to 64 more when all are busy: a request holds its connection a
    little past its thread); the default is 4, not AnyIO's 40 threads on 20 + 40 connections, which under load ran
    dozens of transactions side by side on 2 cores (benchmarks/README.md)."""
    from alignloop.core.db import Database as Engine
    from alignloop.feedback.api import create_app
    from alignloop.feedback.models import Database

    db = Database(f"sqlite:///{tmp_path / 'labels.db'}")
    assert _handler_threads_when_served(create_app(db).app) == 4
    assert _handler_threads_when_served(create_app(db, threads=7).app) == 7
    db.dispose()
    pg = Engine("postgresql+psycopg://nobody@127.0.0.1:1/none", connections=3)  # (an engine connects on first use)
    assert (pg.engine.pool.size(), pg.engine.pool._max_overflow) == (3, 64)
    assert Engine("postgresql+psycopg://nobody@127.0.0.1:1/none").engine.pool.size() == 4
    assert main(["label", "serve", "--threads", "0"]) == 2


def test_several_processes_refuse_a_port_in_use():
    """Each of several server processes listens with SO_REUSEPORT, which would share a port with another server
    that set it too instead of failing: ``label serve --workers N`` checks the port is free first."""
    import socket

    from alignloop.core.errors import AlignloopError
    from alignloop.feedback import processes

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(AlignloopError, match=f"port: cannot listen on 127.0.0.1:{port}"):
            processes.serve("alignloop.feedback.api:app_from_environment", 2, host="127.0.0.1", port=port)


def test_each_process_socket_answers_without_waiting_for_delayed_acks():
    """asyncio turns Nagle's algorithm off (TCP_NODELAY) only on connections accepted on a socket that says it is
    TCP; a socket made with protocol 0 gave connections where every response (headers, then body) waited for the
    client's delayed ACK, 40 ms more per request with several processes and none with one."""
    import socket

    from alignloop.feedback import processes

    sock = processes._listening_socket(socket.AF_INET, "127.0.0.1", 0)
    port, nodelay = sock.getsockname()[1], []

    async def accept_one() -> None:
        accepted = asyncio.get_running_loop().create_future()

        class Peer(asyncio.Protocol):
            def connection_made(self, transport):  # noqa: ANN001
                s = transport.get_extra_info("socket")
                nodelay.append(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                accepted.set_result(None)

        server = await asyncio.get_running_loop().create_server(Peer, sock=sock)
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await accepted
        writer.close()
        server.close()

    asyncio.run(accept_one())
    assert nodelay == [1]
