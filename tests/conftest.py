"""Shared fixtures: the loopback SLURM cluster (slurm/local_cluster.sh), started once per session; mmengine's
global loggers kept usable between tests."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "slurm" / "local_cluster.sh"


@pytest.fixture(autouse=True)
def _drop_closed_mmengine_loggers():
    """An in-process mmengine Runner leaves its MMLogger as the "current instance" with a log file that is closed
    once the run ends; a later test's ``BaseModule.init_weights`` writes to it. Forget such loggers after each test
    (mmengine is never imported for this)."""
    yield
    logging_mod = sys.modules.get("mmengine.logging")
    if logging_mod is None:
        return
    instances = logging_mod.MMLogger._instance_dict
    for name, logger in list(instances.items()):
        if any(isinstance(h, logging.FileHandler) and h.stream is None for h in logger.handlers):
            del instances[name]


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


CLUSTER2_ENV = {"DCLS_SLURM_DIR": "/tmp/dcls-slurm-2n", "DCLS_SLURM_PORT_BASE": "16827"}


def _netns_unavailable() -> str | None:
    """Why a two-node cluster cannot start here (one line), or None."""
    import shutil

    if os.geteuid() != 0:
        return "the two-node SLURM cluster needs root (network namespaces)"
    missing = [c for c in ("ip", "nsenter", "unshare", "slurmctld", "slurmd", "sbatch") if shutil.which(c) is None]
    if missing:
        return f"the two-node SLURM cluster needs {', '.join(missing)} (bash slurm/install.sh; iproute2)"
    probe = f"dclsprobe{os.getpid()}"
    made = _run(["ip", "netns", "add", probe])
    if made.returncode != 0:
        return f"network namespaces are not allowed here: {made.stderr.strip().splitlines()[-1:] or ['ip netns add']}"
    _run(["ip", "netns", "del", probe])
    return None


@pytest.fixture(scope="module")
def cluster2():
    """A two-node cluster (node1, node2: one network namespace each, slurm/local_cluster.sh start --nodes 2),
    beside the loopback one (own state dir and ports); stopped at the end of the module if started here."""
    why = _netns_unavailable()
    if why:
        pytest.skip(why)
    env = {**os.environ, **CLUSTER2_ENV}

    def run(*a: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(CLUSTER), *a], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
        )

    started = run("status").returncode != 0
    if started:
        proc = run("start", "--nodes", "2", timeout=180)
        assert proc.returncode == 0, f"two-node SLURM cluster did not start:\n{proc.stdout}\n{proc.stderr}"
    conf = run("env").stdout.strip().split("=", 1)[1]
    saved = {k: os.environ.get(k) for k in ("SLURM_CONF", "OMP_NUM_THREADS")}
    os.environ["SLURM_CONF"] = conf
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        yield {"conf": conf, "started": started, "env": env}
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if started:
            run("stop", timeout=90)
