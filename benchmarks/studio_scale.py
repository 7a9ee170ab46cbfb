"""The feedback studio at a team's scale (issue 20): "next task" and "submit" over loopback, against the studio's
app as ``alignloop label serve`` runs it (uvicorn, plus a Server-Timing header), in projects of 1,000 to 1,000,000
tasks, on SQLite and PostgreSQL.

    nice -n 15 python benchmarks/studio_scale.py --backend sqlite --sizes 1000 100000 --sqlite-dir /tmp/scale
    nice -n 15 python benchmarks/studio_scale.py --backend postgres --sizes 1000 100000 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
    nice -n 15 python benchmarks/studio_scale.py --backend postgres --sizes 100000 --only load --rate 50 20 10
    python benchmarks/studio_scale.py --table sqlite.jsonl postgres.jsonl     # the README's tables from --out files

Each project (pairwise, overlap 3, gold rate 0.1: every 10th task is gold) is built by bulk SQL inserts, not through
the API, so that a million tasks take minutes. Half of the regular tasks are complete (three done assignments and
their judgments each). Veterans have 10,000 judgments each: half on complete tasks, and half as the only labeler of
a started task right after the complete half, so that the tasks others started are, at the head of the queue, the
veteran's own. What does not fit in a small project goes into a second project, so their history is 10,000
judgments in the database either way. The counters are then filled by ``assign.recount``, as the migration fills
them in an existing database.

Points (``--only single``): one labeler at a time, ``--requests`` rounds of "POST next task, POST a judgment" in a
row, for each task order (import, uncertainty) and each labeler (a new one; a veteran), after ``--warmup`` rounds:
client-side latencies, the server's own time (Server-Timing) and the server process's CPU time per round. In a
project too small for one labeler to make every round (1,000 tasks, half complete, leave one labeler about 550),
each point gets its own database and moves on to the next labeler of its kind. ``--only load``: an open-loop load
of ``--rate`` judgments a second spread over ``--labelers`` labelers (a round starts on schedule whether or not
earlier ones finished), then the closed-loop maximum: ``--concurrency`` labelers each doing rounds back to back.
``--workers N`` serves with N processes (``alignloop label serve --workers``; PostgreSQL), and the server's CPU
is then that of all of them. Every result is one JSON line on stdout (and appended to ``--out``). PostgreSQL runs
in a schema made for the run and dropped after it (``--keep`` keeps it, and the SQLite files).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import itertools
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from feedback_load import free_port, wait_healthy  # noqa: E402

OVERLAP = 3
VETERAN_JUDGMENTS = 10_000
NOW = dt.datetime(2026, 12, 1, 8, 0, 0)
RUN, KEYS = uuid.uuid4().hex[:8], itertools.count()  # idempotency keys never repeat, across runs on one database too


# --------------------------------------------------------------------------------------------------
# Building a project by bulk SQL
# --------------------------------------------------------------------------------------------------


def _numbers(n: int, pg: bool) -> str:
    """A FROM clause of the integers 0..n-1 as column ``i``."""
    if pg:
        return f"generate_series(0, {n - 1}) AS g(i)"
    return f"(WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i < {n - 1}) SELECT i FROM g) AS g"


def _insert_tasks(c, pg: bool, project_id: int, n: int, base: int) -> None:
    """``n`` prompts with 2 completions each and their tasks, ids from ``base`` on (every 10th task gold)."""
    from sqlalchemy import text

    js = "::json" if pg else ""
    numbers = _numbers(n, pg)
    c.execute(text(f"INSERT INTO prompts (id, project_id, external_id, prompt, extra) "
                   f"SELECT {base} + i, {project_id}, 'q' || i, "
                   f"('\"Question ' || i || ': which answer is better?\"'){js}, '{{}}' FROM {numbers}"))
    c.execute(text(f"INSERT INTO completions (id, prompt_id, position, text, sampling) "
                   f"SELECT 2 * ({base} + i) + k, {base} + i, k, "
                   f"('\"Answer ' || k || ' to question ' || i || '.\"'){js}, '{{}}' "
                   f"FROM {numbers} CROSS JOIN (SELECT 0 AS k UNION ALL SELECT 1) AS two"))
    c.execute(text(f"INSERT INTO tasks (id, project_id, prompt_id, task_type, completion_ids, seq, uncertainty, "
                   f"is_gold, created_at, places_taken) SELECT {base} + i, {project_id}, {base} + i, 'pairwise', "
                   f"('[' || (2 * ({base} + i)) || ', ' || (2 * ({base} + i) + 1) || ']'){js}, i + 1, "
                   f"(((i % 1000) * 7919) % 1000) / 1000.0, (i % 10 = 9), :now, 0 FROM {numbers}"), {"now": NOW})


def _insert_work(c, project_id: int, labeler_id: int, slot: int, seq_from: int, seq_to: int) -> None:
    """``labeler_id`` did every regular task with seq in [seq_from, seq_to) in place ``slot``, and judged it."""
    from sqlalchemy import text

    c.execute(text("INSERT INTO assignments (task_id, labeler_id, slot, display_order, status, created_at, "
                   "completed_at) SELECT id, :lab, :slot, completion_ids, 'done', :now, :now FROM tasks "
                   "WHERE project_id = :p AND is_gold = :no AND seq >= :a AND seq < :b"),
              {"lab": labeler_id, "slot": slot, "now": NOW, "p": project_id, "no": False, "a": seq_from, "b": seq_to})


def _judge_all(c, project_id: int) -> None:
    from sqlalchemy import text

    c.execute(text("INSERT INTO judgments (task_id, labeler_id, assignment_id, choice, display_order, skipped, "
                   "guideline_version, created_at) SELECT a.task_id, a.labeler_id, a.id, 'A', a.display_order, "
                   ":no, 1, :now FROM assignments a JOIN tasks t ON t.id = a.task_id WHERE t.project_id = :p"),
              {"no": False, "now": NOW, "p": project_id})


def build(url: str, n: int, per_kind: int) -> dict:
    """A fresh database with the project ``scale`` of ``n`` tasks (see the module's docstring) and ``per_kind`` new
    labelers (``new0``...) and veterans (``vet0``...); returns the API tokens of its labelers and its shape."""
    from sqlalchemy import text

    from alignloop.feedback import access, assign, auth
    from alignloop.feedback.store import Database, create_labeler, create_project

    t0 = time.perf_counter()
    db = Database(url)
    pg = not db.is_sqlite
    regular = n - n // 10
    vets = [f"vet{i}" for i in range(per_kind)]
    vet_here = min(VETERAN_JUDGMENTS, regular // (4 * per_kind))  # each: half on complete tasks, half started
    with db.write() as s:
        p = create_project(s, "scale", overlap=OVERLAP, gold_rate=0.1, order="import")
        ids, tokens = {}, {}
        for name in ("bg0", "bg1", "bg2", *vets, *[f"new{i}" for i in range(per_kind)],
                     *[f"load{i:03d}" for i in range(64)]):
            lab = create_labeler(s, name)  # tokens only: argon2 for passwords is slow on purpose
            lab.gold_seed = f"seed-{name}"
            ids[name] = lab.id
            if not name.startswith("bg"):
                access.add_member(s, p, lab, "labeler", "benchmark")
                tokens[name] = auth.new_token(s, lab, name="benchmark")
        pid = p.id
        c = s.connection()
        _insert_tasks(c, pg, pid, n, base=1)
        half = n // 2  # seq 1..half: complete
        full_each = vet_here // 2 * 10 // 9  # seqs that hold about vet_here/2 regular tasks
        part_each = (vet_here - vet_here // 2) * 10 // 9
        # complete tasks: each veteran takes place 0 in a block of the first ones, background labeler 0 in the rest
        for j, v in enumerate(vets):
            _insert_work(c, pid, ids[v], 0, 1 + j * full_each, 1 + (j + 1) * full_each)
        _insert_work(c, pid, ids["bg0"], 0, 1 + len(vets) * full_each, half + 1)
        _insert_work(c, pid, ids["bg1"], 1, 1, half + 1)
        _insert_work(c, pid, ids["bg2"], 2, 1, half + 1)
        # started tasks right after the complete half: each veteran alone in a block
        for j, v in enumerate(vets):
            _insert_work(c, pid, ids[v], 0, half + 1 + j * part_each, half + 1 + (j + 1) * part_each)
        _judge_all(c, pid)
        side = VETERAN_JUDGMENTS - vet_here
        if side > 0:  # the rest of the veterans' history, in another project
            q = create_project(s, "history", overlap=len(vets))
            seqs = side * 10 // 9 + 10
            _insert_tasks(c, pg, q.id, seqs, base=n + 1)
            for j, v in enumerate(vets):
                _insert_work(c, q.id, ids[v], j, 1, seqs + 1)
            _judge_all(c, q.id)
            assign.recount(s, q)
        if pg:
            for table in ("prompts", "completions", "tasks"):
                c.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                               f"(SELECT max(id) FROM {table}))"))
        assign.recount(s, p)
    with db.read() as s:
        count = lambda sql, **kw: s.scalar(text(sql), kw)  # noqa: E731
        shape = {"tasks": count("SELECT count(*) FROM tasks WHERE project_id = :p", p=pid),
                 "gold_tasks": count("SELECT count(*) FROM tasks WHERE project_id = :p AND is_gold = :y", p=pid,
                                     y=True),
                 "complete": count("SELECT count(*) FROM tasks WHERE project_id = :p AND places_taken >= 3", p=pid),
                 "started": count("SELECT count(*) FROM tasks WHERE project_id = :p AND places_taken BETWEEN 1 AND 2",
                                  p=pid),
                 "veteran_judgments": count("SELECT count(*) FROM judgments WHERE labeler_id = :v", v=ids["vet0"]),
                 "assignments": count("SELECT count(*) FROM assignments"),
                 "judgments": count("SELECT count(*) FROM judgments")}
    if pg:
        with db.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
    db.dispose()
    shape["build_seconds"] = round(time.perf_counter() - t0, 1)
    return {"tokens": tokens, "shape": shape}


def set_order(url: str, order: str) -> None:
    from alignloop.feedback.store import Database, get_project, update_project

    db = Database(url)
    with db.write() as s:
        update_project(s, get_project(s, "scale"), order=order)
    db.dispose()


# --------------------------------------------------------------------------------------------------
# The server: the studio's app as `alignloop label serve` runs it, plus a Server-Timing header
# --------------------------------------------------------------------------------------------------


class ServerTiming:
    """ASGI wrapper: ``Server-Timing: app;dur=MS`` on every response, the time from the request's arrival to its
    response headers, so the client can tell the app's time from the time its request waited on a shared CPU."""

    def __init__(self, app):  # noqa: ANN001
        self.app = app

    async def __call__(self, scope, receive, send):  # noqa: ANN001
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()

        async def timed_send(message):  # noqa: ANN001
            if message["type"] == "http.response.start":
                ms = f"app;dur={(time.perf_counter() - t0) * 1000:.2f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", ms)]}
            await send(message)

        await self.app(scope, receive, timed_send)


