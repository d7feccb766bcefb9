"""One user-error base class, one CLI wrapper: every entry point turns a bad value into one stderr line, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dcls_vision.utils.errors import UserError, error_line, run_cli

ROOT = Path(__file__).resolve().parents[1]


def _one_line_exit_2(args: list[str], *needles: str) -> str:
    """Run ``python ARGS`` from the repository root; it must exit 2 with one stderr line holding every needle."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert all(n in lines[0] for n in needles), lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------------------ the wrapper
def test_run_cli_turns_only_user_errors_into_one_line_exit_2(capsys):
    def bad() -> None:
        raise UserError("--size 'x' is invalid;\nallowed: an integer")

    with pytest.raises(SystemExit) as info:
        run_cli(bad, prog="tool.py")
    assert info.value.code == 2
    assert capsys.readouterr().err == "tool.py: error: --size 'x' is invalid; allowed: an integer\n"

    assert run_cli(lambda: 7) == 7  # the return value passes through

    def crash() -> None:
        raise ValueError("a bug, not a bad input")

    with pytest.raises(ValueError, match="a bug"):  # only UserError is caught: a bug keeps its traceback
        run_cli(crash, prog="tool.py")
    assert capsys.readouterr().err == ""


def test_error_classes_share_the_base_and_runtime_failures_do_not():
    from dcls_vision.analysis.errors import AnalysisError
    from dcls_vision.downstream.cli import CliError
    from dcls_vision.engine.config import ConfigError
    from dcls_vision.engine.preemption import Preempted
    from dcls_vision.launch.options import LaunchError
    from dcls_vision.ops.algo_select import AlgorithmError
    from dcls_vision.robustness.classes import ClassListError
    from dcls_vision.robustness.config import EvalConfigError
    from dcls_vision.robustness.datasets import BenchmarkUnavailable

    for cls in (ConfigError, EvalConfigError, ClassListError, CliError, AnalysisError, LaunchError, AlgorithmError):
        assert issubclass(cls, UserError), cls
    assert (
        error_line(EvalConfigError("checkpoint='x' is not a file")) == "EvalConfigError: checkpoint='x' is not a file"
    )
    from dcls_vision.launch.slurm import JobFailed

    for cls in (Preempted, BenchmarkUnavailable, JobFailed):  # a signal, a benchmark to skip, a failed job
        assert not issubclass(cls, UserError), cls
    from dcls_vision.engine import NonFiniteLossError

    assert not issubclass(NonFiniteLossError, UserError)


# ----------------------------------------------------------------------------------------------- entry points
def test_train_py_bad_value(tmp_path):
    out = tmp_path / "run"
    line = _one_line_exit_2(["train.py", "optim.lr=-1", f"trainer.output_dir={out}"], "optim.lr=-1")
    assert line.startswith("ConfigError: optim.lr=-1.0 must be > 0")  # the schema makes it a float
    assert not out.exists()  # the run dir Hydra made is removed again


def test_eval_py_bad_value(tmp_path):
    missing = tmp_path / "missing.pth"
    line = _one_line_exit_2(
        ["eval.py", f"checkpoint={missing}", f"output_dir={tmp_path / 'out'}"], str(missing), "is not a file"
    )
    assert line.startswith("EvalConfigError: checkpoint=")
    assert not (tmp_path / "out").exists()


def test_tools_script_bad_value(tmp_path):
    line = _one_line_exit_2(
        ["tools/receptive_field.py", "--threshold", "2", "--out", str(tmp_path)], "--threshold 2.0", "allowed"
    )
    assert line.startswith("receptive_field.py: error: ")


def test_analysis_cli_bad_value(tmp_path):
    line = _one_line_exit_2(
        ["tools/plot_positions.py", "--run-dir", str(tmp_path / "nope"), "--out", str(tmp_path)],
        repr(str(tmp_path / "nope")),
        "allowed: a trainer run directory",
    )
    assert line.startswith("plot_positions.py: error: --run-dir ")


def test_downstream_cli_bad_value(tmp_path):
    """The launcher is checked before any config or mm package is read, so this runs without mmcv too."""
    line = _one_line_exit_2(
        ["-m", "dcls_vision.downstream.train", "x.py", "--launcher", "mpi"],
        "--launcher 'mpi'",
        "allowed: auto, none, pytorch, slurm",
    )
    assert line.startswith("python -m dcls_vision.downstream.train: error: ")
