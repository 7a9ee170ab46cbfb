"""Reward models (``alignloop reward train | eval | score``): turn preference labels into a number.

Training, top to bottom: read pairs (or rankings, expanded to their K·(K-1)/2 pairs) → group the pairs of one
prompt into one *unit* (its answers are scored once, after one shared copy of the prompt, and its pairs always
land in the same micro-batch: the InstructGPT recipe) → tokenise once (cached) → optionally fit the head on frozen
backbone features (``--freeze-backbone`` stops there; ``--warm-start`` goes on) → fine-tune (full or ``--lora``)
with the Bradley-Terry loss ``-log σ(r_w - r_l - m)``, each pair weighted (a ranking's pairs share weight 1:
1/C(K,2) each with ``--ties equal``, 1/(pairs kept) when its ties are skipped; 0 for skipped tied pairs) and the
loss normalised by the step's total weight → normalise scores to mean 0 / std 1 on a reference set → save a plain
transformers folder + ``alignloop_reward.json`` → report dev accuracy.

``--ensemble N`` trains N heads on one backbone, each on its own Poisson(1) bootstrap resample of the units
(bagging), so their spread is a usable uncertainty for active learning.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Sequence

import torch

from alignloop.core.errors import DataError, ModelError
from alignloop.core.files import write_json
from alignloop.core.paths import cache_dir
from alignloop.data.batching import SkipReport, batches, cached_examples, file_fingerprint
from alignloop.data.readers import read_preferences, read_records, read_rows, write_jsonl
from alignloop.data.records import Preference, PromptCompletion, PromptRecord
from alignloop.evaluate import metrics
from alignloop.evaluate.metrics import expected_calibration_error  # noqa: F401  (its old place)
from alignloop.losses import bradley_terry_losses
from alignloop.models.load import disable_dropout, pick_precision
from alignloop.models.reward_model import (
    Group,
    RewardModel,
    build_reward_model,
    load_reward_model,
    save_reward_model,
    token_budget_batches,
)
from alignloop.trainers import engine
from alignloop.trainers.config import RewardEvalConfig, RewardScoreConfig, RewardTrainConfig

# --------------------------------------------------------------------------------------------------
# Data: preference pairs grouped by prompt into units
# --------------------------------------------------------------------------------------------------


@dataclass
class Unit:
    """One prompt, its distinct answers, and the labelled pairs among them."""

    group: Group
    better: list[int]  # index into group.answers of each pair's chosen answer
    worse: list[int]
    weight: list[float]
    margin: list[float]
    tie: list[bool]
    answer_chars: list[int]
    turns: int
    where: str = ""

    @property
    def n_pairs(self) -> int:
        return len(self.better)


def make_units(prefs: Sequence[Preference], rm: RewardModel, max_length: int, policy: str,
               use_margin: bool = True, margin_scale: float = 1.0) -> tuple[list[Unit], SkipReport]:
    """Group pairs by prompt (rankings by their group id; plain pairs each on their own) and tokenise each
    prompt and distinct answer once."""
    report = SkipReport()
    keyed: dict[Any, list[Preference]] = {}
    for i, p in enumerate(prefs):
        key = ("group", p.meta["group"]) if "group" in p.meta else ("pair", i)
        keyed.setdefault(key, []).append(p)
    units = []
    for n, members in enumerate(keyed.values()):
        answers: list[str] = []
        pos: dict[str, int] = {}
        for p in members:
            for a in (p.chosen, p.rejected):
                if a not in pos:
                    pos[a] = len(answers)
                    answers.append(a)
        first = members[0]
        where = first.meta.get("_where", "")
        first.prompt._where = where  # type: ignore[attr-defined]  # for fit_length's messages
        g = rm.encode(first.prompt, answers, n, max_length, report, policy)
        if g is None:
            continue
        units.append(Unit(
            g, [pos[p.chosen] for p in members], [pos[p.rejected] for p in members],
            [float(p.meta.get("weight", 1.0)) for p in members],
            [float(p.margin) * margin_scale if (use_margin and p.margin is not None) else 0.0 for p in members],
            [bool(p.tie) for p in members], [len(a) for a in answers],
            sum(1 for m in first.prompt.messages if m["role"] == "user"), where))
    return units, report


def load_units(path: str, rm: RewardModel, max_length: int, policy: str, limit: int | None,
               use_margin: bool = True, margin_scale: float = 1.0, run: engine.Run | None = None,
               ties: str = "skip") -> tuple[list[Unit], SkipReport, int]:
    """Read and tokenise once; cached on disk keyed by the file, tokenizer, length and tie settings (``ties``:
    how rankings expand, see ``read_preferences``)."""

    def build() -> dict[str, Any]:
        prefs = read_preferences(path, limit=limit, ties=ties)
        units, report = make_units(prefs, rm, max_length, policy, use_margin, margin_scale)
        return {"units": units, "report": report, "n": len(prefs)}

    # -2: ranking pairs are weighted by the pairs kept (#17.8)
    key = ("reward-units-2", file_fingerprint(path), rm.info.backbone, rm.tokenizer.name_or_path, len(rm.tokenizer),
           max_length, policy, rm.info.chat_template, limit, use_margin, margin_scale, ties)
    cached = cached_examples(key, cache_dir("tokens"), build, run.is_main if run else None)
    return cached["units"], cached["report"], cached["n"]


def bootstrap_weights(n_units: int, n_heads: int, seed: int) -> torch.Tensor:
    """``[n_units, n_heads]`` Poisson(1) resample counts (bagging) for an ensemble; all ones for one head."""
    if n_heads == 1:
        return torch.ones(n_units, 1)
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.poisson(torch.ones(n_units, n_heads), generator=g)


def pair_tensors(units: Sequence[Unit], boot: torch.Tensor, offsets: Sequence[int], tie_mode: str):
    """Flat pair indices (into the stacked answers of ``units``) and per-head weights ``[n_pairs, n_heads]``."""
    better, worse, w, m, t = [], [], [], [], []
    for u, off, b in zip(units, offsets, boot):
        better += [off + i for i in u.better]
        worse += [off + j for j in u.worse]
        for wt, tie in zip(u.weight, u.tie):
            w.append(b * (0.0 if (tie and tie_mode == "skip") else wt))
        m += u.margin
        t += u.tie
    weights = torch.stack(w) if w else torch.zeros(0, boot.shape[-1])
    return (torch.tensor(better), torch.tensor(worse), weights, torch.tensor(m), torch.tensor(t, dtype=torch.bool))


def _offsets(units: Sequence[Unit]) -> list[int]:
    out, k = [], 0
    for u in units:
        out.append(k)
        k += len(u.group.answers)
    return out


def unit_loss(raw: torch.Tensor, units: Sequence[Unit], boot: torch.Tensor, tie_mode: str,
              denom: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted BT loss of one micro-batch, divided by the step's total weight per head, averaged over heads.
    ``raw`` is ``[n_answers, n_heads]``. Returns (loss for backward, per-head weighted loss sums)."""
    better, worse, w, m, t = pair_tensors(units, boot, _offsets(units), tie_mode)
    w = w.to(raw.device)
    losses = bradley_terry_losses(raw[better], raw[worse], m.to(raw.device)[:, None], t.to(raw.device)[:, None],
                                  tie_mode)  # [n_pairs, n_heads]
    sums = (w * losses).sum(0)
    return (sums / denom.clamp(min=1e-12)).mean(), sums.detach()