def timed_app():  # noqa: ANN201
    """The app of each server process, as ``alignloop label serve`` builds it (``app_from_environment``, which
    ``--workers`` uses), with the Server-Timing header."""
    from alignloop.feedback.api import app_from_environment

    return ServerTiming(app_from_environment())


def serve(url: str, port: int, workers: int = 1) -> None:
    """The server process: ``workers`` uvicorn processes (``label serve --workers``) on ``url``, each with the
    handler threads of ``label serve --threads`` (in the environment: ``--threads`` of this script)."""
    import uvicorn

    from alignloop.feedback import processes
    from alignloop.feedback.api import DB_ENV

    os.environ[DB_ENV] = url
    if workers > 1 and processes.supported():  # as ``label serve --workers`` serves: a socket per process
        processes.serve("studio_scale:timed_app", workers, host="127.0.0.1", port=port, log_level="warning")
        return
    uvicorn.run("studio_scale:timed_app", factory=True, workers=workers, host="127.0.0.1", port=port,
                log_level="warning")


def start_server(url: str, port: int, workers: int = 1) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).resolve().parent),
                                                        os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, __file__, "--serve", url, str(port), str(workers)], env=env,
                            cwd=str(ROOT))


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


class Reply:
    """What the load generator needs of an HTTP response: status, headers (lower-case names), body."""

    def __init__(self, status_code: int, headers: dict[str, str], body: bytes):
        self.status_code, self.headers, self.content = status_code, headers, body

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self):  # noqa: ANN201
        return json.loads(self.content)


