"""The model registry: ``tables``, lineage queries and the handle (``store``), run ``recording``, model ``cards``,
``migrations`` and the ``models`` commands. ``alignloop.registry.X`` finds X in whichever of them owns it."""

import importlib
import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    # a submodule (``from alignloop.registry import config``) loads on its own, without the heavier store
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    from alignloop.registry import cards, recording, store, tables

    for module in (store, recording, cards, tables):
        if hasattr(module, name):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
