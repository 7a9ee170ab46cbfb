"""Serving: an OpenAI-compatible model server with feedback capture, the job queue, personal-data filtering.

The app (torch, FastAPI) loads on first use of one of its names, so ``alignloop.serve.config`` stays light.
"""

import importlib
import importlib.util
from typing import Any


def __getattr__(name: str) -> Any:
    # a submodule (``from alignloop.serve import config``) loads on its own, without the heavier app
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    from alignloop.serve import app

    return getattr(app, name)
