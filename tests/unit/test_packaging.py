"""The built wheel holds every file of the package: an editable install reads the source tree and hides a data
file that pyproject's package-data forgets (a migration template, the studio's web assets, the tiny model's
tokenizer). The wheel is built from a copy of the files git knows, as from a fresh clone, offline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from testutil import REPO

BUILD_INPUTS = ["alignloop", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.py", "setup.cfg"]
MIGRATIONS = ["alignloop/feedback/migrations", "alignloop/registry/migrations"]


def git_files(*args: str) -> list[str]:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", *args], capture_output=True, text=True,
                             check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs a git checkout ({exc})")
    return [f for f in out.split("\0") if f and (REPO / f).is_file()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src, dist = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("dist")
    for rel in git_files("--cached", "--others", "--exclude-standard", "--", *BUILD_INPUTS):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(dist), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (whl,) = dist.glob("alignloop-*.whl")
    return whl


def wheel_names(whl: Path) -> set[str]:
    with zipfile.ZipFile(whl) as z:
        return set(z.namelist())


def test_wheel_holds_every_file_of_the_package(wheel):
    """Every file git tracks under alignloop/ (code and data alike) is in the wheel."""
    expected = set(git_files("--cached", "--", "alignloop"))
    assert any(not f.endswith(".py") for f in expected)  # the list really holds data files
    missing = sorted(expected - wheel_names(wheel))
    assert not missing, f"missing from the wheel (add them to [tool.setuptools.package-data]): {missing}"


def test_wheel_holds_the_files_each_feature_reads(wheel):
    """The same by feature, so a file that git stops tracking by mistake is caught too."""
    names = wheel_names(wheel)
    for folder in MIGRATIONS:
        for f in ("__init__.py", "env.py", "script.py.mako"):
            assert f"{folder}/{f}" in names, f"{folder}/{f}"
        assert any(n.startswith(f"{folder}/versions/") and n.endswith(".py") for n in names), folder
    if (REPO / "alignloop/feedback/alembic.ini").exists():
        assert "alignloop/feedback/alembic.ini" in names
    for prefix in ("alignloop/feedback/web/templates/", "alignloop/feedback/web/static/"):
        assert any(n.startswith(prefix) for n in names), prefix
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert f"alignloop/models/assets/smollm2-tokenizer/{f}" in names
    if (REPO / "alignloop/evaluate/templates").is_dir():
        assert any(n.startswith("alignloop/evaluate/templates/") for n in names)
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    with zipfile.ZipFile(wheel) as z:
        assert "alignloop = alignloop.cli:main" in z.read(entry_points).decode()
    assert not any("__pycache__" in n for n in names)


def test_both_migration_chains_run_from_the_unpacked_wheel(wheel, tmp_path):
    """Alembic finds env.py and versions/ inside the installed package, not only in the source tree."""
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    code = (
        "import alignloop, sys\n"
        f"assert alignloop.__file__.startswith({str(site)!r}), alignloop.__file__\n"
        "from alignloop.feedback.store import Database\n"
        "from alignloop.registry import open_registry\n"
        f"url = 'sqlite:///{tmp_path / 'a.db'}'\n"
        "Database(url).dispose(); open_registry(url).dispose()\n"
        "import sqlite3\n"
        f"c = sqlite3.connect({str(tmp_path / 'a.db')!r})\n"
        "print(c.execute('select version_num from alembic_version').fetchone()[0],"
        " c.execute('select version_num from alignloop_registry_version').fetchone()[0])\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [source_head(folder) for folder in MIGRATIONS]


def source_head(folder: str) -> str:
    from alembic.script import ScriptDirectory

    (head,) = ScriptDirectory(str(REPO / folder)).get_heads()
    return head
