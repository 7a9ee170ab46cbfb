"""The model registry: runs, models, jobs and served answers, their lineage, model cards and migrations."""

from typing import Any


def __getattr__(name: str) -> Any:
    import alignloop.registry.store as store

    return getattr(store, name)
