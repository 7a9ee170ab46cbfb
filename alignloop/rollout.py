"""Batched sampling with a KV cache: ``alignloop generate`` and, later, the RL trainers' rollouts.

transformers' ``generate`` does the decoding (KV cache, temperature / top-p / top-k); this module batches
prompts by length (left-padded, so every row's next token sits at the same position), stops each row at its
first stop token, and returns token ids with the answer cut right after the stop token.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from alignloop.data.records import Prompt


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature <= 0:
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p,
                "top_k": self.top_k if self.top_k > 0 else None}


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``input_ids`` and ``attention_mask`` for a batch of prompts."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r):] = torch.tensor(list(r), dtype=torch.long)
            mask[i, width - len(r):] = 1
    return ids.to(device), mask.to(device)


def truncate_after_stop(tokens: Sequence[int], stop_ids: Sequence[int], pad_id: int | None = None) -> tuple[list[int], bool]:
    """Cut an answer right after its first stop token (kept: the model must learn to emit it); drop padding.

    Returns ``(tokens, ended)`` where ``ended`` says whether a stop token was emitted.
    """
    out: list[int] = []
    for t in tokens:
        t = int(t)
        out.append(t)
        if t in stop_ids:
            return out, True
    if pad_id is not None:
        while out and out[-1] == pad_id:
            out.pop()
    return out, False


@torch.no_grad()
def sample_ids(model: Any, tokenizer: Any, prompts: Sequence[Sequence[int]], params: SamplingParams,
               batch_size: int = 16, progress: Any = None, **generate_kwargs: Any) -> list[tuple[list[int], bool]]:
    """Sample one answer per prompt (repeat a prompt K times for K answers); returns (answer ids, ended) per
    prompt, in the input order. Prompts are batched by length so little compute goes to padding.
    ``generate_kwargs`` go to ``generate`` as they are (the server passes a streamer and stopping criteria)."""
    from alignloop.data.templates import stop_token_ids

    stop = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    results: list[tuple[list[int], bool] | None] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    gen_kwargs = params.generate_kwargs()
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        ids, mask = left_pad([prompts[i] for i in idx], tokenizer.pad_token_id, device)
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=params.max_new_tokens,
                             eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **gen_kwargs,
                             **generate_kwargs)
        new = out[:, ids.shape[1]:].tolist()
        for i, row in zip(idx, new):
            results[i] = truncate_after_stop(row, stop, tokenizer.pad_token_id)
        if progress is not None:
            progress.update(len(idx))
    if was_training:
        model.train()
    return results  # type: ignore[return-value]


def sample_texts(model: Any, tokenizer: Any, prompts: Sequence[Prompt], num_completions: int,
                 params: SamplingParams, chat_template: bool = True, batch_size: int = 16,
                 max_prompt_length: int = 1024, progress: Any = None) -> list[list[str]]:
    from alignloop.data.templates import encode_prompt

    if params.seed is not None:
        torch.manual_seed(params.seed)
    encoded = [encode_prompt(tokenizer, p, chat_template)[-max_prompt_length:] for p in prompts]
    flat = [e for e in encoded for _ in range(num_completions)]
    answers = sample_ids(model, tokenizer, flat, params, batch_size, progress)
    texts = [tokenizer.decode(a, skip_special_tokens=True).strip() for a, _ in answers]
    return [texts[i * num_completions:(i + 1) * num_completions] for i in range(len(prompts))]


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
