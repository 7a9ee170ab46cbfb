"""What a training job submitted over HTTP may say: an allow-list of every stage config's fields.

A job runs code on the server with the server's rights, so its config is not taken as given:

* every field of every stage config is classified here, as a setting (a number, a choice, a switch: any value
  the stage's own validation accepts), a file the job reads, a model, a reward source, or a field the server
  sets itself (``REFUSED``). ``tests/unit/serve/test_job_policy.py`` checks that the classification covers every
  field, so a field added to a stage later is refused over HTTP until someone classifies it;
* files and model folders must lie, after resolving ``..`` and symbolic links, under the job's own folder or one
  of the server's ``--data-root`` folders (model aliases, registered models by id or name, and hub ids of the
  local cache still work);
* ``python:`` rewards name only the functions the server registers (``--reward-function``; by default the
  built-in ``alignloop.rewards`` ones), never a file or a module of the caller's choosing;
* ``output`` and ``db`` are the server's (the job's folder, the server's database), and the job's caches live in
  its folder (``jobs.JobManager.env``), so a job never writes where another run loads pickles from.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from alignloop.registry.store import resolve_model_ref
from alignloop.serve.config import BUILT_IN_REWARDS, ServeConfig

#: values a job may choose freely (the stage's validation still checks each one)
SETTINGS = frozenset({
    # every trainer
    "batch_size", "chat_template", "eval_every", "grad_accum", "gradient_checkpointing", "keep_checkpoints",
    "learning_rate", "limit", "log_every", "lora", "lora_alpha", "lora_dropout", "lora_r", "lora_targets",
    "lr_schedule", "max_grad_norm", "max_length", "max_steps", "merge_lora", "num_epochs", "precision",
    "save_every", "seed", "truncation", "warmup_steps", "weight_decay",
    # sft
    "completion_only", "packing",
    # reward train
    "backbone", "backbone_layers", "ensemble", "freeze_backbone", "head_epochs", "head_learning_rate",
    "head_weight_decay", "margin_scale", "norm_samples", "pooling", "ties", "use_margin", "warm_start",
    # dpo
    "beta", "cache_reference", "kto_desirable_weight", "kto_undesirable_weight", "label_smoothing", "loss",
    "prefix_sharing", "row_tokens", "shuffle", "simpo_gamma",
    # ppo, grpo, rloo
    "backend", "cliprange", "cliprange_value", "critic_learning_rate", "eval_samples", "gamma",
    "generation_batch_size", "kl_budget", "kl_coef", "kl_estimator", "kl_horizon", "kl_in", "lam", "max_minutes",
    "max_new_tokens", "max_prompt_length", "missing_eos_penalty", "num_generations", "num_mini_batches",
    "ppo_epochs", "reference_device", "reward_device", "sample_every", "scale_rewards", "target_kl", "temperature",
    "vf_coef", "whiten_rewards",
})
#: files a job reads: under the job's folder or a data root
FILES = frozenset({"data", "dev_data", "prompts", "reference_data", "test_data"})
#: models: an alias, a registered model (id or name), a hub id, or a folder under the job's folder or a data root
MODELS = frozenset({"model", "reference", "reward_model"})
#: reward sources (``rm:`` a model as in MODELS, ``python:`` a registered function)
REWARDS = frozenset({"reward"})
ALLOWED = SETTINGS | FILES | MODELS | REWARDS
#: fields only the server sets, with the reason a job is told
REFUSED = {
    "output": "the server sets it (the job writes under its own folder; see the job's 'output')",
    "db": "the server sets it (its own database)",
    "resume": "the server sets it when it re-queues an interrupted job",
}

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_RM_MODULE = "alignloop.trainers.reward_sources:"  # alignloop.rewards is this module under its public name


def _aliases() -> set[str]:
    from alignloop.models.load import ALIASES
    from alignloop.models.reward_model import ENCODER_ALIASES

    return {*ALIASES, *ENCODER_ALIASES}


@dataclass
class JobPolicy:
    """The rules for one server: its data roots, its registered reward functions, its registry."""

    roots: list[Path] = field(default_factory=list)
    reward_functions: list[str] = field(default_factory=lambda: list(BUILT_IN_REWARDS))
    db: Optional[str] = None

    @classmethod
    def from_config(cls, cfg: ServeConfig, db: str | None) -> "JobPolicy":
        return cls([Path(r).expanduser() for r in cfg.data_root], list(cfg.reward_function), db)

    def vet(self, config: dict[str, Any], folder: Path) -> tuple[dict[str, Any], list[str]]:
        """``(config with paths made absolute and registry models resolved, problems)``; ``folder`` is the job's."""
        out: dict[str, Any] = {}
        problems: list[str] = []
        for key, value in config.items():
            name = str(key).replace("-", "_")
            if name in REFUSED:
                problems.append(f"{name}: a job may not set it: {REFUSED[name]}")
            elif name not in ALLOWED:
                problems.append(f"{name}: not a field a job may set over HTTP")
            elif value is None or name in SETTINGS:
                out[name] = value
            elif name in REWARDS:
                out[name] = self._rewards(value, folder, problems)
            elif not isinstance(value, str):
                problems.append(f"{name}: must be a string, got {type(value).__name__}")
            elif name in MODELS:
                out[name] = self._model(name, value, folder, problems)
            else:
                out[name] = self._file(name, value, folder, problems)
        return out, problems

    # ---- the kinds of value ---------------------------------------------------------------------
    def _file(self, name: str, value: str, folder: Path, problems: list[str]) -> str:
        """The absolute path of ``value`` (relative ones are the job folder's, the job's working folder) when it
        lies under the job's folder or a data root."""
        p = Path(value)
        if not value.startswith("~"):
            full = (p if p.is_absolute() else folder / p).resolve()
            for root in (folder, *self.roots):
                if full.is_relative_to(root.resolve()):
                    return str(full)
        roots = ", ".join(str(r) for r in self.roots) or "none configured"
        problems.append(f"{name}: '{value}' is outside the job's folder and the server's data roots "
                        f"(--data-root: {roots}); upload the data with the job, or ask the server's admin")
        return value

    def _model(self, name: str, value: str, folder: Path, problems: list[str]) -> str:
        if value in _aliases():
            return value
        path, model_id = resolve_model_ref(value, self.db)
        if model_id is not None and path != value:  # a registered model named by id or name
            return str(path)
        if HUB_ID.match(value) and ".." not in value.split("/") and not (folder / value).exists():
            return value  # a hub id: only the local Hugging Face cache can serve it
        return self._file(name, value, folder, problems)

    def _rewards(self, value: Any, folder: Path, problems: list[str]) -> Any:
        from alignloop.core.config import ConfigError
        from alignloop.trainers.reward_sources import parse_spec

        specs = [value] if isinstance(value, str) else value
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs):
            problems.append("reward: must be a list of reward sources (strings)")
            return value
        out = []
        for spec in specs:
            try:
                parsed = parse_spec(spec)
            except ConfigError as exc:
                problems += exc.problems
                continue
            weight = "" if parsed.weight == 1.0 else f":{parsed.weight:g}"
            if parsed.kind == "rm":
                out.append(f"rm:{self._model('reward', parsed.arg, folder, problems)}{weight}")
            elif parsed.kind == "python" and self._registered(parsed.arg):
                out.append(spec)
            elif parsed.kind == "python":
                allowed = ", ".join(f"python:{f}" for f in self.reward_functions) or "none"
                problems.append(f"reward: python:{parsed.arg} is not a reward function this server runs for jobs "
                                f"(--reward-function: {allowed})")
            else:
                problems.append(f"reward: '{parsed.kind}:' sources are not accepted over HTTP (rm: and python: are)")
        return out

    def _registered(self, ref: str) -> bool:
        public = ref.replace(_RM_MODULE, "alignloop.rewards:", 1)
        return ref in self.reward_functions or public in self.reward_functions
