"""Resumable steps: a step's folder holds a ``done`` marker once it finished, so a second run skips it.

The demo's stages and the loop's stages both run through :func:`run_once` (one helper, one marker format)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from alignloop.core.files import write_json


def run_once(folder: Path, fn: Callable[[Path], Any], key: Any = None, force: bool = False,
             log: Callable[[str], None] = print, name: str | None = None) -> dict[str, Any]:
    """Run ``fn(folder)`` unless ``folder/done`` exists with the same ``key`` (what the step's input was).

    The marker is written last (atomically) and holds ``{"result": fn's JSON result, "seconds": wall time,
    "key": key}``, which is also what this returns (with ``"reused": True`` when the step was done before);
    ``force`` redoes the step."""
    name = name or folder.name
    marker = folder / "done"
    if marker.exists() and not force:
        done = json.loads(marker.read_text())
        if done.get("key") == key:
            log(f"{name}: done before, reusing {folder}")
            return {**done, "reused": True}
        log(f"{name}: its input changed ({done.get('key')} -> {key}), redoing it")
    folder.mkdir(parents=True, exist_ok=True)
    log(f"{name}: running")
    t0 = time.perf_counter()
    result = fn(folder)
    done = {"result": result, "seconds": round(time.perf_counter() - t0, 1), "key": key}
    write_json(marker, done, indent=None)
    log(f"{name}: finished in {done['seconds']} s")
    return done
