"""SFT and sampling throughput on the default model (issue 2's benchmark).

    .venv/bin/python benchmarks/foundation.py [--model smollm2-135m-instruct]

Prints one JSON line per measurement: SFT tokens/s (LoRA and full fine-tuning, fp32 and bf16 autocast, batch 4,
FinanceBench question + evidence truncated to 512 tokens) and sampling tokens/s (new tokens per second, K
completions per prompt, batched with a KV cache). The first steps are warm-up and not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from alignloop.data.batching import answer_mask, flatten
from alignloop.data.readers import read_records
from alignloop.data.templates import encode_prompt
from alignloop.generation.rollout import SamplingParams, sample_ids
from alignloop.losses import masked_token_nll
from alignloop.models.load import add_lora, disable_dropout, load_causal_lm
from alignloop.trainers.sft import tokenize_examples

DATA = Path(__file__).resolve().parents[1] / "data" / "financebench" / "questions.jsonl"


def sft_throughput(model_name: str, lora: bool, precision: str, steps: int, warmup: int = 2) -> dict:
    model, tok = load_causal_lm(model_name)
    disable_dropout(model)
    if lora:
        model = add_lora(model, 16, 32, 0.0,
                         ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    examples, _ = tokenize_examples(read_records(DATA), tok, 512, "left")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    tokens, elapsed = 0, 0.0
    for step in range(warmup + steps):
        batch = examples[(step * 4) % len(examples):(step * 4) % len(examples) + 4]
        fb = flatten([(e.input_ids, answer_mask(e)) for e in batch])
        t0 = time.perf_counter()
        ctx = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
               else torch.autocast("cpu", enabled=False))
        with ctx:
            out = model(input_ids=fb.input_ids, position_ids=fb.position_ids, use_cache=False,
                        logits_to_keep=fb.logit_positions())
        loss = masked_token_nll(out.logits[0].float(), fb.targets()) / fb.logit_positions().numel()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if step >= warmup:
            elapsed += time.perf_counter() - t0
            tokens += fb.num_tokens
    return {"bench": "sft", "model": model_name, "lora": lora, "precision": precision, "steps": steps,
            "batch_size": 4, "max_length": 512, "tokens": tokens, "seconds": round(elapsed, 2),
            "tokens_per_s": round(tokens / elapsed, 1)}


def sampling_throughput(model_name: str, prompts: int, k: int, batch_size: int, max_new: int) -> dict:
    model, tok = load_causal_lm(model_name)
    model.eval()
    recs = read_records(DATA, kind="prompt", limit=prompts)
    ids = [encode_prompt(tok, r.prompt)[-256:] for r in recs]
    flat = [p for p in ids for _ in range(k)]
    params = SamplingParams(max_new_tokens=max_new, temperature=0.8, seed=0)
    sample_ids(model, tok, flat[:batch_size], SamplingParams(max_new_tokens=4), batch_size)  # warm-up
    torch.manual_seed(0)
    t0 = time.perf_counter()
    out = sample_ids(model, tok, flat, params, batch_size)
    elapsed = time.perf_counter() - t0
    new = sum(len(a) for a, _ in out)
    return {"bench": "sampling", "model": model_name, "prompts": prompts, "k": k, "batch_size": batch_size,
            "prompt_tokens_max": 256, "max_new_tokens": max_new, "new_tokens": new, "seconds": round(elapsed, 2),
            "tokens_per_s": round(new / elapsed, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                      "torch": torch.__version__}))
    for lora in (True, False):
        for precision in ("fp32", "bf16"):
            print(json.dumps(sft_throughput(args.model, lora, precision, args.steps)), flush=True)
    for bs in (1, 32):
        print(json.dumps(sampling_throughput(args.model, prompts=8, k=4, batch_size=bs, max_new=64)), flush=True)


if __name__ == "__main__":
    main()
