"""Model cards: the README.md written into a registered model's folder (method, data, labels, hyperparameters)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from alignloop.core.db import DatabaseError
from alignloop.core.files import write_text

if TYPE_CHECKING:  # the card reads lineage through a Registry handed in; no import at run time
    from alignloop.registry.store import Registry


METHODS = {
    "sft": "supervised fine-tuning on demonstrations (cross-entropy on answer tokens)",
    "dpo": "direct preference optimisation on chosen/rejected pairs",
    "reward train": "a Bradley-Terry reward model trained on preference pairs",
    "ppo": "PPO against a reward model with a per-token KL penalty",
    "grpo": "GRPO: group-relative advantages over K samples per prompt",
    "rloo": "RLOO: leave-one-out baselines over K samples per prompt",
}


CARD_HYPERPARAMETERS = ("learning_rate", "max_steps", "num_epochs", "batch_size", "grad_accum", "max_length",
                        "lora", "lora_r", "precision", "seed", "loss", "beta")


def model_card(model: dict, run: dict, lineage: dict | None = None) -> str:
    cfg = run.get("config") or {}
    metrics = {k: v for k, v in (run.get("metrics") or {}).items() if isinstance(v, (int, float))}
    lines = [f"# {model['name']}", "",
             f"Registry id `{model['id']}`, made by `alignloop {run['stage']}` (run `{run['id']}`) "
             f"on {run.get('finished_at') or run.get('started_at')}.", "",
             "## Base model", ""]
    parent = f" (registry model `{model['parent_id']}`)" if model.get("parent_id") else ""
    lines += [f"Started from `{model['base_model']}`{parent}."]
    if lineage and len(lineage.get("chain", [])) > 1:
        chain = " → ".join(f"`{c['model_id']}` ({c['stage']})" for c in reversed(lineage["chain"]))
        lines += ["", f"Lineage: `{lineage['base_model']}` → {chain}."]
    lines += ["", "## Data", ""]
    for fld, h in (run.get("data_hashes") or {}).items():
        lines.append(f"- `{fld}`: `{h['path']}` (sha256 `{h['sha256'][:16]}…`)")
    if not run.get("data_hashes"):
        lines.append("- (no input files recorded)")
    n = len(run.get("judgment_ids") or [])
    lines += ["", f"Labels: {n} judgment{'s' * (n != 1)} from the feedback store"
                  + (" (ids in the registry: `alignloop models lineage " + model['id'] + "`)." if n else
                     " (the data did not come from a feedback-store export).")]
    lines += ["", "## Method", "", METHODS.get(run["stage"], run["stage"]) + ".", ""]
    for k in CARD_HYPERPARAMETERS:
        if k in cfg and cfg[k] is not None:
            lines.append(f"- {k}: {cfg[k]}")
    lines += ["", "## Metrics (last logged values)", ""]
    lines += [f"- {k}: {v:.6g}" for k, v in sorted(metrics.items()) if k != "step"] or ["- (none logged)"]
    lines += ["", "## Intended use", "",
              "Research and internal assistants (e.g. question answering over provided documents) after "
              "evaluation on your own held-out questions. Serve it with `alignloop serve --model "
              f"{model['id']}` and collect user feedback for the next round.",
              "", "## Limits", "",
              "- Inherits the base model's knowledge cut-off, biases and failure modes; small models invent "
              "figures, so check answers against the source documents.",
              "- Trained on the data above only; quality outside that domain is unmeasured.",
              "- Not evaluated for safety-critical, legal, medical or financial advice without human review.", ""]
    return "\n".join(lines)


def write_model_card(folder: Path, model: dict, run: dict, reg: Registry | None = None) -> Path:
    lineage = None
    if reg is not None:
        try:
            lineage = reg.lineage(model["id"])
        except DatabaseError as exc:  # the card is still worth writing without its lineage line
            print(f"warning: registry: the model card of {model['id']} has no lineage: {exc}", file=sys.stderr)
    return write_text(folder / "README.md", model_card(model, run, lineage))
