"""kill -9 of a live server under load: every judgment that got a 2xx survives, none is stored twice.

A small version of ``benchmarks/feedback_load.py`` (which records the figures): a real ``alignloop label
serve`` subprocess on a free loopback port, concurrent labelers submitting with idempotency keys, SIGKILL
once some were acknowledged, a restart, the unanswered submissions retried with their keys, then a check of
the database.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "feedback_load.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("feedback_load", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["feedback_load"] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_kill_9_mid_load_keeps_every_acknowledged_judgment(db_url, tmp_path):
    bench = _load_bench()
    tokens = bench.setup_db(db_url, n_tasks=60, n_labelers=6, overlap=1)
    port = bench.free_port()
    log = tmp_path / "server.log"
    proc = bench.start_server(db_url, port, log)
    try:
        bench.wait_healthy(port, proc)
        res, _ = asyncio.run(bench.run_load(port, tokens, duration=60, max_total=60, kill=(proc, 12)))
        assert proc.poll() is not None, "the server should have been killed"
        assert len(res.acked) >= 12
        proc = bench.start_server(db_url, port, log)
        bench.wait_healthy(port, proc)
        retried = bench.retry_unanswered(port, tokens, res)
        assert retried["other"] == 0
    finally:
        proc.kill()
        proc.wait()
    report = bench.verify(db_url, res)
    assert report["acknowledged_missing"] == 0, report
    assert report["keys_stored_twice"] == 0 and report["task_labeler_twice"] == 0, report
    assert report["slot_taken_twice"] == 0, report
    assert report["stored"] == report["acknowledged"], report  # nothing stored that nobody was told about
