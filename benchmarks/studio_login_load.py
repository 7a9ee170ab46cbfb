"""A labeler's writes while others hammer the sign-in form (issue 19), loopback only, bounded in count and time.

    python benchmarks/studio_login_load.py --db sqlite --attackers 30 --rounds 100

``alignloop label serve`` runs in a subprocess on a fresh database. One labeler (API token) does ``--rounds``
rounds of "POST next task, POST a judgment" alone, then again while ``--attackers`` threads each send wrong
passwords through the sign-in form as fast as the server answers (unknown and real account names, one client
address). Reports the labeler's submit p50 / p99 in both phases, and how the sign-in attempts were answered
(``wrong``: the password was checked; ``throttled``: refused before any hash). The review (2026-12-01) measured
the write going from 6 ms to 739 ms with 30 concurrent failed sign-ins when the hash ran inside the write lock and
nothing throttled; the tests check the structure (lock free during the hash, throttling in the database), this
measures what a labeler feels.
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from feedback_load import free_port, fresh_url, pct, setup_db, start_server, wait_healthy  # noqa: E402


def labeler_rounds(port: int, token: str, rounds: int) -> list[float]:
    """Seconds per acknowledged submission over ``rounds`` next + submit rounds."""
    out = []
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                      timeout=30) as c:
        for _ in range(rounds):
            a = c.post("/api/projects/load/next").json()
            if a.get("done"):
                break
            t0 = time.perf_counter()
            r = c.post(f"/api/assignments/{a['assignment_id']}/judgment", json={"choice": "A"})
            if r.status_code in (200, 201):
                out.append(time.perf_counter() - t0)
    return out


def attacker(port: int, i: int, stop: threading.Event, answers: dict[str, int], lock: threading.Lock) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30, follow_redirects=False) as c:
        page = c.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        n = 0
        while not stop.is_set():
            name = "labeler000" if n % 2 else f"nobody{i}-{n}"  # a real account and unknown ones
            r = c.post("/login", data={"name": name, "password": "wrong password", "csrf_token": token})
            kind = re.search(r"error=(\w+)", r.headers.get("location", "")) if r.status_code == 303 else None
            with lock:
                key = kind.group(1) if kind else str(r.status_code)
                answers[key] = answers.get(key, 0) + 1
            n += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default="sqlite", help="sqlite, postgres (a fresh schema on 127.0.0.1) or a URL")
    ap.add_argument("--attackers", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--workdir", default="/tmp")
    args = ap.parse_args()
    url, drop = fresh_url(args.db, Path(args.workdir))
    proc = None
    try:
        tokens = setup_db(url, n_tasks=2 * args.rounds + 10, n_labelers=1, overlap=1)
        port = free_port()
        proc = start_server(url, port)
        wait_healthy(port, proc)
        alone = labeler_rounds(port, tokens[0], args.rounds)
        stop, lock, answers = threading.Event(), threading.Lock(), {}
        threads = [threading.Thread(target=attacker, args=(port, i, stop, answers, lock), daemon=True)
                   for i in range(args.attackers)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        loaded = labeler_rounds(port, tokens[0], args.rounds)
        seconds = time.perf_counter() - t0
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        drop()
    ms = lambda v, q: 1000 * pct(v, q)  # noqa: E731
    print(f"alone: {len(alone)} submits, p50 {ms(alone, .5):.1f} ms, p99 {ms(alone, .99):.1f} ms")
    print(f"with {args.attackers} sign-in attackers: {len(loaded)} submits in {seconds:.1f} s, "
          f"p50 {ms(loaded, .5):.1f} ms, p99 {ms(loaded, .99):.1f} ms")
    print(f"sign-in attempts answered: {dict(sorted(answers.items()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