# --------------------------------------------------------------------------------------------------
# Frozen-backbone features and head fitting
# --------------------------------------------------------------------------------------------------


def features(rm: RewardModel, units: Sequence[Unit], key_parts: Sequence[Any], autocast: Any, batch_size: int,
             log: Any = print, is_main: bool | None = None) -> list[torch.Tensor]:
    """The head's input for every answer (last-token or answer-mean states, per ``rm.info.pooling``), computed once
    and cached (written by the main process): ``[n_answers, n_layers, d]`` per unit for causal backbones (every
    layer's output through the final norm, float16: the forward costs the same, and the best layer to cut the
    backbone at is then chosen on dev for free), ``[n_answers, d]`` for encoders."""
    all_layers = rm.info.backbone == "causal"
    key = ("reward-features-2", all_layers, *key_parts) if rm.info.pooling == "last" else \
        ("reward-features-3", all_layers, rm.info.pooling, *key_parts)
    return cached_examples(key, cache_dir("features"),
                           lambda: _compute_features(rm, units, all_layers, autocast, batch_size, log), is_main)


def _compute_features(rm: RewardModel, units: Sequence[Unit], all_layers: bool, autocast: Any, batch_size: int,
                      log: Any) -> list[torch.Tensor]:
    was = rm.training
    rm.eval()
    out: list[torch.Tensor | None] = [None] * len(units)
    order = token_budget_batches([len(u.group) for u in units], batch_size, 4096)
    t0, done = time.time(), 0
    with torch.no_grad():
        for b, idx in enumerate(order):
            h = rm.hidden([units[i].group for i in idx], autocast, all_layers=all_layers).cpu()
            k = 0
            for i in idx:
                n = len(units[i].group.answers)
                out[i] = h[k:k + n].to(torch.float16 if all_layers else torch.float32)  # [n, (layers,) d]
                k += n
            done += len(idx)
            if b % 20 == 0:
                log(f"features: {done}/{len(units)} prompts, {time.time() - t0:.0f} s")
    rm.train(was)
    return out  # type: ignore[return-value]


