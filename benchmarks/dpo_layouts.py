"""Which batch layout is fastest for DPO on this machine? (forward + backward of one micro-batch of pairs)

  flatten   : the foundation's ``flatten``: [prompt+chosen], [prompt+rejected] in one row, mask from position ids
  flat-4d   : the same sequences, packed rows with an explicit 4D mask (build_flat_batch)
  shared-1  : prefix sharing, all pairs in one row, dense 4D mask (build_batch, budget = everything)
  shared-N  : prefix sharing, pairs packed first-fit into rows of N tokens

Usage: python benchmarks/dpo_layouts.py [--model smollm2-135m-instruct] [--pairs 8]
"""

import argparse
import time

import torch

from alignloop.data.batching import flatten
from alignloop.data.readers import read_preferences
from alignloop.losses import token_logprobs
from alignloop.models.load import load_causal_lm
from alignloop.trainers.dpo import answer_logps, build_batch, build_flat_batch, pack_rows, tokenize_pairs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--lora", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_causal_lm(a.model)
    if a.lora:
        from alignloop.models.load import add_lora
        model = add_lora(model, 16, 32, 0.0,
                         ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    prefs = read_preferences("data/hh-harmless/train.jsonl.gz", limit=200)
    segs, _ = tokenize_pairs(prefs, tok, a.max_length, "skip")
    segs = segs[: a.pairs]
    P = sum(len(s.prompt_ids) for s in segs)
    A = sum(len(x) for s in segs for x in s.answers)
    print(f"{len(segs)} pairs: {P} prompt tokens, {A} answer tokens; shared {P + A} vs flat {2 * P + A} tokens")
    ac = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

    def run_flatten():
        seqs = []
        for s in segs:
            for ans in s.answers:
                ids = s.prompt_ids + ans
                seqs.append((ids, [0] * len(s.prompt_ids) + [1] * len(ans)))
        fb = flatten(seqs)
        pos = fb.logit_positions()
        with ac():
            out = model(input_ids=fb.input_ids, position_ids=fb.position_ids, use_cache=False, logits_to_keep=pos)
        return token_logprobs(out.logits[0], fb.targets()).sum()

    def layout(builder, budget):
        def f():
            rows = pack_rows(segs, budget)
            b = builder(segs, rows, tok.pad_token_id)
            return answer_logps(model, b, ac)[0].sum()
        return f

    total = 10 ** 9
    cases = {"flatten": run_flatten, "flat-4d-1row": layout(build_flat_batch, total),
             "shared-1row": layout(build_batch, total), "shared-1024": layout(build_batch, 1024),
             "shared-512": layout(build_batch, 512)}
    # same numbers from every layout (prefix sharing changes nothing mathematically)
    with torch.no_grad():
        ref = {k: float(f()) for k, f in cases.items()}
    print("sum of answer log-probs per layout:", {k: round(v, 2) for k, v in ref.items()})
    for name, f in cases.items():
        f().backward()
        model.zero_grad(set_to_none=True)
        ts = []
        for _ in range(a.reps):
            t = time.perf_counter()
            f().backward()
            ts.append(time.perf_counter() - t)
            model.zero_grad(set_to_none=True)
        best = min(ts)
        print(f"{name:14s} fwd+bwd {best:6.2f} s  ({len(segs) / best:5.2f} pairs/s)  all: {[round(x, 2) for x in ts]}")


if __name__ == "__main__":
    main()