class Connection:
    """One labeler's keep-alive HTTP/1.1 connection, written by hand on asyncio streams: the load generator shares
    the 2 cores with the server and PostgreSQL, and httpx's pool cost it 12 to 17 ms of CPU a round with 50
    labelers (its connection pool scans every connection per request). A request is one write, with TCP_NODELAY;
    responses are read by Content-Length (the studio's JSON replies always carry it)."""

    def __init__(self, port: int):
        self.port, self.reader, self.writer = port, None, None

    async def post(self, path: str, headers: dict[str, str], body: dict | None = None) -> Reply:
        data = json.dumps(body).encode() if body is not None else b""
        if body is not None:
            headers = {**headers, "Content-Type": "application/json"}
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Length: {len(data)}\r\n"
                   f"{head}\r\n").encode() + data
        for attempt in (0, 1):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(request)
                return await self._reply()
            except (ConnectionError, asyncio.IncompleteReadError):
                self.close()  # the server closed an idle keep-alive connection: once more on a new one
                if attempt:
                    raise
        raise AssertionError("unreachable")

    async def _reply(self) -> Reply:
        status = int((await self.reader.readuntil(b"\r\n")).split(b" ", 2)[1])
        headers = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            self.close()
        return Reply(status, headers, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def server_ms(r: Reply) -> float:
    return float(r.headers.get("server-timing", "app;dur=nan").split("dur=")[1]) / 1000


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return round(1000 * xs[min(len(xs) - 1, int(q * len(xs)))], 1) if xs else float("nan")


def summary(out: dict) -> dict:
    """p50 / p99 / max of the client's latencies, and p50 / p99 of the server's own time (Server-Timing)."""
    res = {}
    for what in ("next", "submit"):
        xs, app = out[what], out[f"{what}_server"]
        res.update({f"{what}_p50_ms": pct(xs, 0.5), f"{what}_p90_ms": pct(xs, 0.9), f"{what}_p99_ms": pct(xs, 0.99),
                    f"{what}_max_ms": pct(xs, 1.0),
                    f"{what}_server_p50_ms": pct(app, 0.5), f"{what}_server_p99_ms": pct(app, 0.99)})
    res["rounds"] = len(out["submit"])
    return res


def _out() -> dict:
    return {"next": [], "submit": [], "next_server": [], "submit_server": [], "errors": []}


class NothingLeft(RuntimeError):
    pass


async def one_round(conn: Connection, token: str, k: int, out: dict | None, strict: bool = True) -> None:
    """One labeler's round: POST next task, POST a judgment on it. ``strict``: a failure raises (one labeler at a
    time), else it is counted in ``out["errors"]`` (under load)."""
    auth = {"Authorization": f"Bearer {token}"}
    t0 = time.perf_counter()
    r = await conn.post("/api/projects/scale/next", auth)
    t1 = time.perf_counter()
    task = r.json()
    problem = None
    if r.status_code == 200 and task.get("done"):
        if strict:
            raise NothingLeft(f"nothing left for this labeler: {r.text[:200]}")
        problem = "next: nothing left"
    elif r.status_code != 200:
        problem = f"next {r.status_code}: {r.text[:80]}"
    if problem is None:
        r2 = await conn.post(f"/api/assignments/{task['assignment_id']}/judgment",
                             {**auth, "Idempotency-Key": f"{RUN}-{next(KEYS)}"}, {"choice": "AB"[k % 2]})
        t2 = time.perf_counter()
        if r2.status_code != 201:
            problem = f"submit {r2.status_code}: {r2.text[:80]}"
    if problem is not None:
        if strict:
            raise RuntimeError(problem)
        if out is not None:
            out["errors"].append(problem)
        return
    if out is not None:
        out["next"].append(t1 - t0)
        out["submit"].append(t2 - t1)
        out["next_server"].append(server_ms(r))
        out["submit_server"].append(server_ms(r2))


def single(port: int, tokens: list[str], rounds: int, warmup: int) -> dict:
    """``rounds`` rounds by one labeler at a time: the first of ``tokens``, the next when one has none left (a
    project of 1,000 tasks, half of them complete, has about 550 tasks for one labeler)."""
    out, who = _out(), list(tokens)

    async def run() -> None:
        conn, k = Connection(port), 0
        while k < warmup + rounds:
            try:
                await one_round(conn, who[0], k, out if k >= warmup else None)
            except NothingLeft:
                who.pop(0)
                if not who:
                    raise
                continue
            k += 1
        conn.close()

    asyncio.run(run())
    res = summary(out)
    res["labelers_used"] = len(tokens) - len(who) + 1
    return res


async def open_loop(port: int, tokens: list[str], rate: float, rounds: int) -> dict:
    """A round starts every 1/rate seconds on schedule, by the next labeler who is not busy (a labeler works on
    one task at a time, on its own keep-alive connection); latencies are measured from each request's start."""
    out = {**_out(), "late_starts": 0}
    busy: set[int] = set()
    conns = [Connection(port) for _ in tokens]
    t0 = time.perf_counter()
    running = []
    for k in range(rounds):
        due = t0 + k / rate
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        elif wait < -0.05:
            out["late_starts"] += 1  # the generator itself fell behind (it shares the CPU)
        free = [i for i in range(len(tokens)) if i not in busy]
        if not free:
            out["errors"].append("every labeler busy")
            continue
        i = free[k % len(free)]
        busy.add(i)

        async def go(i: int = i, k: int = k) -> None:
            try:
                await one_round(conns[i], tokens[i], k, out, strict=False)
            finally:
                busy.discard(i)

        running.append(asyncio.create_task(go()))
    await asyncio.gather(*running)
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    res = summary(out)
    res.update(rate_asked=rate, judgments_per_s=round(len(out["submit"]) / elapsed, 1), errors=len(out["errors"]),
               error_kinds=dict(collections.Counter(out["errors"])), late_starts=out["late_starts"])
    return res


async def closed_loop(port: int, tokens: list[str], rounds: int) -> dict:
    """``len(tokens)`` labelers each doing rounds back to back until ``rounds`` judgments in all."""
    out = _out()
    counter = iter(range(10 ** 9))

    async def labeler(token: str) -> None:
        conn = Connection(port)
        while len(out["submit"]) + len(out["errors"]) < rounds:
            await one_round(conn, token, next(counter), out, strict=False)
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[labeler(t) for t in tokens])
    elapsed = time.perf_counter() - t0
    res = summary(out)
    res.update(labelers=len(tokens), judgments_per_s=round(len(out["submit"]) / elapsed, 1), errors=len(out["errors"]),
               error_kinds=dict(collections.Counter(out["errors"])))
    return res


