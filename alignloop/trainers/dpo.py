"""Direct preference optimisation (``alignloop dpo``): DPO, IPO, robust DPO, hinge, SimPO and KTO.

The loop, top to bottom: load the model (+LoRA) → tokenise once (cached) → reference log-probs once, before the
first step (the ``--reference`` model, else the starting model; with LoRA the same weights with the adapter off),
cached on disk → for each step: gradient-accumulated micro-batches of packed pairs → one forward/backward of the
policy → the loss of ``alignloop.losses`` → clip, step, schedule → metrics (``rewards/*``, ``logps/*``), dev
accuracy → final model.

Speed (2 CPU cores or a GPU alike):

* prefix sharing: a pair is one segment ``[prompt, chosen, rejected]``; the rejected tokens attend to the prompt
  but not to the chosen tokens (a ready 4D mask, which transformers passes to sdpa as-is), so the prompt is run
  once per pair instead of twice. Measured on this machine (``benchmarks/dpo_layouts.py``, 8 HH pairs, SmolLM2-135M,
  bf16, forward+backward, under the CPU lock, 2026-11-22): the foundation's ``flatten`` of [prompt+chosen] and
  [prompt+rejected] (one row, mask from position ids) 21.7 s; the same sequences with an explicit 4D mask 26.9 s;
  prefix sharing in one row 11.7 s, in rows of 1024 tokens 10.1 s, of 512 tokens 9.6 s. So prefix sharing with
  packed rows is kept (2.2x faster: 36% fewer tokens, and a smaller dense attention per row, since sdpa on CPU
  computes the whole masked square);
* no compute on padding: pairs are packed first-fit into rows of ``row_tokens``; only row tails are padding;
* the LM head runs only where answer tokens are predicted (``logits_to_keep`` as a per-row position tensor);
* bf16 autocast with fp32 master weights where supported; gradient checkpointing only on request.
"""

from __future__ import annotations

import hashlib
import random
from array import array
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Sequence

import torch

from alignloop.core.errors import DataError
from alignloop.core.files import write_json
from alignloop.core.paths import cache_dir
from alignloop.data.batching import SkipReport, batches, cache_key, cached_examples, file_fingerprint, fit_length
from alignloop.data.readers import public_meta, read_preferences, read_records, write_jsonl
from alignloop.data.records import Preference, Unpaired
from alignloop.data.templates import encode_answer, encode_prompt
from alignloop.losses import dpo_loss, hinge_loss, ipo_loss, kto_loss, robust_dpo_loss, simpo_loss, token_logprobs
from alignloop.trainers import engine
from alignloop.trainers.config import DPOConfig

# --------------------------------------------------------------------------------------------------
# Tokenised examples
# --------------------------------------------------------------------------------------------------


@dataclass
class Segment:
    """One prompt with one or more answers that all attend to it and not to each other.

    A preference pair is ``Segment(prompt, [chosen, rejected])``; a KTO example is ``Segment(prompt, [answer])``.
    """

    prompt_ids: list[int]
    answers: list[list[int]]
    index: int = 0
    weight: float = 1.0
    label: bool = True  # KTO: desirable or not

    def __len__(self) -> int:
        return len(self.prompt_ids) + sum(len(a) for a in self.answers)


def tokenize_pairs(prefs: Sequence[Preference], tok: Any, max_length: int, truncation: str,
                   chat_template: bool = True) -> tuple[list[Segment], SkipReport]:
    """Pairs under the over-long-row policy: prompt + the longer answer must fit ``max_length`` (as in TRL, each
    of prompt+chosen and prompt+rejected is a sequence of at most max_length); the prompt is cut from the left."""
    report = SkipReport()
    out = []
    for i, p in enumerate(prefs):
        where = p.meta.get("_where")
        prompt = encode_prompt(tok, p.prompt, chat_template)
        c, r = encode_answer(tok, p.chosen), encode_answer(tok, p.rejected)
        longer = c if len(c) >= len(r) else r
        fitted = fit_length(prompt, longer, max_length, truncation, report, where)
        if fitted is None:
            continue
        if not fitted[0]:
            report.skip("empty prompt (the first answer token would have no prediction)", where)
            continue
        out.append(Segment(fitted[0], [c, r], index=i, weight=float(p.meta.get("weight", 1.0))))
    return out, report


def tokenize_unpaired(recs: Sequence[Unpaired], tok: Any, max_length: int, truncation: str,
                      chat_template: bool = True) -> tuple[list[Segment], SkipReport]:
    report = SkipReport()
    out = []
    for i, u in enumerate(recs):
        fitted = fit_length(encode_prompt(tok, u.prompt, chat_template), encode_answer(tok, u.completion),
                            max_length, truncation, report, u.meta.get("_where"))
        if fitted is not None and fitted[0]:
            out.append(Segment(fitted[0], [fitted[1]], index=i, label=u.label))
    return out, report