def fit_head(head: torch.nn.Linear, feats: Sequence[torch.Tensor], units: Sequence[Unit], boot: torch.Tensor,
             tie_mode: str, epochs: int, lr: float, weight_decay: float, seed: int,
             dev: tuple[Sequence[torch.Tensor], Sequence[Unit]] | None = None, log: Any = print) -> dict[str, float]:
    """The head alone on cached features: weighted BT loss + ``weight_decay``/2 · |w|², full-batch L-BFGS (at most
    ``epochs`` iterations, first step ``lr``) on *standardised* features, each divided by the RMS of its
    chosen-minus-rejected differences, so that one L2 strength suits every layer and pooling; the scaling is folded
    back into the head's weights. Convex for each head: an L2-regularised logistic regression on feature
    differences, as scikit-learn's ``LogisticRegression`` solves it, but written here because the BT loss carries
    pair weights (ensemble bootstrap, a ranking's share), margins and ties that it does not take.
    Returns the final train loss and, with ``dev``, dev accuracy."""
    x = torch.cat(list(feats), 0).float()
    better, worse, w, m, t = pair_tensors(units, boot, _offsets(units), tie_mode)
    denom = w.sum(0)
    diff = x[better] - x[worse]
    scale = diff.pow(2).mean(0).sqrt().clamp(min=1e-6) if len(diff) else torch.ones(x.shape[1])
    xs = x / scale
    torch.manual_seed(seed)
    weight = (head.weight.detach().float() * scale).clone().requires_grad_(True)
    opt = torch.optim.LBFGS([weight], lr=lr, max_iter=epochs, history_size=20, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def objective() -> torch.Tensor:
        raw = xs @ weight.T
        losses = bradley_terry_losses(raw[better], raw[worse], m[:, None], t[:, None], tie_mode)
        return ((w * losses).sum(0) / denom.clamp(min=1e-12)).mean() + 0.5 * weight_decay * weight.pow(2).sum()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    opt.step(closure)
    final = weight.detach() / scale
    with torch.no_grad():
        loss = objective()
        head.weight.copy_(final.to(head.weight.dtype))
    out = {"head/train_loss": float(loss)}
    if dev is not None:
        dfeats, dunits = dev
        raws = [f.float() @ final.T for f in dfeats]
        out["head/dev_accuracy"] = pair_metrics(raws, dunits)["accuracy"]
    return out


# --------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------


def bootstrap_ci(values: Sequence[float], resamples: int = 1000, seed: int = 0, level: float = 0.95) -> list[float]:
    """``evaluate.metrics.bootstrap_ci`` in the form ``reward eval`` reports it (1,000 resamples, 4 decimals)."""
    return [round(x, 4) for x in metrics.bootstrap_ci(values, seed=seed, n_resamples=resamples, level=level)]


def _bucket(value: int, edges: Sequence[int], labels: Sequence[str]) -> str:
    for e, label in zip(edges, labels):
        if value < e:
            return label
    return labels[-1]


def pair_metrics(raws: Sequence[torch.Tensor], units: Sequence[Unit], info: Any = None, resamples: int = 0,
                 seed: int = 0) -> dict[str, Any]:
    """Accuracy (r_w > r_l; equal scores count ½; tied labels left out), mean margin, ECE of σ(raw_w - raw_l),
    the length baseline on the same pairs, a bootstrap CI, by-bucket accuracy and the ensemble spread."""
    import numpy as np

    hits, margins, probs, longer, rows = [], [], [], [], []
    spread = []
    offset = torch.tensor(info.offset if info else 0.0)
    scale = torch.tensor(info.scale if info else 1.0)
    for u, raw in zip(units, raws):
        norm = (raw.float() - offset) / scale
        for bi, wi, tie in zip(u.better, u.worse, u.tie):
            if tie:
                continue
            d_raw = float(raw[bi].mean() - raw[wi].mean())
            d = float(norm[bi].mean() - norm[wi].mean())
            hits.append(1.0 if d > 0 else 0.5 if d == 0 else 0.0)
            margins.append(d)
            probs.append(1.0 / (1.0 + math.exp(-d_raw)))
            lb, lw = u.answer_chars[bi], u.answer_chars[wi]
            longer.append(1.0 if lb > lw else 0.5 if lb == lw else 0.0)
            rows.append((len(u.group.prompt_ids), u.turns))
        if raw.shape[-1] > 1:
            spread += norm.std(-1, unbiased=False).tolist()
    n = len(hits)
    acc = float(np.mean(hits)) if n else float("nan")
    longer_acc = float(np.mean(longer)) if n else float("nan")
    out: dict[str, Any] = {
        "accuracy": round(acc, 4), "n_pairs": n, "mean_margin": round(float(np.mean(margins)), 4) if n else None,
        "ece": round(metrics.expected_calibration_error(probs, [h >= 1.0 for h in hits]), 4) if n else None,
        "length_baseline": round(max(longer_acc, 1 - longer_acc), 4) if n else None,
        "length_baseline_rule": ("longer wins" if longer_acc >= 0.5 else "shorter wins") if n else None,
        "n_ties_skipped": sum(sum(u.tie) for u in units),
    }
    if resamples:
        out["accuracy_ci95"] = bootstrap_ci(hits, resamples, seed)
    if n:
        out["beats_length_by"] = round(acc - out["length_baseline"], 4)
        by_len: dict[str, list[float]] = {}
        by_turn: dict[str, list[float]] = {}
        for h, (plen, turns) in zip(hits, rows):
            by_len.setdefault(_bucket(plen, (128, 256, 512), ("<128", "128-255", "256-511", "512+")), []).append(h)
            by_turn.setdefault(_bucket(turns, (2, 3, 4), ("1", "2", "3", "4+")), []).append(h)
        out["by_prompt_tokens"] = {k: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)}
                                   for k, v in sorted(by_len.items())}
        out["by_turns"] = {k: {"accuracy": round(float(np.mean(v)), 4), "n": len(v)}
                           for k, v in sorted(by_turn.items())}
    if spread:
        out["mean_spread"] = round(float(np.mean(spread)), 4)
    return out


