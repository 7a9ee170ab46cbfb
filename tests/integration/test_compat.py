"""Nothing a user already has breaks: files written by the code before the package restructuring (commit ca9066a)
still upgrade, resume and load, with the values the old code recorded in ``expected.json``.

The old files are made, not committed (no model weights in the repository): the ``old`` fixture extracts the old
package with ``git archive`` and runs ``tests/fixtures/compat/make_fixtures.py`` against it, once, in this
environment; the result is kept under ``.pytest_cache`` keyed by the script, the commit and the torch and
transformers versions.

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
FEEDBACK_VERSION_TABLE = "alembic_version"
REGISTRY_VERSION_TABLE = "alignloop_registry_version"
PG_BASE = os.environ.get("ALIGNLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fixtures_key() -> str:
    import torch
    import transformers

    parts = [OLD_COMMIT, hashlib.sha256(MAKER.read_bytes()).hexdigest(), torch.__version__, transformers.__version__]
    return hashlib.sha256(" ".join(parts).encode()).hexdigest()[:16]


def make_old_fixtures(where: Path) -> None:
    """The old package from git, then make_fixtures.py run against it into ``where/fixtures``."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", OLD_COMMIT, "alignloop"], capture_output=True)
    if tar.returncode != 0:
        pytest.skip(f"the compatibility fixtures are made by commit {OLD_COMMIT}, which this checkout lacks "
                    f"(a shallow clone or no git?): {tar.stderr.decode().strip()}")
    shutil.rmtree(where, ignore_errors=True)
    (where / "old").mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(where / "old")], input=tar.stdout, check=True)
    proc = subprocess.run([sys.executable, str(MAKER), "--out", str(where / "fixtures"), "--root", str(where / "root")],
                          capture_output=True, text=True, cwd=where / "old", timeout=900,
                          env={**os.environ, "PYTHONPATH": str(where / "old"), "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, f"make_fixtures.py against {OLD_COMMIT} failed:\n{proc.stdout[-2000:]}\n" \
                                 f"{proc.stderr[-4000:]}"


@pytest.fixture(scope="module")
def old(request) -> SimpleNamespace:
    """The old code's files (``folder``), what it reported (``expected``) and the folder it worked in (``root``)."""
    where = Path(request.config.cache.mkdir(f"compat-{fixtures_key()}"))
    if not (where / "fixtures" / "expected.json").exists():
        make_old_fixtures(where)
    folder = where / "fixtures"
    expected = json.loads((folder / "expected.json").read_text())
    return SimpleNamespace(folder=folder, expected=expected, root=Path(expected["root"]))


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
