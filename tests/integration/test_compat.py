"""Nothing a user already has breaks: files written by the code before the package restructuring (commit ca9066a)
still upgrade, resume and load, with the values the old code recorded in ``expected.json``; a studio database
written just before issue 19 changed the studio's schema (commit 4183a1b^) upgrades, and its labelers keep
labeling the projects they worked on.

The old files are made, not committed (no model weights in the repository): the ``old`` fixture extracts the old
package with ``git archive`` and runs ``tests/fixtures/compat/make_fixtures.py`` against it, once, in this
environment; the result is kept under ``.pytest_cache`` keyed by the script, the commit and the torch and
transformers versions. ``before_19`` does the same with ``make_studio_before_19.py`` and commit 4183a1b^ (no
models, so no torch in its key).

Only public entry points are used (the CLI, ``Database``, ``open_registry``, ``load_reward_model``), so the tests
hold whichever module a name moves to. Subprocesses run on the CPU, as the fixtures were made."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from testutil import python_cmd

REPO = Path(__file__).resolve().parents[2]
MAKER = REPO / "tests" / "fixtures" / "compat" / "make_fixtures.py"
OLD_COMMIT = "ca9066a"
STUDIO_19_MAKER = REPO / "tests" / "fixtures" / "compat" / "make_studio_before_19.py"
STUDIO_19_COMMIT = "4183a1b^"  # the parent of the commit that changed the studio's schema for issue 19
FEEDBACK_VERSION_TABLE = "alembic_version"
REGISTRY_VERSION_TABLE = "alignloop_registry_version"
PG_BASE = os.environ.get("ALIGNLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fixtures_key(commit: str = OLD_COMMIT, maker: Path = MAKER, models: bool = True) -> str:
    parts = [commit, hashlib.sha256(maker.read_bytes()).hexdigest()]
    if models:  # the fixtures hold model weights and caches that these versions wrote
        import torch
        import transformers

        parts += [torch.__version__, transformers.__version__]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]


def make_old_fixtures(where: Path, commit: str = OLD_COMMIT, maker: Path = MAKER) -> None:
    """The old package from git, then ``maker`` run against it into ``where/fixtures``."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", commit, "alignloop"], capture_output=True)
    if tar.returncode != 0:
        pytest.skip(f"the compatibility fixtures are made by commit {commit}, which this checkout lacks "
                    f"(a shallow clone or no git?): {tar.stderr.decode().strip()}")
    shutil.rmtree(where, ignore_errors=True)
    (where / "old").mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(where / "old")], input=tar.stdout, check=True)
    proc = subprocess.run([sys.executable, str(maker), "--out", str(where / "fixtures"), "--root", str(where / "root")],
                          capture_output=True, text=True, cwd=where / "old", timeout=900,
                          env={**os.environ, "PYTHONPATH": str(where / "old"), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, f"{maker.name} against {commit} failed:\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-4000:]}"


def cached_fixtures(request, commit: str, maker: Path, models: bool) -> Path:
    """The folder ``maker`` wrote with the code of ``commit``: made once, then kept under .pytest_cache."""
    where = Path(request.config.cache.mkdir(f"compat-{fixtures_key(commit, maker, models)}"))
    if not (where / "fixtures" / "expected.json").exists():
        make_old_fixtures(where, commit, maker)
    return where / "fixtures"


@pytest.fixture(scope="module")
def old(request) -> SimpleNamespace:
    """The old code's files (``folder``), what it reported (``expected``) and the folder it worked in (``root``)."""
    folder = cached_fixtures(request, OLD_COMMIT, MAKER, models=True)
    expected = json.loads((folder / "expected.json").read_text())
    return SimpleNamespace(folder=folder, expected=expected, root=Path(expected["root"]))


@pytest.fixture(scope="module")
def before_19(request) -> SimpleNamespace:
    """A studio database made just before issue 19's schema change (``folder``) and what its maker recorded."""
    folder = cached_fixtures(request, STUDIO_19_COMMIT, STUDIO_19_MAKER, models=False)
    return SimpleNamespace(folder=folder, expected=json.loads((folder / "expected.json").read_text()))


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(python_cmd() + list(args), capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": "", **(env or {})}, timeout=600)
    assert proc.returncode == 0, f"alignloop {' '.join(args)}:\n{proc.stderr[-4000:]}"
    return proc


def first_module(*names: str):
    """The first of ``names`` that imports (a name may live at its new or its old place)."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(f"none of {names} imports")


def migrations_folder(which: str) -> Path:
    names = {"feedback": ["alignloop.feedback.migrations"],
             "registry": ["alignloop.registry.migrations", "alignloop.registry_migrations"]}[which]
    return Path(first_module(*names).__file__).parent


def head(which: str) -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory(str(migrations_folder(which))).get_heads()
    assert len(heads) == 1, f"{which} migrations have {len(heads)} heads: {heads}"
    return heads[0]


def version(engine, table: str) -> str:
    from sqlalchemy import text

    with engine.connect() as conn:
        return conn.execute(text(f"SELECT version_num FROM {table}")).scalar_one()


def assert_rows_intact(engine, tables: dict[str, dict]) -> None:
    """Every row the old code wrote is still there, column for column (new columns may have been added)."""
    from sqlalchemy import text

    with engine.connect() as conn:
        for name, old in tables.items():
            if name in (FEEDBACK_VERSION_TABLE, REGISTRY_VERSION_TABLE):
                continue
            cols = ", ".join(f'"{c}"' for c in old["columns"])
            rows = [list(r) for r in conn.execute(text(f'SELECT {cols} FROM "{name}" ORDER BY rowid'))]
            assert rows == old["rows"], f"table {name} changed"


def copy_db(old: SimpleNamespace, tmp_path: Path, name: str) -> str:
    shutil.copy(old.folder / name, tmp_path / name)
    return f"sqlite:///{tmp_path / name}"


def open_studio(url: str):
    from alignloop.feedback.store import Database

    return Database(url)


def open_registry(url: str):
    from alignloop.registry import open_registry as open_

    return open_(url)


# ---- migrations ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["feedback", "registry"])
def test_existing_migrations_are_unchanged_and_one_head_each(old, which):
    versions = migrations_folder(which) / "versions"
    for name, digest in old.expected["migrations"][which].items():
        assert (versions / name).exists(), f"migration {name} is gone from {versions}"
        assert hashlib.sha256((versions / name).read_bytes()).hexdigest() == digest, f"migration {name} was edited"
    head(which)  # exactly one


# ---- the two databases on SQLite -------------------------------------------------------------------------


def test_old_studio_database_upgrades_with_its_rows(old, tmp_path):
    url = copy_db(old, tmp_path, "studio.sqlite")
    db = open_studio(url)
    try:
        assert version(db.engine, FEEDBACK_VERSION_TABLE) == head("feedback")
        assert_rows_intact(db.engine, old.expected["studio"]["tables"])
    finally:
        db.dispose()
    out = tmp_path / "export.jsonl"
    cli("label", "export", "--db", url, "--project", "compat", "--format", "trl", "--output", str(out))
    assert out.read_text().splitlines() == old.expected["studio"]["export_trl"]


def test_old_studio_labelers_keep_labeling_their_projects(old, tmp_path):
    """The upgrade that brought project membership makes every labeler with assignments a member of that project,
    so bob and carol (labelers of "compat" before memberships existed) sign in and get their next task there."""
    import re

    from fastapi.testclient import TestClient

    url = copy_db(old, tmp_path, "studio.sqlite")
    db = open_studio(url)
    try:
        from alignloop.feedback.api import create_app

        for name in ("bob", "carol"):
            client = TestClient(create_app(db))
            page = client.get("/login")
            csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
            r = client.post("/login", data={"name": name, "password": f"{name}-pass-1", "csrf_token": csrf},
                            follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"] == "/", (name, r.headers.get("location"))
            me = client.get("/api/me").json()
            assert [p["name"] for p in client.get("/api/projects").json()] == ["compat"], name
            r = client.post("/api/projects/compat/next", headers={"X-CSRF-Token": me["csrf_token"]})
            assert r.status_code == 200 and "progress" in r.json(), (name, r.status_code, r.text)
            assert client.post("/api/projects/compat-prefs/next",
                               headers={"X-CSRF-Token": me["csrf_token"]}).status_code == 404
    finally:
        db.dispose()


def test_studio_from_before_issue_19_upgrades_and_its_labelers_keep_labeling(before_19, tmp_path):
    """A studio database made by the code just before issue 19's schema change (4183a1b^): the upgrade keeps every
    row, makes each labeler a member of the projects they hold assignments in, gives every old token an expiry 90
    days after the upgrade and makes the served-feedback project admin-only. Then the labelers carry on: bob with
    his old token and the session he had open (his open assignment comes back first), carol signing in with her
    password, both in exactly the projects they worked on; dave, who had not started, waits for a lead to add him."""
    import datetime as dt
    import re

    from fastapi.testclient import TestClient
    from sqlalchemy import text

    from alignloop.core.db import utcnow
    from alignloop.feedback.api import create_app

    want = before_19.expected
    url = copy_db(before_19, tmp_path, "studio.sqlite")
    before = utcnow()
    db = open_studio(url)
    after = utcnow()
    try:
        assert version(db.engine, FEEDBACK_VERSION_TABLE) == head("feedback")
        assert_rows_intact(db.engine, want["tables"])
        with db.engine.connect() as conn:
            members = conn.execute(text(
                "SELECT l.name, p.name, m.role FROM memberships m JOIN labelers l ON l.id = m.labeler_id "
                "JOIN projects p ON p.id = m.project_id ORDER BY l.name, p.name")).all()
            assert [tuple(r) for r in members] == [("bob", "team", "labeler"), ("carol", "side", "labeler"),
                                                   ("carol", "team", "labeler")]
            admin_only = dict(conn.execute(text("SELECT name, admin_only FROM projects")).all())
            assert {k: bool(v) for k, v in admin_only.items()} == {"team": False, "side": False, "served": True}
            expiries = [dt.datetime.fromisoformat(str(r[0])) for r in conn.execute(text(
                "SELECT expires_at FROM api_tokens"))]
        assert len(expiries) == 4
        assert all(before + dt.timedelta(days=90) - dt.timedelta(seconds=1) <= e <=
                   after + dt.timedelta(days=90) for e in expiries), expiries

        with db.engine.connect() as conn:
            opened = dt.datetime.fromisoformat(str(conn.execute(
                text("SELECT created_at FROM assignments WHERE id = :i"),
                {"i": want["bob_open"]["assignment_id"]}).scalar()))
        web = create_app(db)
        app = TestClient(web)
        # the app's clock a minute after bob opened his assignment: the fixture database is made once and cached,
        # so by the wall clock his lease may have run out since (then a new task would rightly come instead)
        web.app.state.clock = lambda: opened + dt.timedelta(minutes=1)  # (web: the size-limit middleware)
        tokens = {name: {"Authorization": f"Bearer {t}"} for name, t in want["tokens"].items()}

        # bob: his old token works and now shows its expiry; the session he had open still works
        assert app.get("/api/me", headers=tokens["bob"]).json()["name"] == "bob"
        (listed,) = app.get("/api/me/tokens", headers=tokens["bob"]).json()
        assert listed["expired"] is False and listed["last_used_at"] is not None
        assert listed["expires_at"][:10] == (before + dt.timedelta(days=90)).date().isoformat()
        cookie = {"Cookie": f"alignloop_session={want['bob_session']['cookie']}"}
        with_csrf = {**cookie, "X-CSRF-Token": want["bob_session"]["csrf_token"]}
        assert [p["name"] for p in app.get("/api/projects", headers=cookie).json()] == ["team"]
        r = app.post("/api/projects/team/next", headers=with_csrf)
        assert r.status_code == 200 and r.json()["assignment_id"] == want["bob_open"]["assignment_id"]
        r = app.post(f"/api/assignments/{r.json()['assignment_id']}/judgment", json={"choice": "B"}, headers=with_csrf)
        assert r.status_code == 201
        mine = [j["task_id"] for j in app.get("/api/me/judgments", headers=tokens["bob"]).json()]
        assert mine == want["judged"]["bob"]["team"] + [want["bob_open"]["task_id"]]
        assert app.get("/api/projects/side", headers=tokens["bob"]).status_code == 404

        # carol signs in with her password and labels in both of her projects
        page = app.get("/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        r = app.post("/login", data={"name": "carol", "password": "carol-pass-1", "csrf_token": csrf},
                     follow_redirects=False)
        assert (r.status_code, r.headers["location"]) == (303, "/")
        me = app.get("/api/me").json()
        assert me["name"] == "carol" and [p["name"] for p in app.get("/api/projects").json()] == ["side", "team"]
        for project in ("team", "side"):
            task = app.post(f"/api/projects/{project}/next", headers={"X-CSRF-Token": me["csrf_token"]}).json()
            assert task["done"] is False and task["task_id"] not in want["judged"]["carol"][project], project
        app.cookies.clear()

        # dave had not started: a member of nothing until a lead or an admin adds him
        assert app.get("/api/projects", headers=tokens["dave"]).json() == []
        assert app.post("/api/projects/team/next", headers=tokens["dave"]).status_code == 404
        assert app.post("/api/projects/team/members", json={"name": "dave"}, headers=tokens["alice"]).status_code == 201
        assert app.post("/api/projects/team/next", headers=tokens["dave"]).json()["done"] is False
        # the served model's feedback is the admins' alone
        assert app.get("/api/projects/served", headers=tokens["bob"]).status_code == 404
        assert [p["name"] for p in app.get("/api/projects", headers=tokens["alice"]).json()] == ["served", "side",
                                                                                                 "team"]
    finally:
        db.dispose()


def test_old_registry_database_upgrades_with_its_rows(old, tmp_path):
    url = copy_db(old, tmp_path, "registry.sqlite")
    reg = open_registry(url)
    try:
        assert version(reg.engine, REGISTRY_VERSION_TABLE) == head("registry")
        assert_rows_intact(reg.engine, old.expected["registry"]["tables"])
        models = old.expected["registry"]["tables"]["models"]
        want = [dict(zip(models["columns"], r))["id"] for r in models["rows"]]
        assert sorted(m["id"] for m in reg.list_models()) == sorted(want)
    finally:
        reg.dispose()
    shown = cli("models", "show", want[0], "--db", url).stdout
    assert want[0] in shown


def test_old_files_take_the_other_chain_beside_theirs(old, tmp_path):
    """One old file may hold both chains (the default database): each upgrades without touching the other."""
    studio_url = copy_db(old, tmp_path, "studio.sqlite")
    reg = open_registry(studio_url)
    reg.dispose()
    registry_url = copy_db(old, tmp_path, "registry.sqlite")
    db = open_studio(registry_url)
    db.dispose()
    tables_of = {studio_url: old.expected["studio"]["tables"], registry_url: old.expected["registry"]["tables"]}
    for url, tables in tables_of.items():
        db = open_studio(url)
        try:
            assert version(db.engine, FEEDBACK_VERSION_TABLE) == head("feedback")
            assert version(db.engine, REGISTRY_VERSION_TABLE) == head("registry")
            assert_rows_intact(db.engine, tables)
        finally:
            db.dispose()


# ---- both chains on PostgreSQL ---------------------------------------------------------------------------


def pg_unavailable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_BASE.replace("postgresql+psycopg://", "postgresql://"), connect_timeout=3) as c:
            c.execute("select 1")
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL not reachable at {PG_BASE} ({exc.__class__.__name__}: {exc})"
    return None


def pg_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_BASE.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(sql)


@pytest.mark.postgres
def test_both_chains_reach_their_heads_on_an_empty_postgres_schema():
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    schema = f"compat_{uuid.uuid4().hex[:12]}"
    pg_exec(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_BASE}?options=-csearch_path%3D{schema}"
    try:
        db = open_studio(url)
        reg = open_registry(url)
        try:
            assert version(db.engine, FEEDBACK_VERSION_TABLE) == head("feedback")
            assert version(reg.engine, REGISTRY_VERSION_TABLE) == head("registry")
            from sqlalchemy import inspect

            tables = set(inspect(db.engine).get_table_names())
            assert {"projects", "tasks", "judgments", "labelers", "runs", "models"} <= tables
        finally:
            reg.dispose()
            db.dispose()
    finally:
        pg_exec(f'DROP SCHEMA "{schema}" CASCADE')


# ---- a run folder, a reward model, a DPO reference cache --------------------------------------------------


def metric_lines(run: Path) -> list[str]:
    return [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]


def test_interrupted_sft_run_resumes_from_its_checkpoint(old, tmp_path):
    run = tmp_path / "sft-run"
    shutil.copytree(old.folder / "sft-run", run)
    before = metric_lines(run)
    cli("sft", "--config", str(run / "config.yaml"), "--resume", "--max-steps", "3", "--data", str(run / "sft.jsonl"),
        "--output", str(run))
    after = metric_lines(run)
    rows = [json.loads(ln) for ln in after]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]
    # steps 1 and 2 are the old run's lines, untouched: the run continued rather than starting over
    assert [ln for ln in after if json.loads(ln)["step"] <= 2] == before
    assert rows[-1]["loss"] == pytest.approx(old.expected["sft"]["resumed_step3_loss"], rel=1e-5)
    assert (run / "final" / "config.json").exists()


def test_old_reward_model_folder_loads_and_scores_the_same(old):
    load_reward_model = first_module("alignloop.models.reward_model", "alignloop.models.heads").load_reward_model
    want = old.expected["reward"]
    rm = load_reward_model(old.folder / "reward-model")
    scores, spread = rm.score(want["prompts"], want["completions"], return_std=True)
    assert scores == pytest.approx(want["scores"], abs=1e-5)
    assert spread == pytest.approx(want["spread"], abs=1e-5)


def put_back_dpo_inputs(old: SimpleNamespace) -> None:
    """The models, data and cache at the paths and mtimes the old run saw (the cache key is made of both)."""
    shutil.rmtree(old.root, ignore_errors=True)
    shutil.copytree(old.folder / "dpo" / "models", old.root / "models")
    shutil.copytree(old.folder / "dpo" / "home", old.root / "home")
    shutil.copy(old.folder / "dpo" / "prefs.jsonl", old.root / "prefs.jsonl")
    for rel, mtime in old.expected["dpo"]["mtimes"].items():
        os.utime(old.root / rel, (mtime, mtime))


def cache_files(home: Path) -> dict[str, str]:
    """Every file under the home's cache/ except tokenised data, with its hash."""
    return {str(p.relative_to(home)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((home / "cache").rglob("*")) if p.is_file() and "tokens" not in p.relative_to(home).parts}


def test_dpo_recomputes_an_old_reference_cache_once(old, tmp_path):
    """0.2.0's reference-cache key named the reference model, not what was computed with it: ``--lora --reference
    X`` cached the adapter-off policy's log-probs under X's name (issue #17). The key now names the reference, the
    token ids and the precision, so an old entry is never read: the log-probs are computed once more (the same
    model, so the old run's step-1 loss) and the next run reads the new entry."""
    want = old.expected["dpo"]
    put_back_dpo_inputs(old)
    try:
        home = old.root / "home"
        before = cache_files(home)
        assert sorted(Path(k).name for k in before) == want["cache_files"]
        models = old.root / "models"

        def run(name: str) -> tuple[float, str]:
            proc = cli("dpo", "--model", str(models / "policy"), "--reference", str(models / "reference"),
                       "--data", str(old.root / "prefs.jsonl"), "--output", str(tmp_path / name), *want["flags"],
                       env={"ALIGNLOOP_HOME": str(home)})
            rows = [json.loads(ln) for ln in metric_lines(tmp_path / name)]
            (step1,) = [r["loss"] for r in rows if r.get("step") == 1 and "loss" in r]
            return step1, proc.stderr

        step1, log = run("dpo-run")
        after = cache_files(home)
        assert "from cache" not in log
        assert len(after) == len(before) + 1 and before.items() <= after.items()  # one new entry, the old kept
        assert step1 == pytest.approx(want["step1_loss"], rel=1e-5)
        step1, log = run("dpo-rerun")
        assert "reference log-probs for train: from cache" in log and cache_files(home) == after
        assert step1 == pytest.approx(want["step1_loss"], rel=1e-5)
    finally:
        shutil.rmtree(old.root, ignore_errors=True)
