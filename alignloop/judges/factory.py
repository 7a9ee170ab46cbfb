"""The one place a judge is built from its kind and settings: ``alignloop judge``, ``alignloop eval``'s win rate
and the loop's on-policy rounds all call :func:`build_judge`, so an HTTP judge gets the same API-key variable,
response cache and principles wherever it is used."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from alignloop.core.paths import cache_dir as cache_folder

KINDS = ("reference", "local", "http", "reward")


def principles_text(value: str | None) -> str | None:
    """The judge's constitution: ``value`` itself, or the text of the file it names."""
    if value and len(value) < 4096 and Path(value).is_file():
        return Path(value).read_text()
    return value


def build_judge(kind: str, model: str | None = None, base_url: str | None = None, *,
                api_key_env: str = "OPENAI_API_KEY", principles: str | None = None,
                cache_dir: str | os.PathLike | None = None, timeout: float = 60.0, retries: int = 4,
                concurrency: int = 4, margin: float = 0.0) -> Any:
    """A judge of ``kind``: ``reference`` (gold answers, no model), ``local`` (``model``: a Hugging Face causal LM,
    default smollm2-135m-instruct), ``http`` (``model`` behind the OpenAI-compatible ``base_url``; the key is read
    from the variable ``api_key_env``; responses are cached in ``cache_dir``, default the alignloop home's
    ``cache/judge``) or ``reward`` (``model``: a reward-model folder; differences within ``margin`` are ties).
    ``principles`` (text, or a file) replace the HHH principles of the local and http judges."""
    if kind == "reference":
        from alignloop.judges.reference import ReferenceJudge

        return ReferenceJudge()
    if kind == "reward":
        from alignloop.judges.reward import RewardModelJudge

        return RewardModelJudge.from_dir(model or "", margin)
    if kind == "http":
        from alignloop.judges.http import HTTPJudge

        return HTTPJudge(base_url or "", model or "", api_key_env, principles_text(principles), timeout, retries,
                         concurrency=concurrency, cache_dir=cache_dir or cache_folder("judge"))
    if kind == "local":
        from alignloop.judges.local import LocalJudge

        return LocalJudge(model or "smollm2-135m-instruct", principles_text(principles))
    raise ValueError(f"unknown judge '{kind}' (choose from {', '.join(KINDS)})")
