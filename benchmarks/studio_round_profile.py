"""Where one labeling round goes (issue 20): "POST next task" then "POST a judgment", run in this process against
the studio's app (the ASGI app ``alignloop label serve`` serves, called directly: no sockets, no HTTP client), on a
project built like ``studio_scale.py`` builds it. Prints per round: this process's CPU time, the SQL statements
the app sent and the transactions it opened, by route; with ``--profile``, the functions where the CPU went
(cProfile timed by this process's CPU clock; the handlers run inline instead of in the thread pool, so that the
profiler sees them).

    PYTHONPATH=. nice -n 10 python benchmarks/studio_round_profile.py --backend postgres --tasks 100000
    PYTHONPATH=. nice -n 10 python benchmarks/studio_round_profile.py --backend sqlite --tasks 100000 --profile
    PYTHONPATH=. python benchmarks/studio_round_profile.py --backend postgres --tasks 100000 --show-sql

Statements are counted with SQLAlchemy's ``before_cursor_execute`` event (SAVEPOINTs included); BEGIN, COMMIT and
ROLLBACK with its transaction events (not on autocommit connections, which send neither); ``checkout`` is how
many times a connection was taken from the pool (with ``pool_pre_ping`` each cost a round trip more). On PostgreSQL
each statement, BEGIN and COMMIT is a round trip on the connection (psycopg sends BEGIN on its own before the
first statement of a transaction).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import studio_scale  # noqa: E402


class Counter:
    """Statements, transactions and pool check-outs on an engine, by the route being served."""

    def __init__(self, engine):  # noqa: ANN001
        from sqlalchemy import event

        self.route = "other"
        self.counts: dict = collections.defaultdict(collections.Counter)
        self.sql: dict = collections.defaultdict(list)
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine, "begin", self._begin)
        event.listen(engine, "commit", lambda conn: None if getattr(conn.connection.dbapi_connection, "autocommit",
                                                                    False) else self._count("commit"))
        event.listen(engine, "rollback", lambda conn: self._count("rollback"))
        event.listen(engine.pool, "checkout", lambda *a: self._count("checkout"))

    def _begin(self, conn) -> None:  # noqa: ANN001
        # an autocommit connection (``Database.lookup`` on PostgreSQL) sends no BEGIN and no COMMIT
        if not getattr(conn.connection.dbapi_connection, "autocommit", False):
            self._count("begin")

    def _count(self, what: str) -> None:
        self.counts[self.route][what] += 1

    def _statement(self, conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        self.counts[self.route]["statements"] += 1
        self.sql[self.route].append(" ".join(statement.split())[:160])


def request(app, method: str, path: str, headers: dict, body: bytes = b"") -> tuple[int, bytes]:  # noqa: ANN001
    """One request through the ASGI app, in this process."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "path": path,
             "raw_path": path.encode(), "query_string": b"", "root_path": "", "scheme": "http",
             "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 50000),
             "headers": [(k.lower().encode(), v.encode()) for k, v in
                         {**headers, "content-length": str(len(body)), "host": "127.0.0.1"}.items()]}
    sent = {"status": 0, "body": b""}
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive():
        if messages:
            return messages.pop()
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message):  # noqa: ANN001
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
        elif message["type"] == "http.response.body":
            sent["body"] += message.get("body", b"")

    asyncio.get_event_loop().run_until_complete(app(scope, receive, send))
    return sent["status"], sent["body"]


def rounds(app, counter: Counter, token: str, n: int, key: str) -> None:  # noqa: ANN001
    auth = {"authorization": f"Bearer {token}"}
    for k in range(n):
        counter.route = "next"
        status, body = request(app, "POST", "/api/projects/scale/next", auth)
        task = json.loads(body)
        if status != 200 or task.get("done"):
            raise RuntimeError(f"next: {status} {body[:200]!r}")
        counter.route = "submit"
        status, body = request(app, "POST", f"/api/assignments/{task['assignment_id']}/judgment",
                               {**auth, "content-type": "application/json", "idempotency-key": f"{key}-{k}"},
                               json.dumps({"choice": "AB"[k % 2]}).encode())
        if status != 201:
            raise RuntimeError(f"submit: {status} {body[:200]!r}")
        counter.route = "other"


def inline_threadpool() -> None:
    """Run FastAPI's sync handlers and dependencies in this thread (cProfile sees one thread only)."""
    import anyio.to_thread

    async def run_sync(func, *args, **_kw):  # noqa: ANN001
        return func(*args)

    anyio.to_thread.run_sync = run_sync


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=["sqlite", "postgres"], required=True)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--order", default="import", choices=["import", "uncertainty"])
    ap.add_argument("--labeler", default="new", choices=["new", "vet"])
    ap.add_argument("--profile", action="store_true", help="print the top functions by cumulative and own time")
    ap.add_argument("--show-sql", action="store_true", help="print the statements of one round")
    ap.add_argument("--sqlite-dir", default="/tmp/studio-profile")
    ap.add_argument("--postgres", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()

    from alignloop.feedback.api import create_app
    from alignloop.feedback.store import Database

    asyncio.set_event_loop(asyncio.new_event_loop())
    url, cleanup = studio_scale.database_for(args, args.tasks)
    try:
        built = studio_scale.build(url, args.tasks, per_kind=1)
        studio_scale.set_order(url, args.order)
        db = Database(url)
        app = create_app(db)
        counter = Counter(db.engine)
        if args.profile:
            inline_threadpool()
        token = built["tokens"][f"{args.labeler}0"]
        rounds(app, counter, token, args.warmup, f"w{studio_scale.RUN}")
        counter.counts.clear()
        counter.sql.clear()
        profiler = cProfile.Profile(time.process_time) if args.profile else None  # CPU time, not wall
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        rounds(app, counter, token, args.rounds, f"m{studio_scale.RUN}")
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        per = {route: {k: round(v / args.rounds, 2) for k, v in sorted(c.items())}
               for route, c in counter.counts.items()}
        print(json.dumps({"backend": args.backend, "tasks": args.tasks, "order": args.order, "labeler": args.labeler,
                          "rounds": args.rounds, "profiled": args.profile,
                          "cpu_ms_per_round": round(1000 * cpu / args.rounds, 2),
                          "wall_ms_per_round": round(1000 * wall / args.rounds, 2), "per_round": per}))
        if args.show_sql:
            for route in ("next", "submit"):
                n = counter.counts[route]["statements"] // args.rounds
                print(f"--- {route}: the statements of its last round")
                for line in counter.sql[route][-n:]:
                    print("  ", line)
        if profiler:
            for key in ("cumulative", "tottime"):
                out = io.StringIO()
                pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(45)
                print(out.getvalue())
        db.dispose()
    finally:
        cleanup()


if __name__ == "__main__":
    main()
