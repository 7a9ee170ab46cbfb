"""Supervised fine-tuning (``alignloop sft``): learn to answer like the demonstrations.

The loop, top to bottom: load model (+LoRA) → tokenise once (cached) → for each step: gradient-accumulated
micro-batches of padding-free flattened sequences → masked cross-entropy on answer tokens only → clip, step,
schedule → metrics, checkpoints → save a plain Hugging Face folder.

The loss of a step is the mean over *all answer tokens of the step* (summed over micro-batches and processes,
then divided by their total count), so gradient accumulation and multi-process runs give the same loss as one
big batch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from alignloop.core.errors import DataError
from alignloop.core.paths import cache_dir
from alignloop.data.batching import (
    Example,
    SkipReport,
    answer_mask,
    batches,
    cached_examples,
    file_fingerprint,
    fit_length,
    flatten,
    packed_batches,
)
from alignloop.data.readers import read_records
from alignloop.data.records import PromptCompletion, TextRecord
from alignloop.data.templates import encode_answer, encode_prompt
from alignloop.losses import masked_token_nll
from alignloop.models.load import load_trainable
from alignloop.trainers import engine
from alignloop.trainers.config import SFTConfig


def tokenize_examples(records: list[Any], tokenizer: Any, max_length: int, truncation: str,
                      chat_template: bool = True) -> tuple[list[Example], SkipReport]:
    """Prompt/answer token ids under the over-long-row policy; text records are split into max_length windows."""
    report = SkipReport()
    out: list[Example] = []
    for i, rec in enumerate(records):
        where = rec.meta.get("_where")
        if isinstance(rec, TextRecord):
            ids = tokenizer(rec.text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
            for s in range(0, len(ids), max_length):
                if len(ids[s:s + max_length]) > 1:
                    out.append(Example([], ids[s:s + max_length], index=i))
            continue
        if not isinstance(rec, PromptCompletion):
            raise DataError(f"SFT needs prompt/completion, messages or text data, not {type(rec).__name__}", path=where)
        fitted = fit_length(encode_prompt(tokenizer, rec.prompt, chat_template),
                            encode_answer(tokenizer, rec.completion),
                            max_length, truncation, report, where)
        if fitted is not None:
            out.append(Example(fitted[0], fitted[1], index=i))
    return out, report


def load_examples(cfg: SFTConfig, tokenizer: Any, path: str, limit: int | None,
                  run: engine.Run) -> tuple[list[Example], SkipReport, int]:
    """Tokenise once and cache on disk, keyed by the data file, tokenizer and length settings."""

    def build() -> dict[str, Any]:
        records = read_records(path, limit=limit)
        examples, report = tokenize_examples(records, tokenizer, cfg.max_length, cfg.truncation, cfg.chat_template)
        return {"examples": examples, "report": report, "n": len(records)}

    key = ("sft", file_fingerprint(path), tokenizer.name_or_path, len(tokenizer), cfg.max_length, cfg.truncation,
           cfg.chat_template, limit)
    cached = cached_examples(key, cache_dir("tokens"), build, run.is_main)
    return cached["examples"], cached["report"], cached["n"]


def micro_batches(cfg: SFTConfig, examples: list[Example], run: engine.Run):
    """Index micro-batches per epoch; each global micro-batch is split across processes."""
    world, rank = run.world, run.rank

    def make_epoch(epoch: int) -> list[list[int]]:
        if cfg.packing:
            glob = packed_batches([len(e) for e in examples], cfg.batch_size * cfg.max_length * world, cfg.seed, epoch)
        else:
            glob = batches(len(examples), cfg.batch_size * world, cfg.seed, epoch)
        # a rank whose share is empty (the last, short batch) still runs a zero-weight step: see step_loss
        return [b[rank::world] for b in glob]

    return make_epoch


def step_loss(model: Any, run: engine.Run, examples: list[Example], idx: list[int], completion_only: bool,
              denom: float) -> tuple[torch.Tensor, float, int]:
    """Forward one flattened micro-batch; returns (loss scaled for backward, summed NLL, answer tokens).

    An empty ``idx`` (this rank's share of a short last batch) forwards one example with weight 0: every rank
    must join the backward's gradient all-reduce, and a duplicated real example would be counted twice."""
    if not idx:
        loss, _, _ = step_loss(model, run, examples, [0], completion_only, denom)
        return loss * 0.0, 0.0, 0
    seqs = [(examples[i].input_ids, answer_mask(examples[i], completion_only)) for i in idx]
    fb = flatten(seqs, device=run.device)
    positions = fb.logit_positions()
    with run.autocast():
        # logits only where a loss token is predicted: the LM head is ~20% of the compute at SmolLM2's vocab
        out = model(input_ids=fb.input_ids, position_ids=fb.position_ids, use_cache=False, logits_to_keep=positions)
    nll = masked_token_nll(out.logits[0].float(), fb.targets())
    n = int(positions.numel())
    # mean over the step's tokens on all processes; DDP averages gradients over processes, so scale by world
    return nll * (run.world / denom), float(nll.detach()), n


@torch.no_grad()
def evaluate(model: Any, run: engine.Run, examples: list[Example], completion_only: bool, batch_size: int) -> float:
    model.eval()
    total, count = 0.0, 0
    # the same number of forwards on every rank (an empty share runs a zero-weight one): sharded models
    # (FSDP) gather weights collectively in each forward, so a rank that stopped early would hang the others
    rounds = -(-len(examples) // (batch_size * run.world))
    for k in range(rounds):
        s = (k * run.world + run.rank) * batch_size
        idx = list(range(s, min(s + batch_size, len(examples))))
        _, nll, n = step_loss(model, run, examples, idx, completion_only, 1.0)
        total, count = total + nll, count + n
    model.train()
    total, count = run.reduce_sum(total), run.reduce_sum(count)
    return total / max(count, 1)


def run(cfg: SFTConfig) -> Path:
    r = engine.setup(cfg)
    model, tok = load_trainable(cfg)

    examples, report, n_rows = load_examples(cfg, tok, cfg.data, cfg.limit, r)
    r.log(f"data: {cfg.data}: {report.summary(n_rows)}")
    if not examples:
        raise DataError("no usable rows (all were skipped; see the report above)", path=cfg.data)
    dev = None
    if cfg.dev_data:
        dev, dev_report, n_dev = load_examples(cfg, tok, cfg.dev_data, None, r)
        r.log(f"dev data: {cfg.dev_data}: {dev_report.summary(n_dev)}")

    loop = engine.start_loop(r, model, micro_batches(cfg, examples, r), "sft")
    model, optimizer, scheduler, total = loop.model, loop.optimizer, loop.scheduler, loop.total
    for step in range(loop.start + 1, total + 1):
        micro = [next(loop.stream) for _ in range(cfg.grad_accum)]
        local_tokens = sum(int(sum(answer_mask(examples[i], cfg.completion_only))) for _, b in micro for i in b)
        denom = r.reduce_sum(local_tokens)
        nll_sum, seen = 0.0, 0
        for k, (_, idx) in enumerate(micro):
            with engine.micro_step(r, model, sync=k == len(micro) - 1):
                loss, nll, n = step_loss(model, r, examples, idx, cfg.completion_only, denom)
                r.accelerator.backward(loss)
            nll_sum += nll
            seen += sum(len(examples[i]) for i in idx)
        loss_value = r.reduce_sum(nll_sum) / max(denom, 1)
        engine.check_finite(r, loss_value, step)
        grad_norm = engine.clip_and_step(r, model, optimizer, scheduler, cfg.max_grad_norm)
        dt = loop.timer.lap()
        tokens = r.reduce_sum(seen)
        values = {"loss": loss_value, "grad_norm": grad_norm, "learning_rate": scheduler.get_last_lr()[0],
                  "epoch": micro[-1][0], "tokens": tokens, "tokens_per_s": tokens / max(dt, 1e-9)}
        if dev is not None and cfg.eval_every and step % cfg.eval_every == 0:
            values["eval/loss"] = evaluate(model, r, dev, cfg.completion_only, cfg.batch_size)
        if step % cfg.log_every == 0 or step == total:
            r.metrics.write(step, values)
        loop.bar.set_postfix(loss=f"{loss_value:.4f}", tok_s=f"{values['tokens_per_s']:.0f}")
        loop.bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step != total:
            engine.save_checkpoint(r, step, model, optimizer, scheduler)
    loop.bar.close()
    if dev is not None:
        r.metrics.write(total, {"eval/loss": evaluate(model, r, dev, cfg.completion_only, cfg.batch_size)})
    engine.save_checkpoint(r, total, model, optimizer, scheduler)
    final = engine.finish(r, model, tok)
    r.log(f"saved {final}")
    return final