def normalisation(raws: torch.Tensor) -> tuple[Any, Any]:
    """Per-head offset (mean) and scale (std) of raw scores ``[n, n_heads]``: floats for one head, lists else."""
    mean = raws.float().mean(0)
    std = raws.float().std(0, unbiased=False).clamp(min=1e-6)
    if raws.shape[-1] == 1:
        return float(mean[0]), float(std[0])
    return [float(v) for v in mean], [float(v) for v in std]


# --------------------------------------------------------------------------------------------------
# reward train
# --------------------------------------------------------------------------------------------------


def add_score_lora(rm: RewardModel, cfg: RewardTrainConfig) -> Any:
    """LoRA adapters on the backbone's layers (peft, task-agnostic: the head is read by hand, not through
    peft's sequence-classification wrapper), with the head itself fully trainable."""
    from peft import LoraConfig, get_peft_model

    names = {n.split(".")[-1] for n, _ in rm.backbone.named_modules()}
    present = [t for t in cfg.lora_targets if t in names]
    if not present:
        raise ModelError(f"none of the LoRA target modules {cfg.lora_targets} exist in this model "
                         f"(it has e.g. {sorted(names)[:12]})")
    lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout, target_modules=present)
    peft_model = get_peft_model(rm.model, lora)
    rm.head.weight.requires_grad_(True)
    return peft_model


def describe_recipe(cfg: RewardTrainConfig, rm: RewardModel) -> str:
    """One line naming what the run trains: frozen or fine-tuned backbone, the pooling, and which layer the head
    reads (chosen on ``--dev-data``, given by ``--backbone-layers``, or the last)."""
    if cfg.freeze_backbone:
        mode = "frozen backbone (head fit on cached features)"
    else:
        mode = ("LoRA" if cfg.lora else "full") + " fine-tuning" + (
            " after a frozen-feature head fit" if cfg.warm_start else "")
    if rm.info.backbone != "causal":
        return f"recipe: {mode}, sentence-encoder mean pooling"
    pooling = "answer-mean pooling" if cfg.pooling == "mean" else "last-token pooling"
    n = len(rm.backbone.layers)
    head_fit = cfg.freeze_backbone or cfg.warm_start
    if cfg.backbone_layers and head_fit:
        layers = f"backbone cut at layer {min(cfg.backbone_layers, n)} of {n} (--backbone-layers)"
    elif cfg.freeze_backbone and cfg.dev_data:
        layers = f"layer chosen on --dev-data among {max(1, n // 3)}..{n}"
    elif cfg.freeze_backbone:
        layers = f"last layer ({n} of {n}; with --dev-data, dev would choose among {max(1, n // 3)}..{n})"
    else:
        layers = f"all {n} layers"
    return f"recipe: {mode}, {pooling}, {layers}"