# --------------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------------


def _pg_exec(base: str, sql: str) -> None:
    import psycopg

    with psycopg.connect(base.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        conn.execute(sql)


def database_for(args: argparse.Namespace, n: int) -> tuple[str, callable]:
    """(URL, cleanup) of an empty database for a project of ``n`` tasks."""
    if args.backend == "sqlite":
        folder = Path(args.sqlite_dir)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"scale-{n}.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        return f"sqlite:///{path}", (lambda: None) if args.keep else (
            lambda: [Path(f"{path}{x}").unlink(missing_ok=True) for x in ("", "-wal", "-shm")])
    schema = f"studio_scale_{n}_{uuid.uuid4().hex[:6]}"
    _pg_exec(args.postgres, f'CREATE SCHEMA "{schema}"')
    url = f"{args.postgres}?options=-csearch_path%3D{schema}"
    return url, (lambda: None) if args.keep else (lambda: _pg_exec(args.postgres, f'DROP SCHEMA "{schema}" CASCADE'))


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "load_average": [round(x, 2) for x in os.getloadavg()], "date": dt.date.today().isoformat()}


def emit(args: argparse.Namespace, row: dict) -> None:
    line = json.dumps(row)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")


def _cpu_split(r: dict) -> str:
    keys = ("server_cpu_ms_per_round", "postgres_cpu_ms_per_round", "client_cpu_ms_per_round")
    return " / ".join(f"{r[k]:.1f}" for k in keys) if all(k in r for k in keys) else "not measured"


