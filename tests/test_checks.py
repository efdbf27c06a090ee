"""The checks .ci/run runs before the tests reject what they are there to reject: a layer importing upwards, a
framework in the reports or the agent, a top-level ``compress`` import, an untyped function in the core. Each runs
on a copy of the package with one bad line added, so a check that stopped checking fails here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

BIN = Path(sys.executable).parent


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package (its links followed into real folders, as a wheel holds it) and pyproject.toml, in a folder
    that a check run from there imports ``edgecraft`` from."""
    shutil.copytree(REPO / "edgecraft", tmp_path / "edgecraft", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    return tmp_path


def check(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd)}
    )


def add_line(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_the_unchanged_copy_passes_import_linter(copy: Path) -> None:
    completed = check("lint-imports", "--no-cache", cwd=copy)
    assert completed.returncode == 0, completed.stdout[-2000:]


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        (
            "core/files.py",
            "from edgecraft.bench import settings",
            "edgecraft.core is not allowed to import edgecraft.bench",
        ),
        (
            "targets/feeds.py",
            "from edgecraft import runner",
            "edgecraft.targets is not allowed to import edgecraft.runner",
        ),
        ("reports/html.py", "import torch", "edgecraft.reports is not allowed to import torch"),
        ("reports/csv_table.py", "import onnxruntime", "edgecraft.reports is not allowed to import onnxruntime"),
        ("bench/agent/protocol.py", "import onnx", "edgecraft.bench is not allowed to import onnx"),
    ],
)
def test_import_linter_rejects_an_import_against_the_layers(copy: Path, module: str, line: str, expected: str) -> None:
    add_line(copy / "edgecraft" / module, line)
    completed = check("lint-imports", "--no-cache", cwd=copy)
    assert completed.returncode == 1, completed.stdout[-2000:]
    assert expected in completed.stdout, completed.stdout[-2000:]


def test_ruff_rejects_a_top_level_import_of_a_part(copy: Path) -> None:
    """From the repository's root ``import compress`` would load a second copy of every module and registry."""
    add_line(copy / "edgecraft" / "runner.py", "import compress  # noqa: F401")
    completed = check("ruff", "check", "--no-cache", "edgecraft/runner.py", cwd=copy)
    assert completed.returncode == 1 and "TID251" in completed.stdout, completed.stdout


def test_mypy_holds_the_core_to_strict_typing(copy: Path) -> None:
    add_line(copy / "edgecraft" / "core" / "files.py", "def untyped(value):\n    return value")
    completed = check("mypy", "--no-incremental", "--follow-imports=silent", "edgecraft/core/files.py", cwd=copy)
    assert completed.returncode == 1 and "edgecraft/core/files.py" in completed.stdout, completed.stdout
    assert "missing a type annotation" in completed.stdout