def load_train_and_dev(cfg: RewardTrainConfig, rm: RewardModel, r: engine.Run) -> tuple[list[Unit], list[Unit] | None]:
    """The training units (reported, never empty) and the dev units, if any."""
    units, report, n_rows = load_units(cfg.data, rm, cfg.max_length, cfg.truncation, cfg.limit, cfg.use_margin,
                                       cfg.margin_scale, r, cfg.ties)
    r.log(f"data: {cfg.data}: {report.summary(n_rows)}; {sum(u.n_pairs for u in units)} pairs in {len(units)} prompts")
    if not units:
        raise DataError("no usable rows (all were skipped; see the report above)", path=cfg.data)
    if not cfg.dev_data:
        return units, None
    # dev pairs are never dropped: over-long prompts are cut from the left, as in `reward eval`
    dev, dev_report, n_dev = load_units(cfg.dev_data, rm, cfg.max_length, "score", None, cfg.use_margin,
                                        cfg.margin_scale, r)
    r.log(f"dev data: {cfg.dev_data}: {dev_report.summary(n_dev)}")
    return units, dev


def fit_head_on_features(cfg: RewardTrainConfig, r: engine.Run, rm: RewardModel, units: list[Unit],
                         dev: list[Unit] | None, boot: torch.Tensor, autocast: Any):
    """The head alone on features of the frozen backbone (``--freeze-backbone``, ``--warm-start``); for a causal
    backbone also the layer to cut it at. Returns (head metrics, training features, dev features) as the head
    read them."""
    if cfg.backbone_layers and rm.info.backbone == "causal" and cfg.backbone_layers < len(rm.backbone.layers):
        # the layer is given: cut the backbone first, so the feature forward runs through those layers only
        rm.truncate_layers(cfg.backbone_layers)
    cut = [len(rm.backbone.layers)] if rm.info.backbone == "causal" else []
    key = [str(cfg.model), file_fingerprint(cfg.data), cfg.max_length, cfg.truncation, cfg.limit, r.precision,
           cfg.chat_template, *cut]
    if cfg.ties == "equal":  # a ranking's tied pairs are units' pairs then: its answers may come in another order
        key.append("ties-equal")
    feats = features(rm, units, key, autocast, cfg.batch_size, r.log, r.is_main)
    dev_feats = None
    if dev is not None:
        dkey = [str(cfg.model), file_fingerprint(cfg.dev_data), cfg.max_length, "score", r.precision,
                cfg.chat_template, *cut]
        dev_feats = features(rm, dev, dkey, autocast, cfg.batch_size, r.log, r.is_main)
    if feats[0].dim() == 3:  # causal: every layer's features; choose how many layers to keep
        head_metrics, feats, dev_feats = choose_layer(cfg, r, rm, units, dev, boot, feats, dev_feats)
    else:
        head_metrics = fit_head(rm.head, feats, units, boot, cfg.ties, cfg.head_epochs, cfg.head_learning_rate,
                                cfg.head_weight_decay, cfg.seed, (dev_feats, dev) if dev_feats is not None else None,
                                r.log)
    r.log(f"head on frozen features: {head_metrics}")
    r.metrics.write(0, head_metrics)
    return head_metrics, feats, dev_feats