def _share(x: float | None) -> str:
    return f"{100 * x:.0f} %" if x is not None else "not measured"


def table(paths: list[str]) -> str:
    """The Markdown tables of benchmarks/README.md from the JSON lines of runs."""
    rows = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    single = [r for r in rows if "order" in r]
    out = ["| Back-end | Tasks | Order | Labeler | Next p50 / p99 (ms) | Submit p50 / p99 (ms) | "
           "App's time, next p50 / p99 (ms) | Studio CPU per round (ms) | Load average |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in single:
        out.append(f"| {'SQLite' if r['backend'] == 'sqlite' else 'PostgreSQL'} | {r['tasks']:,} | {r['order']} | "
                   f"{r['labeler']} | {r['next_p50_ms']} / **{r['next_p99_ms']}** | {r['submit_p50_ms']} / "
                   f"{r['submit_p99_ms']} | {r['next_server_p50_ms']} / {r['next_server_p99_ms']} | "
                   f"{r['server_cpu_ms_per_round']:.1f} | {r['load_average']:.1f} |")
    loads = [r for r in rows if "mode" in r]
    if loads:
        out += ["", "| Back-end | Tasks | Load | Judgments/s | Next p50 / p99 (ms) | Submit p50 / p99 (ms) | "
                "Errors | CPU per round: studio / PostgreSQL / client (ms) | Machine busy | Load average |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for r in loads:
            what = (f"open loop, {r['rate_asked']:g}/s asked, {r['labelers']} labelers" if r["mode"] == "open loop"
                    else f"closed loop, {r['labelers']} labelers")
            if r.get("workers", 1) > 1:
                what += f", {r['workers']} server processes"
            out.append(f"| {'SQLite' if r['backend'] == 'sqlite' else 'PostgreSQL'} | {r['tasks']:,} | {what} | "
                       f"**{r['judgments_per_s']}** | {r['next_p50_ms']} / {r['next_p99_ms']} | "
                       f"{r['submit_p50_ms']} / {r['submit_p99_ms']} | {r['errors']} | "
                       f"{_cpu_split(r)} | {_share(r.get('machine_busy'))} | {r['load_average']:.1f} |")
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--serve":  # the server process this script starts
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) > 2 and sys.argv[1] == "--table":  # the README's tables from the --out files of runs
        print(table(sys.argv[2:]))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000])
    ap.add_argument("--sqlite-dir", default="/tmp/studio-scale", help="folder of the SQLite files (made if missing)")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
                    help="server and database; the run makes its own schema there and drops it after")
    ap.add_argument("--only", choices=["single", "load", "both"], default="single")
    ap.add_argument("--requests", type=int, default=1000, help="rounds (next task + submit) per single point")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--orders", nargs="+", default=["import", "uncertainty"])
    ap.add_argument("--rate", type=float, nargs="+", default=[50.0], help="open-loop judgments per second (each)")
    ap.add_argument("--load-rounds", type=int, default=1500)
    ap.add_argument("--labelers", type=int, default=50, help="labelers sharing the open-loop load")
    ap.add_argument("--load-warmup", type=int, default=300,
                    help="rounds, not measured, by 14 other labelers at once before the load points: the server "
                    "processes' first requests (imports, route tables, compiled statements, new database "
                    "connections) cost 10 to 30 times a warm one's; 0 measures the load on cold processes")
    ap.add_argument("--concurrency", type=int, nargs="*", default=[4, 16], help="closed-loop labelers per run")
    ap.add_argument("--workers", type=int, default=1,
                    help="server processes (``label serve --workers``; PostgreSQL): the CPU of all of them is counted")
    ap.add_argument("--threads", type=int, help="handler threads per server process (``label serve --threads``; "
                    "default: the studio's)")
    ap.add_argument("--out", help="also append the JSON lines to this file")
    ap.add_argument("--keep", action="store_true", help="keep the databases (SQLite files, PostgreSQL schemas)")
    args = ap.parse_args()
    if args.threads:
        from alignloop.feedback.api import THREADS_ENV

        os.environ[THREADS_ENV] = str(args.threads)  # (the server process inherits it)
    emit(args, {"machine": machine(), "argv": sys.argv[1:], "uvicorn": uvicorn_stack()})
    for n in args.sizes:
        points = [(order, who) for order in args.orders for who in ("new", "vet")]
        if args.only in ("single", "both"):
            if n >= 20 * args.requests:  # one database for every point
                with running(args, n, per_kind=len(args.orders)) as (url, port, tokens):
                    for order, who in points:
                        set_order(url, order)
                        k = args.orders.index(order)  # a labeler of each kind per order
                        measure_single(args, n, port, [tokens[f"{who}{k}"]], order, who)
            else:  # a labeler could run out of tasks, and the points would eat each other's: a database each
                for order, who in points:
                    with running(args, n, per_kind=4) as (url, port, tokens):
                        set_order(url, order)
                        measure_single(args, n, port, [tokens[f"{who}{i}"] for i in range(4)], order, who)
        if args.only in ("load", "both"):
            with running(args, n, per_kind=1) as (url, port, tokens):
                load = [tokens[f"load{i:03d}"] for i in range(args.labelers)]
                if args.load_warmup:
                    warm = asyncio.run(closed_loop(port, [tokens[f"load{i:03d}"] for i in range(50, 64)],
                                                   args.load_warmup))
                    print(f"warm-up: {args.load_warmup} rounds by 14 labelers, next p99 {warm.get('next_p99_ms')} "
                          f"ms (not a point)", file=sys.stderr)
                for rate in args.rate:
                    res = measured(asyncio.run, open_loop(port, load, rate, args.load_rounds))
                    emit(args, {"backend": args.backend, "tasks": n, "mode": "open loop", "labelers": len(load),
                                "workers": args.workers, **res, "load_average": os.getloadavg()[0]})
                spare = [tokens[f"load{i:03d}"] for i in range(64)]
                for c in args.concurrency:
                    res = measured(asyncio.run, closed_loop(port, spare[:c], args.load_rounds))
                    emit(args, {"backend": args.backend, "tasks": n, "mode": "closed loop", "workers": args.workers,
                                **res, "load_average": os.getloadavg()[0]})


