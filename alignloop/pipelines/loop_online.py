"""The loop's on-policy rounds (``online: true``, training mode): the latest policy answers a round of prompts,
the judge labels every pair of its answers, and the decisive pairs become the next stage's new labels.

Each round is persisted in ``stage_<n>/online/`` (candidates, judgments, preferences, then ``round.json`` as its
done-marker), so a resumed run never samples a finished round again; the sampling and judging is the demo's
labelling stage (:func:`alignloop.judges.labeling.sample_and_judge`).
"""

from __future__ import annotations

import json
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np

from alignloop.data.readers import read_records
from alignloop.evaluate.qa_run import heldout_ids, in_split, qa_items, record_ids
from alignloop.judges import labeling
from alignloop.judges.factory import build_judge
from alignloop.pipelines.config import LoopConfig
from alignloop.pipelines.loop_report import log, read_jsonl, write_stage_json


def online_prompts(cfg: LoopConfig) -> list[Any]:
    """The prompt records the policy answers in on-policy rounds: ``prompts``, else the pool's distinct prompts."""
    source = cfg.prompts or cfg.data
    split = cfg.prompts_split if cfg.prompts else "all"
    if cfg.judge == "reference":
        recs = qa_items(source, split)  # every row needs its gold answer: a clear file:line error otherwise
    else:
        recs = read_records(source, kind="prompt")
        ids = record_ids(recs)
        test = heldout_ids(ids)
        kept = [(fid, r) for fid, r in zip(ids, recs) if in_split(fid, test, split)]
        for fid, r in kept:
            r.meta["id"] = fid
        recs = [r for _, r in kept]
    if not cfg.prompts:
        recs = recs[: cfg.limit or None]
    distinct: dict[str, Any] = {}
    for r in recs:  # a pool repeats a prompt once per pair
        distinct.setdefault(json.dumps(r.prompt.to_json()), r)
    return list(distinct.values())


def make_judge(cfg: LoopConfig) -> Any:
    return build_judge(cfg.judge, cfg.judge_model, cfg.judge_base_url)


def sample_round(cfg: LoopConfig, folder: Path, policy: str, prompts: list[Any], judge: Any, seed: int,
                 round_no: int, n: int) -> dict[str, Any]:
    """Sample and judge round ``round_no`` into ``folder``; ``round.json`` (what it returns) is written last."""
    per_round = min(cfg.prompts_per_round or len(prompts), len(prompts))
    # one seeded shuffle of the prompt set; each round takes the next per_round of it (wrapping around)
    order = np.random.default_rng(seed).permutation(len(prompts))
    take = [prompts[int(order[((round_no - 1) * per_round + t) % len(prompts)])] for t in range(per_round)]
    sample_seed = seed * 1_000_003 + n
    log(f"stage {n}: on-policy round {round_no}: {policy} answers {len(take)} prompts x {cfg.num_candidates}, "
        f"the {judge.name} judge labels every pair")
    summary = labeling.sample_and_judge(policy, take, folder, judge, cfg.num_candidates, cfg.max_new_tokens,
                                        cfg.temperature, seed=sample_seed, add_gold=cfg.add_gold,
                                        desc=f"stage {n}: on-policy candidates")
    info = {"round": round_no, "policy": policy, "seed": sample_seed, "judge": judge.name,
            "prompt_ids": [str(r.meta["id"]) for r in take], **summary}
    write_stage_json(folder / "round.json", info)  # last: the round is done
    log(f"stage {n}: on-policy round {round_no}: {summary['preferences']} decisive of {summary['pairs']} pairs")
    return info


def online_round(cfg: LoopConfig, folder: Path, policy: str, prompts: list[Any], judge: Any, seed: int,
                 round_no: int, n: int) -> list[dict[str, Any]]:
    """On-policy round ``round_no`` (1, 2, ... in stage order), the one that feeds stage ``n``: ``policy`` answers
    this round's prompts, the judge labels every pair, and the decisive pairs come back as label rows, interleaved
    across prompts (each prompt's first pair, then each prompt's second, ...) so that a prefix of them spreads over
    as many prompts as possible.

    Persisted in ``folder`` (``candidates.jsonl``, ``judgments.jsonl``, ``preferences.jsonl``, each written
    atomically, then ``round.json``, whose presence marks the round done): a resumed run never samples it again."""
    marker = folder / "round.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        log(f"stage {n}: on-policy round {round_no} done before ({info['preferences']} labelled pairs), reusing it")
    else:
        info = sample_round(cfg, folder, policy, prompts, judge, seed, round_no, n)
    prefs = read_jsonl(folder / "preferences.jsonl")
    by_prompt: dict[str, list[tuple[int, dict]]] = {}
    for j, p in enumerate(prefs):
        by_prompt.setdefault(str(p["id"]), []).append((j, p))
    interleaved = [x for tier in zip_longest(*by_prompt.values()) for x in tier if x is not None]
    return [{"id": f"online:stage_{n}:{j}", "source": "online", "prompt": p["prompt"], "chosen": p["chosen"],
             "rejected": p["rejected"], "prompt_id": str(p["id"]), "judge": p.get("judge"), "policy": info["policy"]}
            for j, p in interleaved]
