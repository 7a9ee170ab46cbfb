("""Incremental fine-tuning through the Python SDK, notebook style: train on 20, then 40, then 60 labeled
FinanceBench questions (each round continuing from the previous round's model), and after each round write
the model's answers to held-out questions to a CSV.

    # against a running server started with --jobs --allow-registry-models (KEY: its admin key)
    python examples/incremental_sdk.py --base-url http://127.0.0.1:8000 --api-key KEY
    # or let the script start `alignloop serve` itself (quick check on the tiny model):
    python examples/incremental_sdk.py --model tiny --sizes 2,4,6 --eval-questions 2 --max-steps 1 """
 """--output runs/sdk-tiny

Outputs: OUTPUT/predictions-stage{1,2,3}.csv (stage, model_id, n_train, question_id, question, gold, prediction)
and OUTPUT/models.json (the model id of each stage; `alignloop models lineage ID` shows its data).
""")

# %% setup
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import alignloop
from alignloop.data.context import build_context
from alignloop.data.readers import qa_prompt

ROOT = Path(__file__).resolve().parents[1]
CONTEXT_CHARS = 1500  # evidence pages are long; keep prompts within the server's --max-prompt-tokens


def context(q: dict) -> str:
    """The evidence's passages most relevant to the question (docs/data.md), for training and predicting alike."""
    return build_context(q["question"], q.get("evidence"), CONTEXT_CHARS)


def load_questions(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sft_record(q: dict) -> dict:
    """A labeled question as an SFT example: the same prompt `predict` builds, the gold answer as completion."""
    prompt = qa_prompt(q["question"], context(q))
    return {"id": q["financebench_id"], "prompt": prompt.to_json(), "completion": q["answer"]}


def start_server(model: str, port: int, api_key: str) -> subprocess.Popen:
    # one admin key (training needs one; it may run inference too), jobs on, the trained models servable
    env = {**os.environ, "ALIGNLOOP_ADMIN_KEYS": api_key, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "alignloop", "serve", "--model", model, "--port", str(port),
                             "--jobs", "--allow-registry-models", "--log-level", "warning"], env=env)
    import httpx

    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", default=None, help="a running server; default: start one on --port")
    ap.add_argument("--api-key", default="example-key", help="the server's admin key (training needs one)")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="the starting model")
    ap.add_argument("--data", default=str(ROOT / "data" / "financebench" / "questions.jsonl"))
    ap.add_argument("--sizes", default="20,40,60", help="labeled questions per stage (cumulative)")
    ap.add_argument("--eval-questions", type=int, default=10, help="held-out questions (the last N of the file)")
    ap.add_argument("--max-steps", type=int, default=None, help="optimizer steps per stage (default: 1 epoch)")
    ap.add_argument("--learning-rate", type=float, default=2e-5)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--output", default="runs/incremental-sdk")
    args = ap.parse_args()

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    proc = None
    base_url = args.base_url
    if base_url is None:
        proc = start_server(args.model, args.port, args.api_key)
        base_url = f"http://127.0.0.1:{args.port}"
    try:
        run(args, base_url, out)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)


def run(args: argparse.Namespace, base_url: str, out: Path) -> None:
    # %% connect and look at what the server has
    client = alignloop.Client(base_url, admin_key=args.api_key)
    print("models on the server:", [m["id"] for m in client.models()])

    # %% data: the first questions are for training, the last ones are held out
    questions = load_questions(Path(args.data))
    held_out = questions[-args.eval_questions:]
    sizes = [int(s) for s in args.sizes.split(",")]
    assert max(sizes) <= len(questions) - len(held_out), "training and held-out questions would overlap"

    # %% train on 20, 40, 60 questions in turn; predict after each stage
    model_id, stages = args.model, []
    for stage, n in enumerate(sizes, start=1):
        train_data = [sft_record(q) for q in questions[:n]]
        config = {"learning_rate": args.learning_rate, "batch_size": 4, "max_length": 768}
        if args.max_steps:
            config["max_steps"] = args.max_steps
        t0 = time.time()
        model_id = client.train(train_data, initial_model_id=model_id, model_name=f"financebench-{n}",
                                fine_tuning_type="sft", **config)
        print(f"stage {stage}: trained on {n} questions -> {model_id} ({time.time() - t0:.0f} s)")
        path = out / f"predictions-stage{stage}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, ["stage", "model_id", "n_train", "question_id", "question", "gold", "prediction"])
            w.writeheader()
            for q in held_out:
                answer = client.predict(model_id, q["question"], context=context(q), max_tokens=args.max_tokens)
                w.writerow({"stage": stage, "model_id": model_id, "n_train": n, "question_id": q["financebench_id"],
                            "question": q["question"], "gold": q["answer"], "prediction": str(answer)})
        stages.append({"stage": stage, "n_train": n, "model_id": model_id, "predictions": str(path)})
        print(f"  wrote {path}")

    # %% where each model came from
    (out / "models.json").write_text(json.dumps(stages, indent=1))
    lin = client.lineage(model_id)
    print("lineage of the last model:", " <- ".join(c["model_id"] for c in lin["chain"]), "<-", lin["base_model"])


if __name__ == "__main__":
    main()