def measure_single(args: argparse.Namespace, n: int, port: int, tokens: list[str], order: str, who: str) -> None:
    # (per round made, the warm-up included: the CPU counters run through it)
    res = measured(single, port, tokens, args.requests, args.warmup, rounds=args.requests + args.warmup)
    emit(args, {"backend": args.backend, "tasks": n, "order": order, "workers": args.workers,
                "labeler": "veteran (10,000 judgments)" if who == "vet" else "new", **res,
                "load_average": os.getloadavg()[0]})


def measured(run: Callable[..., dict], *args: Any, rounds: int | None = None) -> dict:
    """``run(*args)``'s results with the CPU (``cpu_per_round``) and PostgreSQL's activity (``pg_per_round``) per
    round: ``rounds``, else the rounds ``run`` completed. The CPU is read inside ``pg_activity``'s pauses, so that
    the machine's busy share is the run's own."""
    pg0 = pg_activity()
    cpu0 = cpu_seconds()
    res = run(*args)
    n = res["rounds"] if rounds is None else rounds
    cpu = cpu_per_round(cpu0, cpu_seconds(), n)
    return {**res, **pg_per_round(pg0, pg_activity(), n), **cpu}


SERVER_PID: list[int] = []


def cpu_per_round(cpu0: dict, cpu1: dict, rounds: int) -> dict:
    """CPU ms per completed round of the studio's processes, PostgreSQL's and this load generator's own (the client
    shares the cores with them: where the 2 cores went under load)."""
    rounds = max(rounds, 1)
    ticks = [b - a for a, b in zip(cpu0["machine"], cpu1["machine"])]
    return {**{f"{k}_cpu_ms_per_round": round(1000 * (cpu1[k] - cpu0[k]) / rounds, 2)
               for k in ("server", "postgres", "client")},
            "machine_busy": round(1 - (ticks[3] + ticks[4]) / max(sum(ticks), 1), 3),  # (not idle, not waiting)
            "steal": round(ticks[7] / max(sum(ticks), 1), 3)}  # (a VM's time its host gave to others)


