"""Where alignloop keeps things: its home (caches, the default database) and the repository's data folder."""

from __future__ import annotations

import os
from pathlib import Path

#: the repository's ``data/`` folder (built-in FinanceBench questions and HH pairs); present in a source checkout
REPO_DATA = Path(__file__).resolve().parents[2] / "data"


def alignloop_home() -> Path:
    """Where alignloop keeps caches (converted models, tokenised data) and the default database."""
    return Path(os.environ.get("ALIGNLOOP_HOME") or Path.home() / ".cache" / "alignloop")
