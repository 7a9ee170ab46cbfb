"""Load and crash test of the feedback studio (issue 6), loopback only, bounded in count and time.

    python benchmarks/feedback_load.py --db sqlite --labelers 50 --duration 20 --max-judgments 4000
    python benchmarks/feedback_load.py --db postgres --labelers 50 --duration 20 --max-judgments 4000

Phase 1 (load): N concurrent labelers (asyncio + httpx, each with its own API token) loop "POST next task,
POST a judgment with an idempotency key" against ``alignloop label serve`` in a subprocess, until the time
or count bound. Reports judgments/s and p50/p99 latency of the submissions.

Phase 2 (crash): the same load, and ``kill -9`` of the server while requests are in flight; then a restart,
a retry of every submission that got no answer (same idempotency key), and a check in the database that
every judgment that received a 2xx is there exactly once and nothing is stored twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


# --------------------------------------------------------------------------------------------------
# Database and server
# --------------------------------------------------------------------------------------------------


def setup_db(url: str, n_tasks: int, n_labelers: int, overlap: int = 3) -> list[str]:
    """A pairwise project with ``n_tasks`` tasks and ``n_labelers`` labelers; returns their API tokens."""
    from alignloop.feedback import access, auth
    from alignloop.feedback.io import import_records
    from alignloop.feedback.store import Database, create_labeler, create_project

    db = Database(url)
    records = [(i + 1, {"id": f"q{i}", "prompt": f"Question {i}: which answer is better?",
                        "completions": [f"Answer one to {i}.", f"Answer two to {i}."]}) for i in range(n_tasks)]
    with db.write() as s:
        p = create_project(s, "load", overlap=overlap)
        import_records(s, p, records)
        tokens = []
        for i in range(n_labelers):
            lab = create_labeler(s, f"labeler{i:03d}")  # no password: tokens only (argon2 is slow on purpose)
            access.add_member(s, p, lab, "labeler", "benchmark")  # labelers reach only their projects
            tokens.append(auth.new_token(s, lab))
    db.dispose()
    return tokens


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(url: str, port: int, log: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-m", "alignloop", "label", "serve", "--db", url, "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            stdout=out, stderr=out, env=env, cwd=str(ROOT))


def wait_healthy(port: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)  # polling for readiness, not timing anything
    raise RuntimeError("server did not become healthy")


# --------------------------------------------------------------------------------------------------
# Load
# --------------------------------------------------------------------------------------------------


@dataclass
class Results:
    acked: list[tuple[int, str, int]] = field(default_factory=list)  # (labeler index, key, judgment id)
    unanswered: list[tuple[int, int, str, dict]] = field(default_factory=list)  # (labeler, assignment, key, body)
    latencies: list[float] = field(default_factory=list)  # seconds per acknowledged submission
    next_latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    finished: int = 0  # labelers that ran out of tasks

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


async def labeler(i: int, token: str, client: httpx.AsyncClient, res: Results, stop: asyncio.Event,
                  max_total: int) -> None:
    auth = {"Authorization": f"Bearer {token}"}
    n = 0
    while not stop.is_set() and len(res.acked) < max_total:
        try:
            t0 = time.perf_counter()
            r = await client.post("/api/projects/load/next", headers=auth)
            res.next_latencies.append(time.perf_counter() - t0)
            task = r.json()
        except (httpx.HTTPError, ValueError):
            res.error("next: connection")
            return
        if task.get("done"):
            res.finished += 1
            return
        key = f"l{i}-{n}"
        n += 1
        body = {"choice": "AB"[(i + n) % 2], "strength": "better"}
        try:
            t0 = time.perf_counter()
            r = await client.post(f"/api/assignments/{task['assignment_id']}/judgment", json=body,
                                  headers={**auth, "Idempotency-Key": key})
            dt = time.perf_counter() - t0
        except httpx.HTTPError:
            res.unanswered.append((i, task["assignment_id"], key, body))
            res.error("submit: no answer")
            return
        if r.status_code in (200, 201):
            res.acked.append((i, key, r.json()["judgment_id"]))
            res.latencies.append(dt)
        else:
            res.error(f"submit: {r.status_code}")


async def run_load(port: int, tokens: list[str], duration: float, max_total: int,
                   kill: tuple[subprocess.Popen, int] | None = None) -> tuple[Results, float]:
    """Run every labeler until ``duration`` seconds or ``max_total`` judgments; with ``kill=(proc, n)``,
    SIGKILL the server once n judgments were acknowledged."""
    res, stop = Results(), asyncio.Event()
    # one client (one connection per labeler) made before the clock starts: building 50 clients, each with
    # its own TLS context, costs seconds of the load generator's CPU on a small machine
    client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120,
                               limits=httpx.Limits(max_connections=len(tokens) + 10))
    t0 = time.perf_counter()
    tasks = [asyncio.create_task(labeler(i, tok, client, res, stop, max_total)) for i, tok in enumerate(tokens)]

    async def watchdog() -> None:
        while not stop.is_set():
            if time.perf_counter() - t0 > duration:
                stop.set()
            # kill after n acknowledged judgments, or half-way through the time bound on a slow machine
            due = kill and (len(res.acked) >= kill[1] or time.perf_counter() - t0 > duration / 2)
            if due and kill[0].poll() is None:
                os.kill(kill[0].pid, signal.SIGKILL)  # mid-load: requests are in flight right now
                kill[0].wait()
            await asyncio.sleep(0.01)

    dog = asyncio.create_task(watchdog())
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    stop.set()
    await dog
    await client.aclose()
    return res, elapsed


def retry_unanswered(port: int, tokens: list[str], res: Results) -> dict[str, int]:
    """After a restart, resend every submission that got no answer, with its original key."""
    out = {"retried": 0, "was_stored": 0, "stored_now": 0, "other": 0}
    for i, aid, key, body in res.unanswered:
        r = httpx.post(f"http://127.0.0.1:{port}/api/assignments/{aid}/judgment", json=body,
                       headers={"Authorization": f"Bearer {tokens[i]}", "Idempotency-Key": key}, timeout=30)
        out["retried"] += 1
        if r.status_code == 200:
            out["was_stored"] += 1  # committed before the kill; the answer was lost, not the judgment
        elif r.status_code == 201:
            out["stored_now"] += 1
        else:
            out["other"] += 1
        if r.status_code in (200, 201):
            res.acked.append((i, key, r.json()["judgment_id"]))
    return out


def verify(url: str, res: Results) -> dict:
    """Every acknowledged judgment is stored exactly once; nothing is stored twice."""
    from sqlalchemy import func, select

    from alignloop.feedback.store import Assignment, Database, Judgment, Labeler

    db = Database(url)
    with db.read() as s:
        rows = s.execute(select(Judgment.id, Judgment.idempotency_key, Labeler.name)
                         .join(Labeler, Labeler.id == Judgment.labeler_id)).all()
        by_key = {}
        for r in rows:
            by_key.setdefault((r.name, r.idempotency_key), []).append(r.id)
        per_task_labeler = s.execute(select(func.count()).select_from(
            select(Judgment.task_id, Judgment.labeler_id).group_by(Judgment.task_id, Judgment.labeler_id)
            .having(func.count() > 1).subquery())).scalar()
        slot_doubles = s.execute(select(func.count()).select_from(
            select(Assignment.task_id, Assignment.slot).where(Assignment.slot.is_not(None))
            .group_by(Assignment.task_id, Assignment.slot).having(func.count() > 1).subquery())).scalar()
    db.dispose()
    missing = [k for i, k, jid in res.acked if by_key.get((f"labeler{i:03d}", k)) != [jid]]
    return {"acknowledged": len(res.acked), "stored": len(rows), "acknowledged_missing": len(missing),
            "keys_stored_twice": sum(len(v) > 1 for v in by_key.values()),
            "task_labeler_twice": per_task_labeler, "slot_taken_twice": slot_doubles}


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def fresh_url(kind: str, workdir: Path) -> tuple[str, callable]:
    """A new empty database of ``kind`` (sqlite, postgres or a URL) and a cleanup function."""
    if kind == "sqlite":
        path = workdir / f"load-{uuid.uuid4().hex[:8]}.db"
        return f"sqlite:///{path}", lambda: [p.unlink(missing_ok=True) for p in workdir.glob(path.name + "*")]
    if kind == "postgres":
        import psycopg

        schema = f"fbload_{uuid.uuid4().hex[:10]}"
        plain = PG.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain, autocommit=True) as c:
            c.execute(f'CREATE SCHEMA "{schema}"')

        def drop() -> None:
            with psycopg.connect(plain, autocommit=True) as c:
                c.execute(f'DROP SCHEMA "{schema}" CASCADE')

        return f"{PG}?options=-csearch_path%3D{schema}", drop
    return kind, lambda: None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="sqlite", help="sqlite, postgres (a fresh schema on 127.0.0.1) or a URL")
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--overlap", type=int, default=3)
    ap.add_argument("--duration", type=float, default=20, help="seconds per phase (upper bound)")
    ap.add_argument("--max-judgments", type=int, default=4000, help="judgments per phase (upper bound)")
    ap.add_argument("--kill-after", type=int, default=300, help="acknowledged judgments before kill -9")
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    report: dict = {"db": args.db, "labelers": args.labelers, "cpus": os.cpu_count(),
                    "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    for phase in ("load", "crash"):
        url, cleanup = fresh_url(args.db, Path(args.workdir))
        try:
            tokens = setup_db(url, args.tasks, args.labelers, args.overlap)
            port = free_port()
            proc = start_server(url, port)
            wait_healthy(port, proc)
            kill = (proc, args.kill_after) if phase == "crash" else None
            res, elapsed = asyncio.run(run_load(port, tokens, args.duration, args.max_judgments, kill))
            if phase == "load":
                report["load"] = {
                    "judgments": len(res.acked), "seconds": round(elapsed, 2),
                    "judgments_per_s": round(len(res.acked) / elapsed, 1),
                    "submit_p50_ms": round(1000 * pct(res.latencies, 0.5), 1),
                    "submit_p99_ms": round(1000 * pct(res.latencies, 0.99), 1),
                    "next_p50_ms": round(1000 * pct(res.next_latencies, 0.5), 1),
                    "next_p99_ms": round(1000 * pct(res.next_latencies, 0.99), 1),
                    "errors": res.errors}
                proc.terminate()
                proc.wait(30)
            else:
                acked_before = len(res.acked)
                if proc.poll() is None:  # the load ended before the kill was due: kill now, still under load
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                proc = start_server(url, port)  # restart on the same database
                wait_healthy(port, proc)
                retried = retry_unanswered(port, tokens, res)
                proc.terminate()
                proc.wait(30)
                report["crash"] = {"killed_after_s": round(elapsed, 2), "acknowledged_before_kill": acked_before,
                                   "in_flight_at_kill": len(res.unanswered),
                                   **retried, **verify(url, res)}
        finally:
            cleanup()
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    c = report["crash"]
    ok = c["acknowledged_missing"] == 0 and c["keys_stored_twice"] == 0 and c["task_labeler_twice"] == 0 \
        and c["slot_taken_twice"] == 0 and c["stored"] == c["acknowledged"]
    print("durability:", "OK" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
