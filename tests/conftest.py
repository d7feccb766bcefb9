"""Shared fixtures: the loopback SLURM cluster (slurm/local_cluster.sh), started once per session."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local_cluster.sh"


def _run(cmd: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def cluster():
    """The local cluster: started here unless already up; stopped at the end only if started here."""
    up = _run(["bash", str(CLUSTER), "status"])
    started = up.returncode != 0
    if started:
        proc = _run(["bash", str(CLUSTER), "start"], timeout=180)
        assert proc.returncode == 0, f"local SLURM cluster did not start:\n{proc.stdout}\n{proc.stderr}"
    conf = _run(["bash", str(CLUSTER), "env"]).stdout.strip().split("=", 1)[1]
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "OMP_NUM_THREADS")}
    os.environ["SLURM_CONF"] = conf
    os.environ["OMP_NUM_THREADS"] = "1"  # deterministic and comparable across launchers; 2 cores, 2 processes
    yield conf
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    if started:
        _run(["bash", str(CLUSTER), "stop"], timeout=60)