def unpair(prefs: Sequence[Preference]) -> list[Unpaired]:
    """Paired data for KTO: each pair becomes a desirable (chosen) and an undesirable (rejected) example."""
    out = []
    for p in prefs:
        out.append(Unpaired(p.prompt, p.chosen, True, meta=dict(p.meta)))
        out.append(Unpaired(p.prompt, p.rejected, False, meta=dict(p.meta)))
    return out


def kl_segments(segs: list[Segment], seed: int = 0) -> list[Segment]:
    """KTO's KL estimate z0 uses mismatched prompt/answer pairs: example i's prompt with another example's answer.
    As in TRL (shuffle, then shift the answers by one) but over the whole data set, and so that no prompt gets an
    answer written for that same prompt (e.g. the other answer of its own preference pair) where avoidable:
    examples sharing a prompt form a group, the groups and their members are shuffled with ``seed``, and the
    example at position j takes the answer at position j + m (m = the largest group's size; any shift from m to
    n - m leaves every group). Every answer is used exactly once, and the pairing is fixed given the data and
    ``seed``, so the reference's log-probs for them are cached like the others (the cache key hashes their token
    ids, so another pairing is another entry)."""
    n = len(segs)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(segs):
        groups.setdefault(tuple(s.prompt_ids), []).append(i)
    rng = random.Random(seed)
    shuffled = list(groups.values())
    rng.shuffle(shuffled)
    for g in shuffled:
        rng.shuffle(g)
    seq = [i for g in shuffled for i in g]
    m = max((len(g) for g in shuffled), default=0)
    shift = m if 2 * m <= n else n // 2  # one prompt holding most examples: some must get an answer to it
    source = {seq[j]: seq[(j + shift) % n] for j in range(n)}
    return [Segment(s.prompt_ids, [segs[source[i]].answers[0]], index=s.index) for i, s in enumerate(segs)]


TIED = "tied pair (tie / both-bad: the DPO family has no tie term)"


def without_ties(prefs: Sequence[Preference], report: SkipReport) -> list[Preference]:
    """Tied pairs say neither answer is better, which DPO/KTO cannot train on: left out and counted in ``report``
    (before, they were trained as chosen > rejected). Use ``reward train --ties equal`` to learn from them."""
    kept = []
    for p in prefs:
        if p.tie:
            report.skip(TIED, p.meta.get("_where"))
        else:
            kept.append(p)
    return kept


def read_data(path: str, loss: str, limit: int | None, report: SkipReport) -> list[Any]:
    """The rows the loss trains on; tied preference pairs are left out (and counted in ``report``)."""
    recs = read_records(path, limit=limit)
    if loss == "kto":
        if all(isinstance(r, Preference) for r in recs):
            return unpair(without_ties(recs, report))
        if all(isinstance(r, Unpaired) for r in recs):
            return recs
        raise DataError("kto needs prompt/completion/label rows or preference pairs", path=path)
    bad = next((r for r in recs if not isinstance(r, Preference)), None)
    if bad is not None:
        raise DataError(f"--loss {loss} needs preference pairs (prompt/chosen/rejected or HH transcripts), "
                        f"found {type(bad).__name__}; for unpaired labelled data use --loss kto",
                        path=getattr(bad, "meta", {}).get("_where", path))
    return without_ties(read_preferences(path, limit=limit), report)


def load_segments(cfg: DPOConfig, tok: Any, path: str, limit: int | None) -> tuple[list[Segment], SkipReport, int]:
    """Tokenise once; cached on disk by data file, tokenizer and length settings (written by the main process)."""

    def build() -> dict[str, Any]:
        ties = SkipReport()
        recs = read_data(path, cfg.loss, limit, ties)
        fn = tokenize_unpaired if cfg.loss == "kto" else tokenize_pairs
        segs, report = fn(recs, tok, cfg.max_length, cfg.truncation, cfg.chat_template)
        report.merge(ties)
        return {"segments": segs, "report": report, "n": len(recs) + sum(ties.reasons.values())}

    kind = "unpaired" if cfg.loss == "kto" else "pairs"
    key = ("dpo", kind, file_fingerprint(path), tok.name_or_path, len(tok), cfg.max_length, cfg.truncation,
           cfg.chat_template, limit, "rank-weights-2", "ties-left-out")  # #17.8; tied pairs left out
    hit = cached_examples(key, cache_dir("tokens"), build)
    return hit["segments"], hit["report"], hit["n"]


