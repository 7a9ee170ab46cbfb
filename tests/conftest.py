"""Shared test fixtures. Tests never download: they use the `tiny` alias (a 2-layer random Llama built from a
config, with the SmolLM2 tokenizer that ships in the package) and data files they write themselves."""

from __future__ import annotations

import os

import pytest
from testutil import DATA, REPO, python_cmd, write_jsonl  # noqa: F401  (re-exported for older imports)


@pytest.fixture(scope="session", autouse=True)
def _alignloop_home(tmp_path_factory):
    """One alignloop home per test session: caches and the default database never touch the user's."""
    home = tmp_path_factory.mktemp("alignloop-home")
    old = os.environ.get("ALIGNLOOP_HOME")
    os.environ["ALIGNLOOP_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield home
    if old is None:
        os.environ.pop("ALIGNLOOP_HOME", None)
    else:
        os.environ["ALIGNLOOP_HOME"] = old


@pytest.fixture(scope="session")
def tiny_path(_alignloop_home):
    from alignloop.models.load import resolve_model

    return resolve_model("tiny")


@pytest.fixture
def sft_file(tmp_path):
    rows = [{"prompt": f"What is {i} plus {i}?", "completion": f"{i} plus {i} is {2 * i}."} for i in range(12)]
    return write_jsonl(tmp_path / "sft.jsonl", rows)
