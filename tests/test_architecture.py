"""The layers and the no-cycle rule of pyproject.toml's import-linter contracts hold (``lint-imports``), and a
copy of the package with an upward import or a cycle added breaks them: the contract is not vacuous."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` run from ``root`` (its pyproject.toml), importing the ``dcls_vision`` found there."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    exe = Path(sys.executable).with_name("lint-imports")
    cmd = [str(exe)] if exe.exists() else ["lint-imports"]
    return subprocess.run([*cmd, "--no-cache"], cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_import_contracts_hold():
    proc = _lint_imports(ROOT)
    assert proc.returncode == 0, f"lint-imports failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize(
    ("module", "line", "expected"),
    [
        # upward: the operator must not know the trainer
        (
            "ops/compat.py",
            "import dcls_vision.engine.trainer",
            "dcls_vision.ops is not allowed to import dcls_vision.engine",
        ),
        # a cycle inside launch: options is the bottom of launch
        ("launch/options.py", "from . import cli", "No cycles are allowed in dcls_vision.launch."),
        # a package nobody placed in the layers
        ("newpkg/__init__.py", "", "dcls_vision.newpkg"),
    ],
)
def test_import_contracts_catch_violations(tmp_path, module, line, expected):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    shutil.copytree(
        ROOT / "dcls_vision", tmp_path / "dcls_vision", symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
    )
    target = tmp_path / "dcls_vision" / module
    target.parent.mkdir(exist_ok=True)
    with target.open("a") as f:
        f.write(f"\n{line}\n")
    proc = _lint_imports(tmp_path)
    assert proc.returncode != 0 and expected in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize("args", [["check", "."], ["format", "--check", "."]], ids=["ruff-check", "ruff-format"])
def test_ruff_clean(args):
    """The tree is lint-clean and in ruff's format (pyproject.toml's settings); a failure prints what to fix."""
    proc = subprocess.run([sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, (
        f"ruff {' '.join(args)} failed (run `ruff {' '.join(args).replace('--check ', '')}`):\n"
        + (proc.stdout + proc.stderr)
    )
