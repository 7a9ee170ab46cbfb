"""The model registry: runs, models, jobs and served answers, their lineage, model cards and migrations."""

import importlib
import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    # a submodule (``from alignloop.registry import config``) loads on its own, without the heavier store
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    from alignloop.registry import store

    return getattr(store, name)
