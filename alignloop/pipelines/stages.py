"""The stage table and the one place a stage is run (and recorded in the model registry).

Each command names its torch-free config class as ``module:Class``; only the invoked stage's modules are imported."""

from __future__ import annotations

import importlib
import os
from typing import Any

from alignloop.core.config import StageConfig
from alignloop.core.paths import registry_on

#: every command, lazily: (words) -> (help line, "module:ConfigClass").
#: Stage modules own their config classes when they are not here; cli imports only the one invoked.
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("sft",): ("supervised fine-tuning on demonstrations", "alignloop.trainers.config:SFTConfig"),
    ("generate",): ("sample K completions per prompt", "alignloop.generation.config:GenerateConfig"),
    ("reward", "train"): ("train a reward model on preferences", "alignloop.trainers.config:RewardTrainConfig"),
    ("reward", "eval"): ("evaluate a reward model (JSON)", "alignloop.trainers.config:RewardEvalConfig"),
    ("reward", "score"): ("add a reward field to prompt/completion records",
                          "alignloop.trainers.config:RewardScoreConfig"),
    ("dpo",): ("direct preference optimisation (dpo, ipo, robust, hinge, simpo, kto)",
               "alignloop.trainers.config:DPOConfig"),
    ("ppo",): ("PPO against a reward model", "alignloop.trainers.config:PPOConfig"),
    ("grpo",): ("GRPO with group-relative advantages", "alignloop.trainers.config:GRPOConfig"),
    ("rloo",): ("RLOO with leave-one-out baselines", "alignloop.trainers.config:RLOOConfig"),
    ("label", "serve"): ("run the feedback studio web app", "alignloop.feedback.config:LabelServeConfig"),
    ("label", "import"): ("import prompts/completions or preferences", "alignloop.feedback.config:LabelImportConfig"),
    ("label", "export"): ("export consensus preferences, KTO labels, SFT demos or raw judgments",
                          "alignloop.feedback.config:LabelExportConfig"),
    ("label", "stats"): ("progress, agreement and consensus as JSON", "alignloop.feedback.config:LabelStatsConfig"),
    ("label", "add-user"): ("create an admin, lead or labeler", "alignloop.feedback.config:LabelAddUserConfig"),
    ("label", "user"): ("deactivate, reactivate, reset a password, tokens, sessions; the audit log",
                        "alignloop.feedback.config:LabelUserConfig"),
    ("label", "member"): ("add, remove or list a project's members", "alignloop.feedback.config:LabelMemberConfig"),
    ("judge",): ("label preferences with an AI judge", "alignloop.judges.config:JudgeConfig"),
    ("loop",): ("the staged RLHF loop", "alignloop.pipelines.config:LoopConfig"),
    ("eval",): ("evaluate a model (QA scores, reward, KL, win rate)", "alignloop.evaluate.config:EvalConfig"),
    ("demo",): ("the staged RLHF loop on the built-in data", "alignloop.pipelines.config:DemoConfig"),
    ("serve",): ("OpenAI-compatible serving with feedback capture", "alignloop.serve.config:ServeConfig"),
    ("models", "list"): ("list registered models", "alignloop.registry.config:ModelsListConfig"),
    ("models", "show"): ("show one model", "alignloop.registry.config:ModelsShowConfig"),
    ("models", "lineage"): ("labels and parents behind a model", "alignloop.registry.config:ModelsLineageConfig"),
    ("launch",): ("run a stage on several processes through accelerate", "alignloop.cli.launch:LaunchConfig"),
}


def load_ref(ref: str) -> Any:
    """The object a ``"module:name"`` reference names (a config class, a runner)."""
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def config_class(stage: str) -> type[StageConfig]:
    """The config class of a stage named as on the command line (``"sft"``, ``"reward train"``; ``"reward"`` is
    ``"reward train"``)."""
    words = tuple(stage.split())
    if words == ("reward",):
        words = ("reward", "train")
    if words not in COMMANDS:
        raise ValueError(f"unknown stage '{stage}'; one of: {', '.join(' '.join(c) for c in COMMANDS)}")
    return load_ref(COMMANDS[words][1])


def run(cfg: StageConfig) -> Any:
    """Run a stage from its config (the CLI and the library's ``alignloop.train`` both come here).

    Trainers (every ``TrainOptions`` stage) are recorded in the model registry here, in one place: config,
    data hashes, labels, parent, metrics and the final model (see ``alignloop/registry/recording.py``). The registry
    never makes a run fail; ``ALIGNLOOP_REGISTRY=off`` skips it."""
    from alignloop.trainers.config import TrainOptions

    runner = load_ref(type(cfg).runner)
    main_process = os.environ.get("RANK", "0") == "0"  # under `launch`, only rank 0 records
    if not isinstance(cfg, TrainOptions) or not main_process or not registry_on():
        return runner(cfg)
    from alignloop.registry import recording as registry

    cfg, run_id = registry.start_run(cfg)
    try:
        result = runner(cfg)
    except BaseException as exc:
        registry.finish_run(run_id, cfg, error=exc)
        raise
    registry.finish_run(run_id, cfg, result)
    return result


def run_stage(stage: str, config: Any = None, **fields: Any) -> Any:
    """Run a stage (``"sft"``, ``"dpo"``, ``"reward train"``, ...) from a config object, a YAML path or fields."""
    cls = config_class(stage)
    if isinstance(config, StageConfig):
        cfg = config.replace(**fields).validate() if fields else config.validate()
    elif config is not None:
        cfg = cls.load(config, overrides=fields)
    else:
        cfg = cls.from_dict(fields, source="train()").validate()
    return run(cfg)
