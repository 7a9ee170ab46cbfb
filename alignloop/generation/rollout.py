"""RL rollouts: sample answers with the current policy, then score the sampled tokens with one forward per model.

Answers are sampled (``generate_rollout``, through ``generation.sampling``), then scored by one forward pass per
model (policy, reference, critic) over prompt + answer, which gives the log-probs of the sampled tokens under
``softmax(logits / T)``, the distribution they were sampled from (RL stages sample with top-p = 1 and top-k = 0
so the two agree exactly). Re-scoring in a plain forward rather than keeping generate's scores is what PPO needs
anyway: the old log-probs must come from the same computation as the training forward, or the first ratio is not
1 (the "N implementation details" note). ``answer_logprobs`` serves evaluation's KL estimate from the same
forward. An optional vLLM backend samples on a GPU when vLLM is installed (not exercised on the CPU development
machine).

The sampling names (``SamplingParams``, ``sample_ids``, ...) and ``run_generate`` are re-exported here for callers
of ``alignloop.rollout``, the old name of this module.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from alignloop.generation.commands import run_generate  # noqa: F401  (re-exported)
from alignloop.generation.sampling import (  # noqa: F401  (re-exported)
    SamplingParams,
    left_pad,
    pad_responses,
    position_ids_from_mask,
    sample_ids,
    sample_texts,
    truncate_after_stop,
)
from alignloop.models.value import critic_parts


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
    if backend == "vllm":
        return _vllm_rollout(model, tokenizer, prompt_ids, max_new_tokens, temperature)
    t0 = time.perf_counter()
    params = SamplingParams(max_new_tokens, temperature, 1.0, 0)
    sampled = sample_ids(model, tokenizer, prompt_ids, params, batch_size, keep_pad=True)
    responses = [ids for ids, _ in sampled]
    ended = [stopped for _, stopped in sampled]
    texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in responses]
    return Rollout([list(p) for p in prompt_ids], responses, ended, texts, time.perf_counter() - t0)


def _vllm_rollout(model: Any, tokenizer: Any, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int,
                  temperature: float) -> Rollout:
    """Sampling through vLLM (GPU only). The policy's current weights (LoRA merged) are pushed into the vLLM
    engine before each rollout, and its prefix cache emptied; the engine is created once and kept on the model
    object.

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
    """Load the policy's weights into the vLLM engine (LoRA merged for the copy, then unmerged), then empty its
    prefix cache: the KV blocks of shared prompt prefixes were computed with the old weights (TRL does the same)."""
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
        target = getattr(runner, "worker", runner).model_runner.model
        target.load_weights(state.items())
        engine.reset_prefix_cache()
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


@torch.no_grad()
def answer_logprobs(model: Any, tokenizer: Any, prompts: Sequence[Any], answers: Sequence[str],
                    max_prompt_length: int = 512, batch_size: int = 8, mean: bool = False) -> list[float]:
    """Sum of each answer's token log-probs under ``model`` (temperature 1): the prompt through the chat template
    (cut from the left to ``max_prompt_length`` tokens), the answer with its end-of-turn token. ``mean``: divided by
    the answer's token count (the mean log-probability per token)."""
    from alignloop.data.templates import encode_answer, encode_prompt

    prompt_ids = [encode_prompt(tokenizer, p)[-max_prompt_length:] for p in prompts]
    answer_ids = [encode_answer(tokenizer, a) for a in answers]
    out: list[float] = []
    for s in range(0, len(answer_ids), batch_size):
        lp, _ = sequence_logprobs(model, prompt_ids[s:s + batch_size], answer_ids[s:s + batch_size], 1.0)
        sums = lp.sum(1).tolist()  # right-padded with 0: the sum is over the answer's tokens
        out += [x / max(1, len(a)) for x, a in zip(sums, answer_ids[s:s + batch_size])] if mean else sums
    return out
