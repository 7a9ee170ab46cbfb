"""alignloop: end-to-end RLHF in one tool.

The library API (the same names the HTTP client uses):

    import alignloop
    model = alignloop.load_model("smollm2-135m-instruct")
    print(model.predict("What was Apple's FY2022 revenue?", context="..."))
    alignloop.train("sft", model="tiny", data="data.jsonl", output="runs/sft")

Heavy modules (torch, transformers) are imported on first use, not at ``import alignloop``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"

__all__ = ["load_model", "train", "run_stage", "Client", "__version__"]


def load_model(name_or_path: str, **kwargs: Any):
    """Load a policy model by alias, folder, GGUF file or cached hub id; returns an ``AlignModel`` whose
    ``predict`` declines where the model is unsure when its folder has an abstention record
    (:mod:`alignloop.generation.abstention`), as ``alignloop eval`` answers."""
    from alignloop.generation.abstention import read_abstention
    from alignloop.generation.sampling import load_model as _load_model

    model = _load_model(name_or_path, **kwargs)
    model.abstention = read_abstention(name_or_path)
    return model


def run_stage(stage: str, config: Any = None, **fields: Any):
    """Run a stage (``"sft"``, ``"dpo"``, ``"reward train"``, ...) from a config object, a YAML path or fields.

    Returns what the stage returns (the output folder for trainers).
    """
    from alignloop.pipelines.stages import run_stage as _run_stage

    return _run_stage(stage, config, **fields)

def train(stage: str, config: Any = None, **fields: Any):
    """Run a stage (``"sft"``, ``"dpo"``, ``"reward train"``, ...) from a config object, a YAML path or fields."""
    return run_stage(stage, config, **fields)


def __getattr__(name: str) -> Any:
    if name == "Client":
        from alignloop.client import Client

        return Client
    raise AttributeError(name)
