"""Where alignloop keeps things: its home (caches, the default database) and the repository's data folder."""

from __future__ import annotations

import os
from pathlib import Path

#: the repository's ``data/`` folder (built-in FinanceBench questions and HH pairs); present in a source checkout
REPO_DATA = Path(__file__).resolve().parents[2] / "data"


#: overrides ``cache_dir()``; a server's training jobs set it to their own folder
CACHE_ENV = "ALIGNLOOP_CACHE_DIR"


def registry_on() -> bool:
    """Whether runs, stages and ``--model`` names go through the model registry (``ALIGNLOOP_REGISTRY=off``: not)."""
    return os.environ.get("ALIGNLOOP_REGISTRY") != "off"


def alignloop_home() -> Path:
    """Where alignloop keeps caches (converted models, tokenised data) and the default database."""
    return Path(os.environ.get("ALIGNLOOP_HOME") or Path.home() / ".cache" / "alignloop")


def cache_dir(kind: str) -> Path:
    """The cache folder of one ``kind`` (``tokens``, ``features``, ``reference``, ``judge``): under
    ``$ALIGNLOOP_CACHE_DIR`` when set, else ``cache/`` in the alignloop home."""
    root = os.environ.get(CACHE_ENV)
    return (Path(root) if root else alignloop_home() / "cache") / kind
