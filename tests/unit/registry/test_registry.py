"""The model registry: runs recorded through cli.run's hook, lineage back to the labels, model cards, the
CLI, coexistence with the feedback studio's migrations, and never failing a run when the DB is unreachable."""

import hashlib
import json
from pathlib import Path

import pytest

from alignloop import cli, registry
from alignloop.trainers.config import SFTConfig


def _data(tmp: Path, name: str, rows: list[dict]) -> Path:
    p = tmp / name
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return p


def _fake_runner(cfg):
    """Stands in for a trainer: writes metrics.jsonl and a final model folder like sft does."""
    out = Path(cfg.output)
    (out / "final").mkdir(parents=True, exist_ok=True)
    (out / "final" / "config.json").write_text("{}")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 1.25, "eval/loss": 1.5}\n')
    return out / "final"


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(SFTConfig, "runner", "tests.unit.registry.test_registry:_fake_runner")
    return f"sqlite:///{tmp_path / 'reg.db'}"


def test_runs_models_and_lineage(tmp_path, db):
    d1 = _data(tmp_path, "round1.jsonl", [{"prompt": "q1", "completion": "a1", "judgment_ids": [1, 2]},
                                          {"prompt": "q2", "completion": "a2", "judgment_ids": [3]}])
    cfg1 = SFTConfig(model="tiny", data=str(d1), output=str(tmp_path / "r1"), db=db, max_steps=2).validate()
    cli.run(cfg1)
    reg = registry.open_registry(db)
    [m1] = reg.list_models()
    assert (m1["name"], m1["stage"], m1["base_model"], m1["parent_id"]) == ("sft-r1", "sft", "tiny", None)
    assert m1["path"] == str((tmp_path / "r1" / "final").resolve())
    assert m1["metrics"] == {"step": 2, "loss": 1.25, "eval/loss": 1.5}

    # round 2 starts from round 1 by registry id; the trainer gets the folder, the registry the parent
    d2 = _data(tmp_path, "round2.jsonl", [{"prompt": "q3", "completion": "a3", "judgment_ids": [7, 9]}])
    cfg2 = SFTConfig(model=m1["id"], data=str(d2), output=str(tmp_path / "r2"), db=db).validate()
    cli.run(cfg2)
    m2 = [m for m in reg.list_models() if m["id"] != m1["id"]][0]
    assert m2["parent_id"] == m1["id"] and m2["base_model"] == m1["id"]
    show = reg.show(m2["id"])
    assert show["run"]["config"]["model"] == m1["path"]  # what the trainer loaded
    assert show["run"]["data_hashes"]["data"]["sha256"] == hashlib.sha256(d2.read_bytes()).hexdigest()
    assert show["run"]["judgment_ids"] == [7, 9] and show["run"]["status"] == "completed"

    lin = reg.lineage(m2["id"])
    assert [c["model_id"] for c in lin["chain"]] == [m2["id"], m1["id"]]
    assert lin["base_model"] == "tiny" and lin["judgment_ids"] == [1, 2, 3, 7, 9]

    card = (tmp_path / "r2" / "final" / "README.md").read_text()
    for part in ("## Base model", f"registry model `{m1['id']}`", "## Data", "round2.jsonl", "Labels: 2 judgments",
                 "## Method", "supervised fine-tuning", "## Metrics", "- loss: 1.25", "## Intended use", "## Limits",
                 f"Lineage: `tiny` → `{m1['id']}` (sft) → `{m2['id']}` (sft)."):
        assert part in card, part