def choose_layer(cfg: RewardTrainConfig, r: engine.Run, rm: RewardModel, units: list[Unit], dev: list[Unit] | None,
                 boot: torch.Tensor, feats: list[torch.Tensor], dev_feats: list[torch.Tensor] | None):
    """Fit the head on the features of each candidate layer and keep the best on dev: every layer from a third of
    the depth up with ``--freeze-backbone`` and dev data, else the given ``--backbone-layers`` or the last. The
    backbone is cut after the chosen layer. Returns (head metrics, training features, dev features) of it."""
    n_layers = feats[0].shape[1]
    if cfg.backbone_layers:
        candidates = [min(cfg.backbone_layers, n_layers)]
    elif dev_feats is not None and cfg.freeze_backbone:
        candidates = list(range(max(1, n_layers // 3), n_layers + 1))  # tuned on dev only
    else:
        candidates = [n_layers]
    best = None
    for k in candidates:
        head = torch.nn.Linear(rm.hidden_size, cfg.ensemble, bias=False)
        with torch.no_grad():
            head.weight.copy_(rm.head.weight)
        tf = [f[:, k - 1].float() for f in feats]
        df = [f[:, k - 1].float() for f in dev_feats] if dev_feats is not None else None
        m = fit_head(head, tf, units, boot, cfg.ties, cfg.head_epochs, cfg.head_learning_rate,
                     cfg.head_weight_decay, cfg.seed, (df, dev) if df is not None else None, r.log)
        if len(candidates) > 1:
            r.log(f"  head on layer {k}: {m}")
        score = m.get("head/dev_accuracy", 0.0)
        if best is None or score > best[0]:
            best = (score, k, head, m, tf, df)
    _, k, head, head_metrics, tf, df = best  # type: ignore[misc]
    with torch.no_grad():
        rm.head.weight.copy_(head.weight)
    if k < n_layers:
        rm.truncate_layers(k)
    return {**head_metrics, "head/backbone_layers": k}, tf, df


def accumulate_step(cfg: RewardTrainConfig, r: engine.Run, rm: Any, units: list[Unit], boot: torch.Tensor,
                    micro: list[tuple[int, list[int]]], autocast: Any) -> dict[str, Any]:
    """Forward and backward of one step's micro-batches; the step's sums over all processes.

    Each process takes every world-th unit of each global micro-batch. The loss is normalised by the whole step's
    pair weight (all micro-batches, all processes): every process knows the global batches, so no communication
    is needed for it."""
    world, rank = r.world, r.rank
    step_idx = [i for _, b in micro for i in b]
    step_units = [units[i] for i in step_idx]
    _, _, w_all, _, _ = pair_tensors(step_units, boot[step_idx], _offsets(step_units), cfg.ties)
    denom = w_all.sum(0).to(r.device)
    loss_sum = torch.zeros(cfg.ensemble)
    correct, n_pairs, seen_tokens, margin_sum = 0.0, 0, 0, 0.0
    for k, (_, glob) in enumerate(micro):
        idx = glob[rank::world]
        empty = not idx
        if empty:  # this process's share is empty: a zero-weight forward keeps DDP's all-reduce in step
            idx = glob[:1]
        batch = [units[i] for i in idx]
        sync = k == len(micro) - 1
        with r.accelerator.no_sync(rm) if (not sync and world > 1) else nullcontext():
            raw = rm([u.group for u in batch], autocast)
            loss, sums = unit_loss(raw, batch, boot[idx], cfg.ties, denom)
            # DDP averages gradients over processes; the loss is already a share of the global sum
            r.accelerator.backward(loss * (0.0 if empty else world))
        if empty:
            continue
        loss_sum += sums.cpu()
        with torch.no_grad():
            b_i, w_i, _, _, t = pair_tensors(batch, boot[idx], _offsets(batch), cfg.ties)
            d = (raw[b_i] - raw[w_i]).mean(-1)[~t]
            correct += float((d > 0).float().sum())
            margin_sum += float(d.sum())
            n_pairs += int((~t).sum())
        seen_tokens += sum(len(u.group) for u in batch)
    loss_sum = torch.tensor([r.reduce_sum(float(v)) for v in loss_sum])
    return {"loss": float((loss_sum / denom.cpu().clamp(min=1e-12)).mean()), "correct": r.reduce_sum(correct),
            "margin_sum": r.reduce_sum(margin_sum), "n_pairs": int(r.reduce_sum(n_pairs)),
            "tokens": int(r.reduce_sum(seen_tokens))}


def fine_tune(cfg: RewardTrainConfig, r: engine.Run, rm: RewardModel, units: list[Unit], dev: list[Unit] | None,
              boot: torch.Tensor, autocast: Any) -> tuple[RewardModel, int, Any]:
    """Backbone (full or LoRA) and head with the weighted Bradley-Terry loss. Returns (the reward model, the
    steps run, the peft model or None)."""
    peft_model = add_score_lora(rm, cfg) if cfg.lora else None  # the head stays fully trainable
    if cfg.gradient_checkpointing:
        rm.backbone.gradient_checkpointing_enable()
    # global micro-batches of batch_size x world units; each process takes its share (accumulate_step)
    make_epoch = lambda e: batches(len(units), cfg.batch_size * r.world, cfg.seed, e)  # noqa: E731
    loop = engine.start_loop(r, rm, make_epoch, "reward")
    model, total = loop.model, loop.total
    for step in range(loop.start + 1, total + 1):
        micro = [next(loop.stream) for _ in range(cfg.grad_accum)]
        sums = accumulate_step(cfg, r, model, units, boot, micro, autocast)
        engine.check_finite(r, sums["loss"], step)
        grad_norm = engine.clip_and_step(r, model, loop.optimizer, loop.scheduler, cfg.max_grad_norm)
        dt = loop.timer.lap()
        n_pairs = max(sums["n_pairs"], 1)
        values = {"loss": sums["loss"], "rewards/accuracy": sums["correct"] / n_pairs,
                  "rewards/margins": sums["margin_sum"] / n_pairs, "grad_norm": grad_norm,
                  "learning_rate": loop.scheduler.get_last_lr()[0], "epoch": micro[-1][0],
                  "pairs_per_s": sums["n_pairs"] / max(dt, 1e-9), "tokens_per_s": sums["tokens"] / max(dt, 1e-9)}
        if dev is not None and cfg.eval_every and step % cfg.eval_every == 0:
            ev = _eval_units(r.accelerator.unwrap_model(model), dev, cfg.batch_size, autocast)
            values.update({f"eval/{k}": ev[k] for k in ("accuracy", "mean_margin")})
        if step % cfg.log_every == 0 or step == total:
            r.metrics.write(step, values)
        loop.bar.set_postfix(loss=f"{sums['loss']:.4f}", acc=f"{values['rewards/accuracy']:.2f}")
        loop.bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step != total:
            engine.save_checkpoint(r, step, model, loop.optimizer, loop.scheduler)
    loop.bar.close()
    engine.save_checkpoint(r, total, model, loop.optimizer, loop.scheduler)
    return r.accelerator.unwrap_model(model), total, peft_model


def normalise_on_reference(cfg: RewardTrainConfig, r: engine.Run, rm: RewardModel, units: list[Unit],
                           train_feats: list[torch.Tensor] | None) -> None:
    """Set the saved offset and scale so that scores are mean 0 / std 1 on ``norm_samples`` reference completions
    (``--reference-data``, else the training answers: from their cached features when the backbone is frozen)."""
    ref_units = units
    if cfg.reference_data:
        ref_units, _, _ = load_units(cfg.reference_data, rm, cfg.max_length, "score", None, run=r)
    pick = list(range(len(ref_units)))
    random.Random(cfg.seed).shuffle(pick)
    chosen_units, n_answers = [], 0
    for i in pick:
        if n_answers >= cfg.norm_samples:
            break
        chosen_units.append(i)
        n_answers += len(ref_units[i].group.answers)
    if cfg.freeze_backbone and not cfg.reference_data and train_feats is not None:
        ref_raw = torch.cat([train_feats[i] @ rm.head.weight.detach().float().T for i in chosen_units], 0)
    else:
        # fp32, as `reward score` and `reward eval` compute by default, so normalised scores are mean 0 / std 1
        ref_raw = torch.cat(rm.score_groups([ref_units[i].group for i in chosen_units], cfg.batch_size), 0)
    rm.info.offset, rm.info.scale = normalisation(ref_raw)
    rm.info.normalised_on = f"{cfg.reference_data or cfg.data}: {len(ref_raw)} completions"


def dev_report(cfg: RewardTrainConfig, rm: RewardModel, dev: list[Unit], dev_feats: list[torch.Tensor] | None,
               autocast: Any) -> dict[str, Any]:
    """The final model's dev accuracy, mean margin, length baseline and ECE (``eval/*``)."""
    if cfg.freeze_backbone and dev_feats is not None:  # the backbone did not change: reuse its features
        dev_raws = [f @ rm.head.weight.detach().float().T for f in dev_feats]
    else:
        dev_raws = rm.score_groups([u.group for u in dev], cfg.batch_size, autocast=autocast)
    m = pair_metrics(dev_raws, dev, rm.info)
    return {f"eval/{k}": m[k] for k in ("accuracy", "mean_margin", "length_baseline", "ece")}


def run(cfg: RewardTrainConfig) -> Path:
    r = engine.setup(cfg)
    t_start = time.time()
    rm = build_reward_model(cfg.model, cfg.backbone, cfg.ensemble, cfg.seed, cfg.max_length, cfg.chat_template,
                            cfg.pooling)
    disable_dropout(rm.model)
    r.log(describe_recipe(cfg, rm))
    units, dev = load_train_and_dev(cfg, rm, r)
    boot = bootstrap_weights(len(units), cfg.ensemble, cfg.seed)
    autocast = r.autocast()

    # ---- 1. the head on frozen features (freeze_backbone, warm_start) -------------------------------
    head_metrics: dict[str, float] = {}
    train_feats = dev_feats = None
    if cfg.freeze_backbone or cfg.warm_start:
        head_metrics, train_feats, dev_feats = fit_head_on_features(cfg, r, rm, units, dev, boot, autocast)

    # ---- 2. fine-tuning ---------------------------------------------------------------------------
    total, peft_model = 0, None
    if not cfg.freeze_backbone:
        rm, total, peft_model = fine_tune(cfg, r, rm, units, dev, boot, autocast)

    # ---- 3. normalise on a reference set, save, report -------------------------------------------
    rm.eval()
    normalise_on_reference(cfg, r, rm, units, train_feats)
    trained_with = "frozen backbone" if cfg.freeze_backbone else \
        ("lora" if cfg.lora else "full") + (" after a frozen-feature warm start" if cfg.warm_start else "")
    rm.info.extra.update({"ensemble": "bootstrap heads" if cfg.ensemble > 1 else "single head",
                          "trained_with": trained_with, "ties": cfg.ties, "steps": total})
    final = r.output / engine.FINAL
    r.accelerator.wait_for_everyone()
    summary: dict[str, Any] = {"train_seconds": round(time.time() - t_start, 1), **head_metrics}
    if dev is not None:
        summary.update(dev_report(cfg, rm, dev, dev_feats, autocast))
    if r.is_main:
        save_reward_model(rm, final, peft_model)
        cfg.save(final)
        r.metrics.write(max(total, 0), summary)
        r.log(f"saved {final}: {json.dumps(summary)}")
    r.metrics.close()
    return final


run_train = run  # the name of ``run`` before every trainer's runner was called ``run``


def _eval_units(rm: RewardModel, units: Sequence[Unit], batch_size: int, autocast: Any) -> dict[str, Any]:
    return pair_metrics(rm.score_groups([u.group for u in units], batch_size, autocast=autocast), units, rm.info)


# --------------------------------------------------------------------------------------------------
# reward eval / score
# --------------------------------------------------------------------------------------------------


def scoring_autocast(rm: RewardModel, precision: str) -> Any:
    """The trainers' autocast for ``reward eval`` and ``reward score`` (``--precision``), on the model's device."""
    return engine.autocast(pick_precision(precision), next(rm.parameters()).device.type)


def run_eval(cfg: RewardEvalConfig) -> dict[str, Any]:
    t0 = time.time()
    rm = load_reward_model(cfg.model)
    max_length = cfg.max_length or rm.info.max_length
    prefs = read_preferences(cfg.data, limit=cfg.limit)
    units, report = make_units(prefs, rm, max_length, "score")  # never drops a pair
    if report.truncated:
        print(f"eval: {report.truncated} prompts cut from the left to fit max_length={max_length}", file=sys.stderr)
    raws = rm.score_groups([u.group for u in units], cfg.batch_size, autocast=scoring_autocast(rm, cfg.precision))
    result = {"model": str(cfg.model), "data": str(cfg.data),
              **pair_metrics(raws, units, rm.info, cfg.bootstrap, cfg.seed),
              "seconds": round(time.time() - t0, 1)}
    if cfg.output:
        write_json(cfg.output, result, indent=1)
    print(json.dumps(result))
    return result


def run_score(cfg: RewardScoreConfig) -> Path:
    rm = load_reward_model(cfg.model)
    max_length = cfg.max_length or rm.info.max_length
    records = read_records(cfg.data, limit=cfg.limit)
    rows = [row for _, row in zip(range(len(records)), (row for _, row in read_rows(cfg.data)))]
    report = SkipReport()
    groups: list[Group] = []
    sizes: list[int] = []
    for i, rec in enumerate(records):
        if isinstance(rec, PromptCompletion):
            answers = [rec.completion]
        elif isinstance(rec, Preference):
            answers = [rec.chosen, rec.rejected]
        elif (isinstance(rec, PromptRecord) and isinstance(rec.meta.get("completions"), list)
              and rec.meta["completions"]):
            answers = [str(c) for c in rec.meta["completions"]]
        else:
            raise DataError(f"cannot score {type(rec).__name__} rows: need prompt+completion, prompt+completions "
                            "or preference columns", path=rec.meta.get("_where"))
        # one group per answer: each answer is scored on the prompt as rm:, the reward judge and eval score it,
        # whatever the other answers of the row (a shared group cuts the prompt to fit the longest answer)
        sizes.append(len(answers))
        groups += [rm.encode(rec.prompt, [a], i, max_length, report, "score") for a in answers]  # type: ignore
    if report.truncated:
        print(f"score: {report.truncated} prompts cut from the left to fit max_length={max_length}", file=sys.stderr)
    flat = rm.score_groups(groups, cfg.batch_size, autocast=scoring_autocast(rm, cfg.precision))
    ends = list(accumulate(sizes))  # row k's answers are flat[ends[k] - sizes[k]:ends[k]]
    raws = [torch.cat(flat[e - n:e], 0) for e, n in zip(ends, sizes)]
    out_rows = []
    ensemble = rm.info.num_heads > 1
    for rec, row, raw in zip(records, rows, raws):
        norm = rm.normalise(raw.float())
        mean = norm.mean(-1).tolist()
        std = norm.std(-1, unbiased=False).tolist() if ensemble else [0.0] * len(mean)
        row = dict(row)
        if isinstance(rec, PromptCompletion):
            row["reward"] = mean[0]
            if ensemble:
                row["reward_std"] = row["uncertainty"] = std[0]
        elif isinstance(rec, Preference):
            row["chosen_reward"], row["rejected_reward"] = mean
            if ensemble:
                row["chosen_reward_std"], row["rejected_reward_std"] = std
                row["uncertainty"] = max(std)
        else:
            row["rewards"] = mean
            if ensemble:
                row["rewards_std"] = std
                row["uncertainty"] = max(std)
        out_rows.append(row)
    path = write_jsonl(cfg.output, out_rows)
    print(f"scored {len(out_rows)} rows → {path}", file=sys.stderr)
    return path
