"""alignloop's side of benchmarks/dpo_vs_trl.py (the shared venv). Prints one JSON line.

Runs the real ``alignloop dpo`` trainer (``alignloop.trainers.dpo.run``); only its tokenisation step is replaced by the
benchmark's pre-tokenised pairs, so both trainers see exactly the same tokens.
"""

import json
import resource
import sys
import time
from pathlib import Path


def main() -> None:
    a = json.loads(sys.argv[1])
    from alignloop.data.batching import SkipReport
    from alignloop.trainers import dpo
    from alignloop.trainers.config import DPOConfig

    rows = [json.loads(x) for x in open(a["tokens"])]
    segs = [dpo.Segment(r["prompt_ids"], [r["chosen_ids"], r["rejected_ids"]], index=i) for i, r in enumerate(rows)]
    dpo.load_segments = lambda cfg, tok, path, limit: (segs, SkipReport(), len(segs))
    cfg = DPOConfig.from_dict(dict(
        model=a["model"], data=a["tokens"], output=a["output"], max_steps=a["steps"], batch_size=a["batch_size"],
        learning_rate=a["lr"], lr_schedule="linear", warmup_steps=0, max_length=a["max_length"], shuffle=False,
        precision=a["precision"], lora=a.get("lora", False), prefix_sharing=a.get("prefix_sharing", True),
        cache_reference=False, seed=0)).validate()
    t = time.perf_counter()
    dpo.run(cfg)
    wall = time.perf_counter() - t
    m = [json.loads(x) for x in (Path(a["output"]) / "metrics.jsonl").read_text().splitlines()]
    steps = [x for x in m if x["step"] >= 1 and "loss" in x]
    train_s = sum(x["tokens"] / x["tokens_per_s"] for x in steps)
    ref_s = next(x["time/reference_s"] for x in m if "time/reference_s" in x)
    print(json.dumps({"side": "alignloop", "losses": [x["loss"] for x in steps], "train_s": train_s,
                      "reference_s": ref_s, "wall_s": wall, "pairs": a["steps"] * a["batch_size"],
                      "tokens": sum(x["tokens"] for x in steps),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
