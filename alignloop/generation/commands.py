"""``alignloop generate``: K completions per prompt, written as JSONL for the labeling app and the RL trainers."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from alignloop.generation.sampling import SamplingParams, sample_texts


def run_generate(cfg: Any) -> Path:
    """``alignloop generate``: K completions per prompt → JSONL for the labeling app and the RL trainers."""
    from tqdm.auto import tqdm

    from alignloop.data.readers import public_meta, read_records, write_jsonl
    from alignloop.models.load import load_causal_lm, pick_precision

    records = read_records(cfg.prompts, kind="prompt", limit=cfg.limit)
    model, tok = load_causal_lm(cfg.model)
    if pick_precision(cfg.precision) == "bf16" and torch.cuda.is_available():
        model = model.to(torch.bfloat16)
    model = model.to("cuda" if torch.cuda.is_available() else "cpu")
    params = SamplingParams(cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.top_k, cfg.seed)
    total = len(records) * cfg.num_completions
    t0 = time.perf_counter()
    with tqdm(total=total, desc="generate", unit="answer", file=sys.stderr, dynamic_ncols=True) as bar:
        completions = sample_texts(model, tok, [r.prompt for r in records], cfg.num_completions, params,
                                   cfg.chat_template, cfg.batch_size, cfg.max_prompt_length, progress=bar)
    elapsed = time.perf_counter() - t0
    rows = []
    for n, (rec, comps) in enumerate(zip(records, completions)):
        meta = public_meta(rec.meta)
        row = {"id": str(meta.pop("id", meta.get("financebench_id", n))), "prompt": rec.prompt.to_json(),
               "completions": comps, "model": cfg.model, "sampling": asdict(params)}
        row.update({k: v for k, v in meta.items() if k not in row})
        rows.append(row)
    write_jsonl(cfg.output, rows)
    n_tokens = sum(len(tok(c, add_special_tokens=False)["input_ids"]) for comps in completions for c in comps)
    print(json.dumps({"output": str(cfg.output), "prompts": len(records), "completions": total,
                      "new_tokens": n_tokens, "seconds": round(elapsed, 2),
                      "tokens_per_s": round(n_tokens / max(elapsed, 1e-9), 1)}))
    return Path(cfg.output)