# --------------------------------------------------------------------------------------------------
# Packed rows with a prefix-sharing mask
# --------------------------------------------------------------------------------------------------


@dataclass
class PackedBatch:
    """Segments packed into ``[B, L]`` rows; per answer its summed log-prob is gathered from ``targets``."""

    input_ids: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L]
    attention_mask: torch.Tensor  # [B, 1, L, L] bool, True = may attend
    keep: torch.Tensor  # [B, K] logit positions per row (padded by repeating position 0)
    keep_valid: torch.Tensor  # [B, K] bool
    targets: torch.Tensor  # [B, K] token predicted at each kept position
    answer_of: torch.Tensor  # [B, K] which answer (0..A-1) each kept position belongs to
    num_answers: int
    answer_lengths: torch.Tensor  # [A]
    num_tokens: int  # real (non-padding) tokens


def pack_rows(segments: Sequence[Segment], budget: int) -> list[list[int]]:
    """First-fit-decreasing bins of segment indices, each at most ``budget`` tokens (a longer segment alone)."""
    order = sorted(range(len(segments)), key=lambda i: -len(segments[i]))
    rows: list[list[int]] = []
    used: list[int] = []
    for i in order:
        n = len(segments[i])
        for r in range(len(rows)):
            if used[r] + n <= budget:
                rows[r].append(i)
                used[r] += n
                break
        else:
            rows.append([i])
            used.append(n)
    return rows


def build_batch(segments: Sequence[Segment], rows: list[list[int]], pad_id: int, device: Any = "cpu") -> PackedBatch:
    """Rows of ``[prompt, answer_1, answer_2, ...]`` segments with the prefix-sharing mask.

    Token q may attend to token k when both are in the same segment, k comes no later than q, and k is in the
    prompt or in q's own answer; positions of every answer continue from the end of the prompt. Padding tokens
    attend only to themselves (no row of the mask is empty, so softmax stays finite). Answer order: segment by
    segment in the order of ``rows``; the caller reads them back in that order.
    """
    L = max(sum(len(segments[i]) for i in row) for row in rows)
    B = len(rows)
    ids = torch.full((B, L), pad_id, dtype=torch.long)
    pos = torch.zeros((B, L), dtype=torch.long)
    group = torch.full((B, L), -1, dtype=torch.long)
    part = torch.full((B, L), -1, dtype=torch.long)
    keeps, tgts, owners, lengths = [], [], [], []
    a = 0
    for b, row in enumerate(rows):
        off = 0
        kb, tb, ob = [], [], []
        for g, i in enumerate(row):
            s = segments[i]
            P = len(s.prompt_ids)
            ids[b, off:off + P] = torch.tensor(s.prompt_ids)
            pos[b, off:off + P] = torch.arange(P)
            group[b, off:off + P] = g
            part[b, off:off + P] = 0
            cur = off + P
            for j, ans in enumerate(s.answers):
                n = len(ans)
                ids[b, cur:cur + n] = torch.tensor(ans, dtype=torch.long)
                pos[b, cur:cur + n] = torch.arange(P, P + n)
                group[b, cur:cur + n] = g
                part[b, cur:cur + n] = j + 1
                # answer token t is predicted from the token before it; the first from the prompt's last token
                kb += [off + P - 1] + list(range(cur, cur + n - 1))
                tb += ans
                ob += [a] * n
                lengths.append(n)
                a += 1
                cur += n
            off = cur
        # padding: its own group per token, so it attends to itself only
        if off < L:
            group[b, off:] = torch.arange(1_000_000, 1_000_000 + L - off)
        keeps.append(kb)
        tgts.append(tb)
        owners.append(ob)
    idx = torch.arange(L)
    causal = idx[None, :] <= idx[:, None]
    same = group[:, :, None] == group[:, None, :]
    visible = (part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])
    mask = (same & visible & causal[None]).unsqueeze(1)
    K = max(len(k) for k in keeps)
    keep = torch.zeros((B, K), dtype=torch.long)
    valid = torch.zeros((B, K), dtype=torch.bool)
    targets = torch.zeros((B, K), dtype=torch.long)
    owner = torch.zeros((B, K), dtype=torch.long)
    for b in range(B):
        n = len(keeps[b])
        keep[b, :n], targets[b, :n] = torch.tensor(keeps[b]), torch.tensor(tgts[b])
        owner[b, :n] = torch.tensor(owners[b])
        valid[b, :n] = True
    real = int((group < 1_000_000).sum())
    t = lambda x: x.to(device)  # noqa: E731
    return PackedBatch(t(ids), t(pos), t(mask), t(keep), t(valid), t(targets), t(owner), a,
                       torch.tensor(lengths, dtype=torch.float32, device=device), real)


