"""The public surface: every dotted name that the README, docs/, examples/ and benchmarks/ name still imports
(today's files, and a frozen list of what they named before the package restructuring), and every command's
``--help`` imports no torch (tests/unit/core/test_config.py checks the top-level ``alignloop --help``)."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from testutil import REPO

DOCS = ["README.md", "docs", "examples", "benchmarks"]
TEXT_SUFFIXES = {".md", ".py", ".sh", ".yaml", ".yml", ".toml", ".txt", ".cfg", ".ini"}

# Words that look like dotted names but are not: the default database file, and a benchmark comment that names
# the reward trainer's entry point by the `run(cfg)` convention while the function is still `run_train`.
NOT_NAMES = {"alignloop.db", "alignloop.train.reward.run", "alignloop.trainers.reward.run"}

# What README.md, docs/, examples/ and benchmarks/ named at commit ca9066a, before the package restructuring
# (collected with `names_in` below; each imported then). Users' code, saved configs and job rows use them.
FROZEN = [
    "alignloop.Client",
    "alignloop.client.ClientError",
    "alignloop.config",
    "alignloop.config:DPOConfig",
    "alignloop.config:RewardTrainConfig",
    "alignloop.config:alignloop_home",
    "alignloop.data.batching",
    "alignloop.data.batching:SkipReport",
    "alignloop.data.batching:answer_mask",
    "alignloop.data.batching:batches",
    "alignloop.data.batching:cache_key",
    "alignloop.data.batching:file_fingerprint",
    "alignloop.data.batching:flatten",
    "alignloop.data.batching:save_cached",
    "alignloop.data.readers",
    "alignloop.data.readers:qa_prompt",
    "alignloop.data.readers:read_preferences",
    "alignloop.data.readers:read_records",
    "alignloop.data.records",
    "alignloop.data.records:Prompt",
    "alignloop.data.splits",
    "alignloop.data.templates",
    "alignloop.data.templates:encode_prompt",
    "alignloop.data.templates:stop_token_ids",
    "alignloop.evaluate.qa",
    "alignloop.evaluate.qa.extract_numbers",
    "alignloop.evaluate.qa.numeric_match",
    "alignloop.evaluate.qa:extract_numbers",
    "alignloop.evaluate.qa:numeric_match",
    "alignloop.feedback",
    "alignloop.feedback.io",
    "alignloop.feedback.io:export_preferences",
    "alignloop.feedback.io:import_file",
    "alignloop.feedback.io:import_records",
    "alignloop.feedback.store",
    "alignloop.feedback.store:Assignment",
    "alignloop.feedback.store:Database",
    "alignloop.feedback.store:Judgment",
    "alignloop.feedback.store:Labeler",
    "alignloop.feedback.store:add_judgment",
    "alignloop.feedback.store:create_labeler",
    "alignloop.feedback.store:create_project",
    "alignloop.feedback.store:get_project",
    "alignloop.feedback.store:open_db",
    "alignloop.feedback:auth",
    "alignloop.judges.base.HHH_PRINCIPLES",
    "alignloop.judges.commands.sample_and_judge",
    "alignloop.judges.local.LocalJudge",
    "alignloop.load_model",
    "alignloop.losses",
    "alignloop.losses:masked_token_nll",
    "alignloop.losses:token_logprobs",
    "alignloop.models.heads",
    "alignloop.models.heads:build_reward_model",
    "alignloop.models.heads:load_reward_model",
    "alignloop.models.heads:shared_batch",
    "alignloop.models.heads:token_budget_batches",
    "alignloop.models.load",
    "alignloop.models.load:add_lora",
    "alignloop.models.load:disable_dropout",
    "alignloop.models.load:load_causal_lm",
    "alignloop.models.load:load_model",
    "alignloop.models.load:resolve_model",
    "alignloop.rewards",
    "alignloop.rewards.register_source",
    "alignloop.rewards:RewardModelSource",
    "alignloop.rewards:financebench_numeric",
    "alignloop.rollout",
    "alignloop.rollout.generate_rollout",
    "alignloop.rollout:SamplingParams",
    "alignloop.rollout:generate_rollout",
    "alignloop.rollout:left_pad",
    "alignloop.rollout:sample_ids",
    "alignloop.rollout:sequence_logprobs",
    "alignloop.rollout:truncate_after_stop",
    "alignloop.serve",
    "alignloop.serve:build",
    "alignloop.serve_config",
    "alignloop.serve_config:ServeConfig",
    "alignloop.train",
    "alignloop.train.dpo",
    "alignloop.train.dpo.run",
    "alignloop.train.dpo.write_preferences",
    "alignloop.train.dpo:answer_logps",
    "alignloop.train.dpo:build_batch",
    "alignloop.train.dpo:build_flat_batch",
    "alignloop.train.dpo:pack_rows",
    "alignloop.train.dpo:preference_accuracy",
    "alignloop.train.dpo:tokenize_pairs",
    "alignloop.train.engine",
    "alignloop.train.engine:read_metrics",
    "alignloop.train.reward",
    "alignloop.train.reward:load_units",
    "alignloop.train.reward:run_train",
    "alignloop.train.rl",
    "alignloop.train.rl:load_prompts",
    "alignloop.train.sft",
    "alignloop.train.sft:tokenize_examples",
    "alignloop.train:dpo",
]

DOTTED = re.compile(r"(?<![\w./-])alignloop(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?(?![\w/-])")
FROM_IMPORT = re.compile(r"^\s*from\s+(alignloop(?:\.\w+)*)\s+import\s+(\([^)]*\)|[^\n]+)", re.M)
IMPORT = re.compile(r"^\s*import\s+(alignloop(?:\.\w+)+)", re.M)


def doc_files(root: Path) -> list[Path]:
    out = []
    for name in DOCS:
        p = root / name
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else []
        out += [f for f in files if f.suffix in TEXT_SUFFIXES]
    return out


def names_in(text: str) -> set[str]:
    """``alignloop.a.b``, ``alignloop.a:b`` (as in ``python:alignloop.rewards:fn``) and ``from alignloop.a import
    b, c`` (as ``alignloop.a:b``)."""
    found = {m.group(0) for m in DOTTED.finditer(text)}
    found |= {m.group(1) for m in IMPORT.finditer(text)}
    for m in FROM_IMPORT.finditer(text):
        module, names = m.group(1), m.group(2).split("#")[0].strip("() \n")
        found.add(module)
        for part in names.replace("\n", " ").split(","):
            word = part.split("#")[0].strip().split(" as ")[0].strip()
            if word.isidentifier():
                found.add(f"{module}:{word}")
    return found - NOT_NAMES


def resolve(name: str):
    """Import a dotted name: ``module:attr``, or the longest importable module prefix and attributes after it."""
    if ":" in name:
        module, attr = name.split(":")
        mod = importlib.import_module(module)
        return getattr(mod, attr) if hasattr(mod, attr) else importlib.import_module(f"{module}.{attr}")
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module.startswith(exc.name) and exc.name != module:
                raise  # the module exists but something it imports is missing
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(name)


def current_names() -> list[str]:
    return sorted(set().union(*(names_in(f.read_text(errors="replace")) for f in doc_files(REPO))))


def test_the_collector_finds_the_documented_names():
    found = current_names()
    for name in ("alignloop.Client", "alignloop.load_model", "alignloop.rewards:financebench_numeric",
                 "alignloop.feedback.store:open_db"):
        assert name in found, name
    assert names_in("`alignloop.db` in the home\n    from alignloop.x import (a,\n  b as c)  # note") == {
        "alignloop.x", "alignloop.x:a", "alignloop.x:b"}


@pytest.mark.parametrize("name", sorted(set(FROZEN) | set(current_names())))
def test_documented_name_imports(name):
    assert resolve(name) is not None


def test_library_api_is_callable_from_a_fresh_interpreter():
    """README: ``alignloop.train("sft", ...)``, ``alignloop.load_model(...)``, ``alignloop.Client(...)``."""
    code = "import alignloop; print([callable(getattr(alignloop, n)) for n in ('train', 'load_model', 'Client')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[True, True, True]"


HELP_EVERY_COMMAND = r"""
import contextlib, io, json, re, sys
from alignloop.cli import main

def run(argv):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
    return code, buf.getvalue()

_, top = run(["--help"])
commands = [m.group(1) for m in re.finditer(r"^  ([a-z][a-z-]*(?: [a-z][a-z-]*)?)  ", top, re.M)]
report = {"commands": commands, "failed": [], "torch_after": None}
for cmd in commands:
    code, text = run(cmd.split() + ["--help"])
    if code not in (0, None) or "usage:" not in text:
        report["failed"].append([cmd, code, text[-300:]])
    if report["torch_after"] is None and "torch" in sys.modules:
        report["torch_after"] = cmd
print(json.dumps(report))
"""


def test_every_command_help_imports_no_torch():
    proc = subprocess.run([sys.executable, "-c", HELP_EVERY_COMMAND], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(report["commands"]) >= 20 and {"sft", "reward train", "label serve", "models list"} <= set(
        report["commands"])
    assert report["failed"] == []
    assert report["torch_after"] is None, f"`alignloop {report['torch_after']} --help` imports torch"
