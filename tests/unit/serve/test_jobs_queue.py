"""The job queue in the database, without running training: validation, claiming (each job once, also with two
workers on PostgreSQL), cancel, and recovery of jobs left running by a dead server."""

import os
import socket
import subprocess
import sys
import threading
import uuid

import pytest
import yaml

from alignloop.registry.store import JobRow, Registry, RunRow, utcnow
from alignloop.serve.jobs import RESTART_REASON, JobError, JobManager

PG_BASE = os.environ.get("ALIGNLOOP_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_exec(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_BASE.replace("postgresql+psycopg://", "postgresql://"), autocommit=True,
                         connect_timeout=3) as conn:
        conn.execute(sql)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def reg(request, tmp_path):
    if request.param == "sqlite":
        r = Registry(f"sqlite:///{tmp_path / 'q.db'}")
        yield r
        r.dispose()
        return
    schema = f"jobtest_{uuid.uuid4().hex[:12]}"
    try:
        _pg_exec(f'CREATE SCHEMA "{schema}"')
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"PostgreSQL not reachable at {PG_BASE}: {exc}")
    r = Registry(f"{PG_BASE}?options=-csearch_path%3D{schema}")
    try:
        yield r
    finally:
        r.dispose()
        _pg_exec(f'DROP SCHEMA "{schema}" CASCADE')


ROWS = [{"prompt": "q", "completion": "a"}]


def test_submit_validates_and_queues(reg, tmp_path):
    jm = JobManager(reg, tmp_path / "jobs")
    with pytest.raises(JobError) as e:
        jm.submit("sft", {"model": "tiny", "max_steps": 0, "learning_rate": -1}, data_records=ROWS)
    assert e.value.problems == ["max_steps: must be > 0, got 0", "learning_rate: must be > 0, got -1.0"]
    with pytest.raises(JobError, match="'label export' is not a training stage"):
        jm.submit("label export", {})
    assert jm.list() == []  # nothing half-made is left behind

    job = jm.submit("sft", {"model": "tiny", "max_steps": 3}, model_name="v1", data_records=ROWS)
    folder = tmp_path / "jobs" / f"job-{job['id']}"
    cfg = yaml.safe_load((folder / "job.yaml").read_text())
    assert (cfg["data"], cfg["output"], cfg["db"], cfg["save_every"], cfg["max_steps"]) == (
        str(folder / "data.jsonl"), str(folder / "output"), reg.url, 50, 3)
    assert (job["status"], job["stage"], job["model_name"]) == ("queued", "sft", "v1")
    assert jm.submit("reward", {"model": "tiny"}, data_records=ROWS)["stage"] == "reward train"


def test_claim_order_cancel_and_two_workers(reg, tmp_path):
    jm = JobManager(reg, tmp_path / "jobs")
    ids = [jm.submit("sft", {"model": "tiny"}, data_records=ROWS)["id"] for _ in range(4)]
    assert jm.cancel(ids[0])["status"] == "cancelled"
    other = JobManager(reg, tmp_path / "jobs")
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(m: JobManager) -> None:
        while (j := m._claim()) is not None:
            with lock:
                claimed.append(j.id)

    threads = [threading.Thread(target=worker, args=(m,)) for m in (jm, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids[1:]  # each queued job exactly once; the cancelled one never
    assert all(jm.get(i)["status"] == "running" and jm.get(i)["attempts"] == 1 for i in ids[1:])
    assert jm.cancel(ids[1])["cancel_requested"] is True


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("resume", [False, True])
def test_recover_jobs_of_a_dead_server(reg, tmp_path, resume):
    jm = JobManager(reg, tmp_path / "jobs", resume_interrupted=resume)
    job = jm.submit("sft", {"model": "tiny"}, data_records=ROWS)
    live = jm.submit("sft", {"model": "tiny"}, data_records=ROWS)
    host = socket.gethostname()
    with reg.write() as s:
        s.get(JobRow, job["id"]).status = "running"
        s.get(JobRow, job["id"]).worker = f"{host}:{_dead_pid()}"
        s.get(JobRow, live["id"]).status = "running"
        s.get(JobRow, live["id"]).worker = f"{host}:{os.getppid()}"  # a live process: another server's job
        s.add(RunRow(id="run-x", stage="sft", status="running", config={}, output="", data_hashes={},
                     judgment_ids=[], base_model="tiny", metrics={}, job_id=job["id"], started_at=utcnow()))
    assert JobManager(reg, tmp_path / "jobs", resume_interrupted=resume).recover() == [job["id"]]
    after = jm.get(job["id"])
    if resume:
        assert after["status"] == "queued" and after["error"] == f"{RESTART_REASON}; re-queued with resume"
        assert yaml.safe_load((tmp_path / "jobs" / f"job-{job['id']}" / "job.yaml").read_text())["resume"] is True
    else:
        assert after["status"] == "failed" and after["error"].startswith(RESTART_REASON)
    assert jm.get(live["id"])["status"] == "running"
    with reg.read() as s:
        run = s.get(RunRow, "run-x")
        assert (run.status, run.error) == ("failed", RESTART_REASON)