PG_URL: list[str] = []


def pg_activity() -> dict:
    """PostgreSQL's cumulative counters for the benchmark's database (``pg_stat_database``): transactions, rows read
    and written, buffer hits, and the CPU-free view of what a round asks of the database."""
    if not PG_URL:
        return {}
    import psycopg

    base = PG_URL[-1].split("?", 1)[0].replace("postgresql+psycopg://", "postgresql://")
    time.sleep(2)  # server processes flush their counts at most once a second, idle ones soon after
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute("SELECT xact_commit, xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated,"
                           " tup_deleted, blks_hit, deadlocks FROM pg_stat_database WHERE datname = current_database()"
                           ).fetchone()
    names = ("commits", "rollbacks", "rows_returned", "rows_fetched", "rows_inserted", "rows_updated", "rows_deleted",
             "blocks_hit", "deadlocks")
    return dict(zip(names, row))


def pg_per_round(a: dict, b: dict, rounds: int) -> dict:
    """What PostgreSQL did per completed round between two ``pg_activity`` snapshots (the statistics collector
    reports with up to a second's delay: long runs only)."""
    return {f"pg_{k}_per_round": round((b[k] - a[k]) / max(rounds, 1), 2) for k in a} if a and b else {}


def cpu_seconds() -> dict:
    """CPU time so far (user + system) of the studio's server process and of all PostgreSQL processes: the work
    done, apart from the time a request waited for a CPU that others' jobs held."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: int) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            return 0.0

    pg = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().startswith("postgres"):
                    pg += of(int(entry.name))
            except OSError:
                pass
    me = os.times()
    machine = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return {"server": sum(of(pid) for pid in _descendants(SERVER_PID[-1])) if SERVER_PID else 0.0, "postgres": pg,
            "client": me.user + me.system, "machine": machine}


def _descendants(root: int) -> list[int]:
    """``root`` and every process under it (uvicorn's worker processes)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children[int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])].append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def uvicorn_stack() -> dict:
    """Which HTTP parser and event loop uvicorn picks here ("auto": httptools and uvloop when installed)."""
    import importlib.util

    return {"httptools": importlib.util.find_spec("httptools") is not None,
            "uvloop": importlib.util.find_spec("uvloop") is not None}


@contextlib.contextmanager
def running(args: argparse.Namespace, n: int, per_kind: int):
    """A database with the project built, and the server on it: (url, port, tokens)."""
    url, cleanup = database_for(args, n)
    server = None
    try:
        if args.backend == "postgres":
            PG_URL.append(url)
        built = build(url, n, per_kind)
        emit(args, {"backend": args.backend, "tasks": n, "shape": built["shape"]})
        port = free_port()
        server = start_server(url, port, args.workers)
        SERVER_PID.append(server.pid)
        wait_healthy(port, server, timeout=300)
        yield url, port, built["tokens"]
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        cleanup()

if __name__ == "__main__":
    main()
