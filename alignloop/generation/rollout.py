"""Batched sampling with a KV cache: ``alignloop generate`` and the RL trainers' rollouts.

transformers' ``generate`` does the decoding (KV cache, temperature / top-p / top-k, position ids computed from
the attention mask so left padding does not shift positions); this module batches prompts by length
(left-padded, so every row's next token sits at the same position), stops each row at its first stop token, and
returns token ids with the answer cut right after the stop token.

The RL half (``generate_rollout``, ``sequence_logprobs``, ``sequence_values``): answers are sampled, then
scored by one forward pass per model (policy, reference, critic) over prompt + answer, which gives
the log-probs of the sampled tokens under ``softmax(logits / T)``, the distribution they were sampled from
(RL stages sample with top-p = 1 and top-k = 0 so the two agree exactly). Re-scoring in a plain forward rather
than keeping generate's scores is what PPO needs anyway: the old log-probs must come from the same computation
as the training forward, or the first ratio is not 1 (the "N implementation details" note). An optional vLLM
backend samples on a GPU when vLLM is installed (not exercised on the CPU development machine).
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


def pad_responses(responses: Sequence[Sequence[int]], pad_id: int, device: Any = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded answer ids ``[B, T]`` and their mask (1 on answer tokens, the stop token included)."""
    width = max(1, max((len(r) for r in responses), default=1))
    ids = torch.full((len(responses), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(responses), width), dtype=torch.float32)
    for i, r in enumerate(responses):
        if len(r):
            ids[i, :len(r)] = torch.tensor(list(r), dtype=torch.long)
            mask[i, :len(r)] = 1.0
    return ids.to(device), mask.to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token (left padding must not shift them)."""
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)


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


# --------------------------------------------------------------------------------------------------
# RL rollouts: sample, then score the sampled tokens with one forward per model
# --------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """Answers sampled for a batch of prompts (``k`` consecutive rows per prompt for GRPO/RLOO)."""

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    #: whether each answer emitted a stop token (answers that never stop can be penalised)
    ended: list[bool]
    texts: list[str]
    seconds: float = 0.0

    @property
    def num_tokens(self) -> int:
        return sum(len(r) for r in self.response_ids)


def generate_rollout(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                     temperature: float, batch_size: int = 16, backend: str = "transformers") -> Rollout:
    """Sample one answer per prompt id list (repeat a prompt k times for k answers) with the current policy.

    Answers are cut right after the first stop token; an answer that never stops keeps all its tokens (a genuine
    sampled pad token is kept too: only padding *after* a stop is padding).
    """
    from alignloop.data.templates import stop_token_ids

    if backend == "vllm":
        return _vllm_rollout(model, tokenizer, prompt_ids, max_new_tokens, temperature)
    stop = stop_token_ids(tokenizer)
    device = next(model.parameters()).device
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    responses: list[list[int]] = [[] for _ in prompt_ids]
    ended = [False] * len(prompt_ids)
    was_training = model.training
    model.eval()
    params = SamplingParams(max_new_tokens, temperature, 1.0, 0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, mask = left_pad([prompt_ids[i] for i in idx], tokenizer.pad_token_id, device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **params.generate_kwargs())
            for i, row in zip(idx, out[:, ids.shape[1]:].tolist()):
                responses[i], ended[i] = truncate_after_stop(row, stop, None)
    if was_training:
        model.train()
    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]
    return Rollout([list(p) for p in prompt_ids], responses, ended, texts, time.perf_counter() - t0)


def _vllm_rollout(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                  temperature: float) -> Rollout:
    """Sampling through vLLM (GPU only). The policy's current weights (LoRA merged) are pushed into the vLLM
    engine before each rollout; the engine is created once and kept on the model object.

    Untested on the CPU development machine (vLLM needs CUDA); the log-probs still come from the trainer's own
    forward, so vLLM only changes which answers are drawn, not how they are scored.
    """
    from alignloop.core.config import ConfigError

    try:
        import vllm
    except ImportError:
        raise ConfigError(["backend: 'vllm' needs the vllm package and a CUDA GPU (pip install vllm); "
                           "use --backend transformers (the default) on a CPU"]) from None
    if not torch.cuda.is_available():
        raise ConfigError(["backend: 'vllm' needs a CUDA GPU; use --backend transformers on a CPU"])
    from alignloop.data.templates import stop_token_ids

    engine = getattr(model, "_alignloop_vllm", None)
    if engine is None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        engine = vllm.LLM(model=base.config._name_or_path, dtype="bfloat16", gpu_memory_utilization=0.3,
                          enable_prefix_caching=True)
        model._alignloop_vllm = engine
    _push_weights(model, engine)
    stop = stop_token_ids(tokenizer)
    params = vllm.SamplingParams(temperature=temperature, top_p=1.0, top_k=-1, max_tokens=max_new_tokens,
                                 stop_token_ids=stop, skip_special_tokens=False)
    t0 = time.perf_counter()
    outs = engine.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params, use_tqdm=False)
    responses, ended = [], []
    for o in outs:
        ids, stopped = truncate_after_stop(list(o.outputs[0].token_ids), stop, None)
        responses.append(ids)
        ended.append(stopped)
    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]
    return Rollout([list(p) for p in prompt_ids], responses, ended, texts, time.perf_counter() - t0)


def _push_weights(model: Any, engine: Any) -> None:
    """Load the policy's weights into the vLLM engine (LoRA merged for the copy, then unmerged)."""
    peft = hasattr(model, "merge_adapter")
    if peft:
        model.merge_adapter()
    try:
        state = {}
        for name, p in model.state_dict().items():
            if "lora_" in name:
                continue
            name = name.replace("base_model.model.", "").replace(".base_layer", "")
            state[name] = p
        runner = engine.llm_engine.model_executor.driver_worker
        target = getattr(getattr(runner, "worker", runner), "model_runner").model
        target.load_weights(state.items())
    except AttributeError as exc:
        raise NotImplementedError(f"this vLLM version does not expose its model for weight updates ({exc}); "
                                  "use --backend transformers") from None
    finally:
        if peft:
            model.unmerge_adapter()