def build_flat_batch(segments: Sequence[Segment], rows: list[list[int]], pad_id: int,
                     device: Any = "cpu") -> PackedBatch:
    """The layout without prefix sharing: every answer as its own ``[prompt, answer]`` sequence (the prompt is
    repeated), with the same packing. Kept for the layout benchmark and as a fallback (``--no-prefix-sharing``)."""
    split = [Segment(s.prompt_ids, [ans], s.index) for i in sorted({i for r in rows for i in r}) for s in [segments[i]]
             for ans in s.answers]
    # keep answer order identical to build_batch: segment by segment in row order
    by_seg = {}
    k = 0
    for i in sorted({i for r in rows for i in r}):
        by_seg[i] = list(range(k, k + len(segments[i].answers)))
        k += len(segments[i].answers)
    new_rows = [[j for i in row for j in by_seg[i]] for row in rows]
    return build_batch(split, new_rows, pad_id, device)


def answer_logps(model: Any, batch: PackedBatch, autocast: Any = nullcontext) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probability of each answer ``[A]`` and its token count ``[A]``, in one forward pass."""
    with autocast():
        out = model(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                    use_cache=False, logits_to_keep=batch.keep)
    logits = out.logits[batch.keep_valid]  # [N, V]: only real answer tokens
    lp = token_logprobs(logits, batch.targets[batch.keep_valid])
    sums = torch.zeros(batch.num_answers, dtype=torch.float32, device=lp.device)
    sums = sums.index_add(0, batch.answer_of[batch.keep_valid], lp)
    return sums, batch.answer_lengths


def ordered(rows: list[list[int]], segments: Sequence[Segment]) -> list[int]:
    """Segment indices in the order ``build_batch`` emits their answers."""
    return [i for row in rows for i in row]


# --------------------------------------------------------------------------------------------------
# Reference log-probs: computed once, cached on disk
# --------------------------------------------------------------------------------------------------


@contextmanager
def reference_mode(model: Any):
    """The reference is the policy with its LoRA adapter switched off (peft), or the untouched start model."""
    base = model.module if hasattr(model, "module") else model
    ctx = base.disable_adapter() if hasattr(base, "disable_adapter") else nullcontext()
    was_training = base.training
    base.eval()
    with ctx, torch.no_grad():
        yield
    base.train(was_training)


def model_fingerprint(name: str) -> Any:
    """A model's identity: its folder and the fingerprints of its weight and config files (tokenizer included);
    for an unmerged adapter folder also its adapter state, merged into its base (as the trainers load it), and
    the base's identity, since both make the weights."""
    from alignloop.models.load import adapter_base, resolve_model

    where = resolve_model(name)
    if isinstance(where, str):
        return where
    files = sorted(p for p in Path(where).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    out: list[Any] = [str(Path(where).resolve())] + [(p.name, file_fingerprint(p)) for p in files]
    base = adapter_base(where)
    if base is not None:
        out.append({"adapter": "merged into its base", "base": model_fingerprint(base)})
    return out


def tokens_digest(segments: Sequence[Segment]) -> str:
    """The tokenisation the log-probs were computed on: a hash of every segment's prompt and answer ids."""
    h = hashlib.sha256()
    for s in segments:
        h.update(array("q", [len(s.prompt_ids), *(len(a) for a in s.answers)]).tobytes())
        h.update(array("q", s.prompt_ids).tobytes())
        for a in s.answers:
            h.update(array("q", a).tobytes())
    return h.hexdigest()


def segment_logps(model: Any, segments: Sequence[Segment], budget: int, pad_id: int, device: Any,
                  autocast: Any = nullcontext, desc: str | None = None) -> torch.Tensor:
    """``[len(segments), answers]`` summed log-probs under ``model`` as it is (call inside ``reference_mode``)."""
    n_ans = len(segments[0].answers) if segments else 0
    out = torch.zeros((len(segments), n_ans), dtype=torch.float32)
    # chunks of ~8 rows; each chunk is packed like a training micro-batch
    chunk = max(1, 8 * budget // max(1, max(len(s) for s in segments)))
    starts = range(0, len(segments), chunk)
    for s in starts:
        sub = list(range(s, min(s + chunk, len(segments))))
        rows = pack_rows([segments[i] for i in sub], budget)
        batch = build_batch([segments[i] for i in sub], rows, pad_id, device)
        with torch.no_grad():
            sums, _ = answer_logps(model, batch, autocast)
        order = [sub[i] for i in ordered(rows, segments)]
        out[order] = sums.float().cpu().view(len(order), n_ans)
    return out


def reference_key(cfg: DPOConfig, what: str, segments: Sequence[Segment], precision: str) -> tuple[Any, ...]:
    """The reference cache's key: what the log-probs are a function of. The reference is the model the config
    names (``--reference``, else the starting model), as the trainers load it (an adapter folder merged into its
    base; with ``--lora`` and no ``--reference`` the policy with its fresh adapter off, the same weights), so its
    identity and adapter state are ``model_fingerprint``'s; the tokenisation is the token ids themselves.
    Up to 0.2.0 the key named the data file and length settings instead of the tokens, and ``--lora
    --reference X`` cached the base model's log-probs under X's name, so those entries are not read."""
    return ("dpo-ref/2", what, {"reference": model_fingerprint(cfg.reference or cfg.model)},
            tokens_digest(segments), precision)


def reference_logps(cfg: DPOConfig, run: engine.Run, model: Any, segments: list[Segment], what: str,
                    budget: int, pad_id: int) -> torch.Tensor:
    """Reference log-probs of every answer under ``model`` in ``reference_mode``, from the disk cache when the
    reference, the token ids and the precision match."""
    computed = []

    def compute() -> torch.Tensor:
        computed.append(True)
        with reference_mode(model):
            return segment_logps(model, segments, budget, pad_id, run.device, run.autocast)

    if not cfg.cache_reference:
        return compute()
    key = reference_key(cfg, what, segments, run.precision)
    folder = cache_dir("reference")
    ref = cached_examples(key, folder, compute, run.is_main)
    if not computed:
        run.log(f"reference log-probs for {what}: from cache ({folder / cache_key(*key)}.pt)")
    return ref


# --------------------------------------------------------------------------------------------------
# Loss of one micro-batch
# --------------------------------------------------------------------------------------------------


def pair_loss(cfg: DPOConfig, pol: torch.Tensor, lengths: torch.Tensor, ref: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses and implicit rewards from ``[P, 2]`` policy/reference log-probs and ``[P, 2]`` lengths.
    IPO and SimPO compare log-probs averaged over each answer's tokens."""
    beta, ls = cfg.defaults()
    pc, pr, rc, rr = pol[:, 0], pol[:, 1], ref[:, 0], ref[:, 1]
    per_token = (pc / lengths[:, 0], pr / lengths[:, 1], rc / lengths[:, 0], rr / lengths[:, 1])
    losses = {
        "dpo": lambda: dpo_loss(pc, pr, rc, rr, beta, ls),
        "robust": lambda: robust_dpo_loss(pc, pr, rc, rr, beta, ls),
        "hinge": lambda: hinge_loss(pc, pr, rc, rr, beta),
        "ipo": lambda: ipo_loss(*per_token, beta),
        "simpo": lambda: simpo_loss(*per_token[:2], beta, cfg.simpo_gamma),
    }
    return losses[cfg.loss]()  # the config allows only these


@dataclass
class StepStats:
    loss: float = 0.0
    weight: float = 0.0
    chosen: float = 0.0
    rejected: float = 0.0
    correct: float = 0.0
    logp_c: float = 0.0
    logp_r: float = 0.0
    n: int = 0
    tokens: int = 0
    n_desirable: float = 0.0  # KTO: desirable examples among n
    kl: float = 0.0  # KTO: the batch's KL estimate z0, already over all processes


def micro_step(cfg: DPOConfig, run: engine.Run, model: Any, segments: list[Segment], ref: torch.Tensor,
               idx: list[int], denom: float, budget: int, pad_id: int, stats: StepStats,
               kl_ref: torch.Tensor | None = None, kl_segs: list[Segment] | None = None) -> torch.Tensor:
    """Forward one micro-batch of pairs (or KTO examples); returns the loss scaled for backward."""
    if not idx:  # this rank's share of a short last batch: a zero-weight forward keeps the gradient all-reduce
        return micro_step(cfg, run, model, segments, ref, [0], denom, budget, pad_id, StepStats(), kl_ref,
                          kl_segs) * 0.0
    subset = [segments[i] for i in idx]
    rows = pack_rows(subset, budget)
    build = build_batch if cfg.prefix_sharing else build_flat_batch
    batch = build(subset, rows, pad_id, run.device)
    sums, lengths = answer_logps(model, batch, run.autocast)
    order = [idx[i] for i in ordered(rows, subset)]
    weights = torch.tensor([segments[i].weight for i in order], device=sums.device)
    r = ref[order].to(sums.device)
    if cfg.loss == "kto":
        beta, _ = cfg.defaults()
        kl = torch.zeros((), device=sums.device)
        if kl_segs is not None and kl_ref is not None:
            ksub = [kl_segs[i] for i in order]
            with torch.no_grad():
                kb = build_batch(ksub, pack_rows(ksub, budget), pad_id, run.device)
                kp, _ = answer_logps(model, kb, run.autocast)
                korder = [order[i] for i in ordered(pack_rows(ksub, budget), ksub)]
            kl_sum = run.reduce_sum(float((kp - kl_ref[korder, 0].to(kp.device)).sum()))
            kl = kl_sum / max(run.reduce_sum(len(order)), 1)
            kl = torch.tensor(kl, device=sums.device)
        labels = torch.tensor([segments[i].label for i in order], device=sums.device)
        losses, rewards = kto_loss(sums, r[:, 0], labels, kl, beta, cfg.kto_desirable_weight,
                                   cfg.kto_undesirable_weight)
        lab = labels.float()
        stats.chosen += float((rewards * lab).sum())
        stats.rejected += float((rewards * (1 - lab)).sum())
        stats.logp_c += float((sums.detach() * lab).sum())
        stats.logp_r += float((sums.detach() * (1 - lab)).sum())
        stats.correct += float(((rewards > 0) == labels).float().sum())
        stats.kl = float(kl)
        stats.n_desirable += float(lab.sum())
    else:
        pol = sums.view(-1, 2)
        losses, rc, rr = pair_loss(cfg, pol, lengths.view(-1, 2), r)
        stats.chosen += float(rc.sum())
        stats.rejected += float(rr.sum())
        stats.correct += float((rc > rr).float().sum())
        stats.logp_c += float(pol[:, 0].detach().sum())
        stats.logp_r += float(pol[:, 1].detach().sum())
    stats.loss += float((losses.detach() * weights).sum())
    stats.weight += float(weights.sum())
    stats.n += len(order)
    stats.tokens += batch.num_tokens
    # mean over the step's examples on all processes; DDP averages gradients over processes, so scale by world
    return (losses * weights).sum() * (run.world / denom)


# --------------------------------------------------------------------------------------------------
# Evaluation: implicit-reward preference accuracy
# --------------------------------------------------------------------------------------------------


def implicit_margins(model: Any, segments: list[Segment], ref: torch.Tensor | None, budget: int, pad_id: int,
                     device: Any, autocast: Any = nullcontext, loss: str = "dpo") -> torch.Tensor:
    """``[P]`` implicit reward margins: (π_c - ref_c) - (π_r - ref_r); SimPO's reward has no reference and is
    length-normalised, so for it the margin is the difference of average log-probs."""
    base = model.module if hasattr(model, "module") else model
    was = base.training
    base.eval()
    pol = segment_logps(model, segments, budget, pad_id, device, autocast)
    base.train(was)
    if loss == "simpo":
        lens = torch.tensor([[len(a) for a in s.answers] for s in segments], dtype=torch.float32)
        avg = pol / lens
        return avg[:, 0] - avg[:, 1]
    return (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])


def accuracy_report(margins: torch.Tensor, segments: list[Segment], seed: int = 0) -> dict[str, Any]:
    """Accuracy (a tie counts half), its 95% bootstrap interval, and the length baseline on the same pairs."""
    from alignloop.evaluate.metrics import bootstrap_ci, length_baseline

    correct = [(1.0 if m > 0 else 0.5 if m == 0 else 0.0) for m in margins.tolist()]
    lo, hi = bootstrap_ci(correct, seed=seed)
    base = length_baseline([len(s.answers[0]) for s in segments], [len(s.answers[1]) for s in segments])
    return {"accuracy": sum(correct) / max(1, len(correct)), "ci95": [lo, hi], "n": len(correct),
            "length_baseline": base, "mean_margin": float(margins.mean()) if len(margins) else 0.0}


def preference_accuracy(policy: str, data: str, reference: str | None = None, max_length: int = 512,
                        precision: str = "auto", seed: int = 0, loss: str = "dpo", limit: int | None = None
                        ) -> dict[str, Any]:
    """Implicit-reward preference accuracy of ``policy`` against ``reference`` on a preference file.

    The implicit reward of DPO is ``β (log π(y|x) - log π_ref(y|x))``; the pair counts as right when the chosen
    answer's reward is higher. Returns ``accuracy``, ``ci95`` (bootstrap), ``n`` and ``length_baseline`` (the
    accuracy of "the longer answer is better" on the same pairs). ``reference`` defaults to the policy's base
    model (a LoRA adapter folder's base, or the ``model`` recorded in its ``config.yaml``).
    """
    import yaml

    from alignloop.models.load import load_causal_lm, pick_precision, resolve_model

    ac = partial(engine.autocast, pick_precision(precision), "cpu")
    if reference is None:
        where = Path(resolve_model(policy))
        for cand in (where / "config.yaml", where.parent / "config.yaml"):
            if cand.exists():
                reference = yaml.safe_load(cand.read_text()).get("model")
                break
        if reference is None:
            raise DataError(f"no reference given and none recorded beside {policy} (config.yaml)")
    model, tok = load_causal_lm(policy)
    segs, _ = tokenize_pairs(read_preferences(data, limit=limit), tok, max_length, "left")
    budget = 2 * max_length
    pad = tok.pad_token_id
    ref = None
    if loss != "simpo":
        rmodel, _ = load_causal_lm(reference)
        rmodel.eval()
        ref = segment_logps(rmodel, segs, budget, pad, "cpu", ac)
        del rmodel
    margins = implicit_margins(model, segs, ref, budget, pad, "cpu", ac, loss)
    return accuracy_report(margins, segs, seed)


def preference_row(p: Preference) -> dict[str, Any]:
    """One preference in TRL's conversational format (``prompt`` messages; ``chosen``/``rejected`` as one assistant
    message each), which TRL's DPOTrainer and alignloop both read; a raw-text prompt stays a plain string."""
    if p.prompt.raw:
        row: dict[str, Any] = {"prompt": p.prompt.to_json(), "chosen": p.chosen, "rejected": p.rejected}
    else:
        row = {"prompt": p.prompt.to_json(), "chosen": [{"role": "assistant", "content": p.chosen}],
               "rejected": [{"role": "assistant", "content": p.rejected}]}
    meta = public_meta(p.meta)
    return {**row, **{k: v for k, v in meta.items() if k not in row}}


def write_preferences(path: str | Path, prefs: Sequence[Preference]) -> Path:
    """Write preference pairs as JSONL that TRL's ``DPOTrainer`` trains on unchanged (atomic write)."""
    return write_jsonl(path, [preference_row(p) for p in prefs])


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def step_metrics(cfg: DPOConfig, stats: StepStats) -> dict[str, float]:
    """The step's implicit rewards and log-probs (``rewards/*``, ``logps/*``), means over its examples; for KTO
    over its desirable (chosen) and undesirable (rejected) examples."""
    n = max(stats.n, 1)
    if cfg.loss != "kto":
        return {"rewards/chosen": stats.chosen / n, "rewards/rejected": stats.rejected / n,
                "rewards/margins": (stats.chosen - stats.rejected) / n, "rewards/accuracies": stats.correct / n,
                "logps/chosen": stats.logp_c / n, "logps/rejected": stats.logp_r / n}
    good, bad = max(stats.n_desirable, 1), max(n - stats.n_desirable, 1)
    values = {"rewards/chosen": stats.chosen / good, "rewards/rejected": stats.rejected / bad,
              "logps/chosen": stats.logp_c / good, "logps/rejected": stats.logp_r / bad,
              "rewards/accuracies": stats.correct / n, "objective/kl": stats.kl}
    values["rewards/margins"] = values["rewards/chosen"] - values["rewards/rejected"]
    return values


def log_accuracy(run: engine.Run, name: str, result: dict[str, Any]) -> None:
    run.log(f"{name}: implicit-reward accuracy {result['accuracy']:.3f} (95% CI {result['ci95'][0]:.3f}-"
            f"{result['ci95'][1]:.3f}, n={result['n']}; length baseline {result['length_baseline']:.3f})")


def run(cfg: DPOConfig) -> Path:
    from alignloop.models.load import load_policy_and_reference

    r = engine.setup(cfg)
    # ref_model: the --reference model, frozen on the run's device; None: the starting policy (adapter off)
    model, ref_model, tok = load_policy_and_reference(cfg, r.device, keep_reference=False)
    pad = tok.pad_token_id
    budget = cfg.row_tokens or 2 * cfg.max_length

    segs, report, n_rows = load_segments(cfg, tok, cfg.data, cfg.limit)
    r.log(f"data: {cfg.data}: {report.summary(n_rows)}" + (" (kto: pairs unpaired into 2 examples each)"
                                                            if cfg.loss == "kto" and n_rows != len(segs) else ""))
    if not segs:
        raise DataError("no usable rows (all were skipped; see the report above)", path=cfg.data)
    dev = None
    if cfg.dev_data:
        dev, dev_report, n_dev = load_segments(cfg.replace(loss="dpo"), tok, cfg.dev_data, None)
        r.log(f"dev data: {cfg.dev_data}: {dev_report.summary(n_dev)}")

    # reference log-probs, once, before any weight changes (without --reference: the starting model)
    reference = ref_model if ref_model is not None else model
    t_ref = engine.StepTimer()
    needs_ref = cfg.loss != "simpo"
    ref = reference_logps(cfg, r, reference, segs, "train", budget, pad) if needs_ref else \
        torch.zeros((len(segs), 2))
    kl_segs = kl_ref = None
    if cfg.loss == "kto":
        kl_segs = kl_segments(segs, cfg.seed)
        kl_ref = reference_logps(cfg, r, reference, kl_segs, "kto-kl", budget, pad)  # the key hashes the pairing
    dev_ref = None
    if dev is not None and needs_ref:
        dev_ref = reference_logps(cfg.replace(loss="dpo", limit=None), r, reference, dev, "dev", budget, pad)
    test = test_ref = None
    if cfg.test_data:  # scored after training, but its reference must be taken before the weights move
        test, _, _ = load_segments(cfg.replace(loss="dpo", limit=None), tok, cfg.test_data, None)
        test_ref = reference_logps(cfg.replace(loss="dpo", limit=None), r, reference, test, "test", budget,
                                   pad) if needs_ref else None
    del ref_model, reference  # a --reference model is not needed after this: free its memory
    r.metrics.write(0, {"time/reference_s": t_ref.lap()})  # one-off (0 on a cache hit): count it in throughput

    def make_epoch(epoch: int) -> list[list[int]]:
        glob = batches(len(segs), cfg.batch_size * r.world, cfg.seed, epoch, shuffle=cfg.shuffle)
        return [b[r.rank::r.world] for b in glob]  # an empty share runs a zero-weight step (micro_step)

    loop = engine.start_loop(r, model, make_epoch, f"dpo ({cfg.loss})")
    model, optimizer, scheduler, total = loop.model, loop.optimizer, loop.scheduler, loop.total

    def accuracy_on(segments: list[Segment], seg_ref: torch.Tensor | None) -> dict[str, Any]:
        m = implicit_margins(model, segments, seg_ref, budget, pad, r.device, r.autocast, cfg.loss)
        return accuracy_report(m, segments, cfg.seed)

    for step in range(loop.start + 1, total + 1):
        micro = [next(loop.stream) for _ in range(cfg.grad_accum)]
        denom = r.reduce_sum(sum(segs[i].weight for _, b in micro for i in b))
        stats = StepStats()
        for k, (_, idx) in enumerate(micro):
            with engine.micro_step(r, model, sync=k == len(micro) - 1):
                loss = micro_step(cfg, r, model, segs, ref, idx, denom, budget, pad, stats, kl_ref, kl_segs)
                r.accelerator.backward(loss)
        loss_value = r.reduce_sum(stats.loss) / max(denom, 1e-12)
        for name in ("chosen", "rejected", "correct", "logp_c", "logp_r", "n", "tokens", "n_desirable"):
            # sums over all processes: the metrics are those of the global batch
            setattr(stats, name, r.reduce_sum(getattr(stats, name)))
        engine.check_finite(r, loss_value, step)
        grad_norm = engine.clip_and_step(r, model, optimizer, scheduler, cfg.max_grad_norm)
        dt = loop.timer.lap()
        values = {"loss": loss_value, "grad_norm": grad_norm, "learning_rate": scheduler.get_last_lr()[0],
                  "epoch": micro[-1][0], **step_metrics(cfg, stats)}
        values = r.reduce_mean(values)
        values.update({"tokens": stats.tokens, "tokens_per_s": stats.tokens / max(dt, 1e-9),
                       "pairs_per_s": stats.n / max(dt, 1e-9)})
        if dev is not None and cfg.eval_every and step % cfg.eval_every == 0 and step != total:
            ev = accuracy_on(dev, dev_ref)
            values.update({"eval/accuracy": ev["accuracy"], "eval/mean_margin": ev["mean_margin"]})
        if step % cfg.log_every == 0 or step == total:
            r.metrics.write(step, values)
        loop.bar.set_postfix(loss=f"{loss_value:.4f}", acc=f"{values['rewards/accuracies']:.2f}",
                             tok_s=f"{values['tokens_per_s']:.0f}")
        loop.bar.update(1)
        if cfg.save_every and step % cfg.save_every == 0 and step != total:
            engine.save_checkpoint(r, step, model, optimizer, scheduler)
    loop.bar.close()

    results: dict[str, Any] = {}
    if dev is not None:
        results["dev"] = accuracy_on(dev, dev_ref)
        r.metrics.write(total, {"eval/accuracy": results["dev"]["accuracy"]})
        log_accuracy(r, "dev", results["dev"])
    if test is not None:
        results["test"] = accuracy_on(test, test_ref)
        log_accuracy(r, "test", results["test"])
    engine.save_checkpoint(r, total, model, optimizer, scheduler)
    if results and r.is_main:
        write_json(r.output / "eval.json", results, indent=1)
    final = engine.finish(r, model, tok)
    r.log(f"saved {final}")
    return final
