"""Load test for ``alignloop serve``: 16 concurrent clients, batched serving vs one-at-a-time serving of the
same model (the same server with --max-batch-size 1). Prints one JSON line per mode and the speed-up.

    python benchmarks/serve_load.py --model smollm2-135m-instruct

Each client sends --requests chat requests (greedy, max_tokens fixed, different questions) through the official
openai client and waits for each answer before sending its next one. Throughput = completion tokens / wall time.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import threading
import time

QUESTIONS = ["What is a balance sheet?", "Explain operating margin.", "What does EBITDA stand for?",
             "Why do companies buy back shares?", "What is working capital?", "Define free cash flow.",
             "What is a dividend?", "How is revenue recognised?", "What is goodwill?", "What is a 10-K filing?",
             "Explain gross margin.", "What is leverage?", "What is an annual report?", "Define liquidity.",
             "What is depreciation?", "What is a cash flow statement?"]


def serve(model: str, max_batch_size: int, wait_ms: float):
    import tempfile

    import uvicorn

    from alignloop.serve.app import build
    from alignloop.serve.config import ServeConfig

    cfg = ServeConfig(model=model, db=f"sqlite:///{tempfile.mkdtemp()}/bench.db", jobs=False,
                      max_batch_size=max_batch_size, batch_wait_ms=wait_ms, store_answers=False).validate()
    app, srv = build(cfg)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=uv.run, daemon=True)
    t.start()
    while not uv.started:
        time.sleep(0.05)
    return uv, t, srv, f"http://127.0.0.1:{port}/v1"


def load(url: str, model: str, clients: int, requests: int, max_tokens: int) -> dict:
    import openai

    latencies: list[float] = []
    tokens = [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        c = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=3600)
        for r in range(requests):
            q = QUESTIONS[(i + r) % len(QUESTIONS)]
            t0 = time.perf_counter()
            out = c.chat.completions.create(model=model, messages=[{"role": "user", "content": q}],
                                            max_tokens=max_tokens, temperature=0)
            with lock:
                latencies.append(time.perf_counter() - t0)
                tokens[0] += out.usage.completion_tokens

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {"clients": clients, "requests": clients * requests, "completion_tokens": tokens[0],
            "seconds": round(wall, 2), "tokens_per_s": round(tokens[0] / wall, 1),
            "latency_p50_s": round(statistics.median(latencies), 2), "latency_max_s": round(max(latencies), 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=1, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--wait-ms", type=float, default=10.0)
    args = ap.parse_args()
    results = {}
    for mode, bs in (("one-at-a-time", 1), ("batched", args.clients)):
        uv, t, srv, url = serve(args.model, bs, args.wait_ms)
        load(url, args.model, 1, 1, 4)  # warm-up
        res = load(url, args.model, args.clients, args.requests, args.max_tokens)
        res.update(mode=mode, max_batch_size=bs, batcher=dict(srv.pool.default.batcher.stats))
        print(json.dumps(res), flush=True)
        results[mode] = res
        uv.should_exit = True
        t.join(timeout=30)
        srv.pool.close()
    print(json.dumps({"speedup_tokens_per_s": round(results["batched"]["tokens_per_s"] /
                                                    results["one-at-a-time"]["tokens_per_s"], 2)}))


if __name__ == "__main__":
    main()