def _answer_index(prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_id: int,
                  device: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompt + answer right-padded into ``[B, T]`` ids, and for every answer token (in order) its row, the
    position whose output predicts it, and its id.

    Right padding needs no attention mask: under the causal mask a real token only sees earlier tokens, which are
    all real, and positions count from 0 as usual. (A padded batch, not the flattened one SFT uses: with long
    prompts and similar lengths, one flattened row pays attention over the whole row, many times the padding.)
    """
    seqs = [list(p) + list(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    rows, pos = [], []
    for i, (s, p, r) in enumerate(zip(seqs, prompt_ids, response_ids)):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        rows += [i] * len(r)
        pos += range(len(p) - 1, len(p) - 1 + len(r))
    rows_t, pos_t = torch.tensor(rows, dtype=torch.long), torch.tensor(pos, dtype=torch.long)
    return ids.to(device), rows_t.to(device), pos_t.to(device), ids[rows_t, pos_t + 1].to(device)


def _backbone_and_lm_head(model: Any) -> tuple[Any, Any]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def _unflatten(values: torch.Tensor, lengths: Sequence[int]) -> torch.Tensor:
    """Per-answer-token values in flat order → right-padded ``[B, T]``."""
    width = max(1, max(lengths))
    out = values.new_zeros((len(lengths), width))
    s = 0
    for i, n in enumerate(lengths):
        out[i, :n] = values[s:s + n]
        s += n
    return out


def sequence_logprobs(model: Any, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                      temperature: float, autocast: Any = None, with_entropy: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs ``[B, T]`` of each answer token under ``softmax(logits / temperature)`` (right-padded with 0),
    from one forward; optionally the per-token entropy (no gradient). Gradients flow when enabled."""
    from contextlib import nullcontext

    from alignloop.losses import entropy_from_logits, token_logprobs

    device = next(model.parameters()).device
    ids, rows, pos, targets = _answer_index(prompt_ids, response_ids, _pad_id(model), device)
    backbone, lm_head = _backbone_and_lm_head(model)
    with (autocast or nullcontext()):
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
        # the LM head only where an answer token is predicted: over SmolLM2's 49k vocab it is costly
        logits = lm_head(hidden[rows, pos])
    logits = logits.float() / temperature
    lp = token_logprobs(logits, targets)
    ent = None
    if with_entropy:
        with torch.no_grad():
            ent = _unflatten(entropy_from_logits(logits.detach()), [len(r) for r in response_ids])
    return _unflatten(lp, [len(r) for r in response_ids]), ent


def _pad_id(model: Any) -> int:
    pad = getattr(model.config, "pad_token_id", None)
    return int(pad) if pad is not None else 0


def critic_parts(critic: Any) -> tuple[Any, Any]:
    """(backbone, score head) of a sequence-classification model (plain or peft-wrapped)."""
    base = critic.get_base_model() if hasattr(critic, "get_base_model") else critic
    prefix = getattr(base, "base_model_prefix", "model")
    backbone = getattr(base, prefix, None) or base.model
    head = getattr(base, "score", None) or getattr(base, "classifier", None)
    if head is None:
        raise TypeError(f"{type(base).__name__} has no score head")
    return backbone, head


def sequence_values(critic: Any, prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]],
                    autocast: Any = None) -> torch.Tensor:
    """Critic values ``[B, T]``: V at the state before each answer token (the score head on every position)."""
    from contextlib import nullcontext

    device = next(critic.parameters()).device
    ids, rows, pos, _ = _answer_index(prompt_ids, response_ids, _pad_id(critic), device)
    backbone, head = critic_parts(critic)
    with (autocast or nullcontext()):
        hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state
        v = head(hidden[rows, pos]).squeeze(-1)
    return _unflatten(v.float(), [len(r) for r in response_ids])
