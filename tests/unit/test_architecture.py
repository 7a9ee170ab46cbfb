"""The house rules, checked: import contracts (pyproject's [tool.importlinter]), ruff, and function size.

`make test` also runs `ruff check` and `lint-imports` before pytest; these tests make the same checks part of
the suite and show that the contracts can fail."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "alignloop"
BIN = Path(sys.executable).parent

#: the only functions allowed over MAX_LINES: the trainers' `run` functions, which read top to bottom as the
#: numbered steps of their algorithm (cleanrl style), and migrations (never edited once written)
MAX_LINES = 80
LONG_ALLOWED = {
    "alignloop/trainers/sft.py:run",
    "alignloop/trainers/reward.py:run",
    "alignloop/trainers/dpo.py:run",
    "alignloop/trainers/ppo.py:run",
    "alignloop/trainers/grpo.py:run",
}


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """Run import-linter with this repository's contracts against the package under ``root``."""
    return subprocess.run([str(BIN / "lint-imports"), "--config", str(REPO / "pyproject.toml"), "--no-cache"],
                          cwd=root, capture_output=True, text=True, env={"PYTHONPATH": str(root), "PATH": ""})


def test_import_contracts_hold():
    res = _lint_imports(REPO)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert "BROKEN" not in res.stdout


@pytest.mark.parametrize("module,line,contract", [
    ("alignloop/losses.py", "import alignloop.data.records", "losses import only torch"),
    ("alignloop/core/errors.py", "import torch", "core imports no torch"),
    ("alignloop/data/records.py", "import alignloop.cli", "Nothing imports the CLI"),
    ("alignloop/feedback/agreement.py", "import alignloop.trainers.engine", "feedback knows nothing of training"),
])
def test_a_forbidden_import_breaks_the_contracts(tmp_path, module, line, contract):
    copy = tmp_path / "repo"
    shutil.copytree(PACKAGE, copy / "alignloop", ignore=shutil.ignore_patterns("__pycache__", "assets", "web"))
    target = copy / module
    target.write_text(target.read_text() + f"\n{line}  # added by the test\n")
    res = _lint_imports(copy)
    assert res.returncode != 0, res.stdout[-3000:]
    verdicts = [ln for ln in res.stdout.splitlines() if contract in ln and ln.rstrip().endswith(("KEPT", "BROKEN"))]
    assert verdicts and verdicts[0].rstrip().endswith("BROKEN"), res.stdout[-3000:]


def test_ruff_is_clean():
    res = subprocess.run([str(BIN / "ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-4000:]


def _functions(path: Path):
    tree = ast.parse(path.read_text())
    stack = [(tree, "")]
    while stack:
        node, prefix = stack.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    yield name, child.end_lineno - child.lineno + 1
                stack.append((child, name + "."))


def test_no_function_over_80_lines():
    too_long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if "/migrations/versions/" in rel:
            continue
        for name, n in _functions(path):
            if n > MAX_LINES and f"{rel}:{name}" not in LONG_ALLOWED:
                too_long.append(f"{rel}:{name} ({n} lines)")
    assert not too_long, "functions over 80 lines:\n" + "\n".join(too_long)


def test_the_size_rule_can_fail(tmp_path):
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    p = tmp_path / "m.py"
    p.write_text(f"def long():\n{body}\n")
    assert [n for _, n in _functions(p)] == [MAX_LINES + 1]
