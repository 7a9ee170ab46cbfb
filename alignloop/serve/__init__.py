"""Serving: an OpenAI-compatible model server with feedback capture, the job queue, personal-data filtering.

The app (torch, FastAPI) loads on first use of one of its names, so ``alignloop.serve.config`` stays light.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    import alignloop.serve.app as app

    return getattr(app, name)
