"""``alignloop label serve --workers 2`` on PostgreSQL: a real server with two worker processes, labelers working at
once through it, every judgment stored once and no place given twice."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "feedback_load.py"
ROOT = BENCH.parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("feedback_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["feedback_load"] = mod
    spec.loader.exec_module(mod)
    return mod


def _worker_processes(pid: int) -> list[int]:
    """The processes uvicorn spawned under ``pid`` to serve (multiprocessing's ``spawn_main``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == pid and b"spawn_main" in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            pass
    return found


def _connections_per_process(port: int, pids: list[int], burst: int) -> dict[int, int]:
    """Open ``burst`` keep-alive connections at once, each answered once, and count the ones each server process
    holds. Each process listens on a socket of its own (SO_REUSEPORT), so the kernel spreads them; with uvicorn's
    one shared socket, the process that woke first accepted nearly every connection of a burst (15 of 16 in
    benchmarks/README.md)."""
    psutil = pytest.importorskip("psutil")

    def listening(pid: int) -> bool:
        return any(c.status == "LISTEN" and c.laddr.port == port for c in psutil.Process(pid).net_connections("tcp"))

    for _ in range(600):  # both processes listening (the first one answered /health already)
        if all(listening(pid) for pid in pids):
            break
        time.sleep(0.1)  # polling for readiness, not timing anything
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(burst)]
    try:
        for sock in socks:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: studio\r\n\r\n")
        for sock in socks:
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        return {pid: sum(1 for c in psutil.Process(pid).net_connections("tcp")
                         if c.status == "ESTABLISHED" and c.laddr.port == port) for pid in pids}
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.postgres
def test_two_server_processes_serve_labelers_at_once(db_url, tmp_path):
    if db_url.startswith("sqlite"):
        pytest.skip("several server processes are for PostgreSQL (refused on SQLite)")
    bench = _load_bench()
    tokens = bench.setup_db(db_url, n_tasks=24, n_labelers=4, overlap=2)
    port = bench.free_port()
    log = tmp_path / "server.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "alignloop", "label", "serve", "--db", db_url, "--port",
                                 str(port), "--workers", "2", "--log-level", "warning"], stdout=out, stderr=out,
                                cwd=str(ROOT))
    try:
        bench.wait_healthy(port, proc, timeout=120)
        assert len(_worker_processes(proc.pid)) == 2, log.read_text()

        async def labeler(client: httpx.AsyncClient, token: str, k: int) -> list[int]:
            auth, statuses = {"Authorization": f"Bearer {token}"}, []
            for i in range(6):
                r = await client.post("/api/projects/load/next", headers=auth)
                task = r.json()
                assert r.status_code == 200 and "assignment_id" in task, (r.status_code, task)
                r = await client.post(f"/api/assignments/{task['assignment_id']}/judgment", json={"choice": "A"},
                                      headers={**auth, "Idempotency-Key": f"{k}-{i}"})
                statuses.append(r.status_code)
            return statuses

        async def everyone() -> list[list[int]]:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
                return await asyncio.gather(*[labeler(client, t, k) for k, t in enumerate(tokens)])

        assert asyncio.run(everyone()) == [[201] * 6] * 4
        held = _connections_per_process(port, _worker_processes(proc.pid), burst=24)
        assert len(held) == 2 and min(held.values()) >= 3, held
    finally:
        proc.terminate()
        proc.wait(30)
    from alignloop.feedback.store import Database

    db = Database(db_url)
    try:
        with db.read() as s:
            assert s.scalar(text("SELECT count(*) FROM judgments")) == 24
            assert s.scalar(text("SELECT max(n) FROM (SELECT count(*) AS n FROM assignments WHERE slot IS NOT NULL "
                                 "GROUP BY task_id) x")) <= 2
            assert s.scalar(text("SELECT count(*) FROM tasks WHERE places_taken <> (SELECT count(*) FROM "
                                 "assignments a WHERE a.task_id = tasks.id AND a.slot IS NOT NULL)")) == 0
    finally:
        db.dispose()