def test_failed_run_is_recorded(tmp_path, db, monkeypatch):
    def boom(cfg):
        raise RuntimeError("loss became nan")

    monkeypatch.setattr("tests.unit.registry.test_registry._fake_runner", boom)
    d = _data(tmp_path, "d.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(RuntimeError):
        cli.run(SFTConfig(model="tiny", data=str(d), output=str(tmp_path / "bad"), db=db).validate())
    reg = registry.open_registry(db)
    with reg.read() as s:
        [run] = s.query(registry.RunRow).all()
        assert (run.status, run.error, run.model_id) == ("failed", "RuntimeError: loss became nan", None)
    assert reg.list_models() == []


def test_unreachable_database_never_fails_the_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(SFTConfig, "runner", "tests.unit.registry.test_registry:_fake_runner")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    d = _data(tmp_path, "d.jsonl", [{"prompt": "q", "completion": "a"}])
    cfg = SFTConfig(model="tiny", data=str(d), output=str(tmp_path / "out"), db=f"sqlite:///{blocker}/x.db").validate()
    assert cli.run(cfg) == tmp_path / "out" / "final"
    assert "warning: registry: cannot record the run" in capsys.readouterr().err


def test_models_cli(tmp_path, db, capsys):
    d = _data(tmp_path, "d.jsonl", [{"prompt": "q", "completion": "a", "judgment_ids": [4]}])
    cli.run(SFTConfig(model="tiny", data=str(d), output=str(tmp_path / "cli"), db=db).validate())
    capsys.readouterr()
    assert cli.main(["models", "list", "--db", db, "--json"]) == 0
    [m] = json.loads(capsys.readouterr().out)
    assert cli.main(["models", "lineage", m["id"], "--db", db]) == 0
    out = capsys.readouterr().out
    assert f"{m['id']} 'sft-cli' made by sft" in out and "labels: judgments 4" in out
    assert cli.main(["models", "show", "sft-cli", "--db", db]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == m["id"]
    assert cli.main(["models", "show", "nope", "--db", db]) == 2
    assert "no model 'nope' in the registry" in capsys.readouterr().err


def test_registry_and_feedback_migrations_share_one_database(tmp_path):
    store = pytest.importorskip("alignloop.feedback.store")
    import sqlalchemy as sa

    url = f"sqlite:///{tmp_path / 'both.db'}"
    store.Database(url)
    registry.Registry(url)
    store.Database(url)  # each chain is a no-op the second time, whatever the order
    registry.Registry(url)
    eng = sa.create_engine(url)
    names = set(sa.inspect(eng).get_table_names())
    assert {"runs", "models", "jobs", "served_answers", "alignloop_registry_version", "judgments", "exports",
            "alembic_version"} <= names
    with eng.connect() as c:
        assert c.execute(sa.text("SELECT version_num FROM alignloop_registry_version")).scalar() == "r0001"


def test_registry_connections_have_the_studios_pragmas_and_write_lock(tmp_path):
    """The registry opens the database through the one handle (alignloop.core.db), like the studio."""
    import sqlalchemy as sa

    reg = registry.Registry(f"sqlite:///{tmp_path / 'pragmas.db'}")
    with reg.write() as s:
        got = {p: s.execute(sa.text(f"PRAGMA {p}")).scalar()
               for p in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")}
        assert reg._write_lock.locked()  # writer threads of this process queue here, not in SQLite's busy handler
    assert got == {"journal_mode": "wal", "synchronous": 2, "foreign_keys": 1, "busy_timeout": 30000}
    assert not reg._write_lock.locked()


def test_a_broken_database_is_an_error_not_an_empty_answer(tmp_path, db, capsys):
    """Reads raise a DatabaseError (an AlignloopError the CLI prints) instead of answering 'nothing there';
    recording a run still only warns."""
    import sqlite3

    from alignloop.core.db import DatabaseError

    d = _data(tmp_path, "d.jsonl", [{"prompt": "q", "completion": "a"}])
    cli.run(SFTConfig(model="tiny", data=str(d), output=str(tmp_path / "ok"), db=db).validate())
    reg = registry.open_registry(db)
    [m] = reg.list_models()
    assert reg.lineage(m["id"])["chain"][0]["data"][0]["exports"] == []  # no studio tables: nothing to show
    path = db[len("sqlite:///"):]
    with sqlite3.connect(path) as con:  # studio tables that are not what the studio makes
        con.execute("CREATE TABLE exports (x INTEGER)")
        con.execute("CREATE TABLE projects (y INTEGER)")
        con.execute("CREATE TABLE export_judgments (z INTEGER)")
    with pytest.raises(DatabaseError, match="no such column"):
        reg.lineage(m["id"])
    capsys.readouterr()
    assert cli.main(["models", "lineage", m["id"], "--db", db]) == 2
    assert "no such column" in capsys.readouterr().err
    # a training run is never failed by the registry: it warns and goes on, recorded without the judgments
    # behind its data (the studio's tables could not be read)
    assert cli.run(SFTConfig(model="tiny", data=str(d), output=str(tmp_path / "again"), db=db).validate()) == \
        tmp_path / "again" / "final"
    assert "warning: registry: cannot read the studio's exports" in capsys.readouterr().err
    assert len(reg.list_models()) == 2
    with sqlite3.connect(path) as con:
        con.execute("DROP TABLE models")
    with pytest.raises(DatabaseError, match="no such table: models"):
        reg.list_models()
    assert cli.main(["models", "list", "--db", db]) == 2
    assert "no such table: models" in capsys.readouterr().err


def test_a_broken_registry_does_not_stop_a_model_loading_by_its_folder_or_alias(tmp_path, capsys):
    """Serving and jobs resolve model names through the registry; a file that is not a database gives a warning
    and the name as given (0.1 behaviour), not a failed server start."""
    from alignloop.registry.store import resolve_model_ref

    bad = tmp_path / "bad.sqlite"
    bad.write_text("this is not a database " * 20)
    assert resolve_model_ref("tiny", f"sqlite:///{bad}") == ("tiny", None)
    assert "cannot look 'tiny' up" in capsys.readouterr().err
