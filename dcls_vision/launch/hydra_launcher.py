"""``hydra/launcher=slurm``: hydra-submitit-launcher does the work (job arrays, requeue through its
``checkpoint``); this callback adds what a user needs before any job runs — one-line errors for a missing
``sbatch``, an unknown partition or resources the cluster cannot give — and writes ``command.sh`` and
``launch.json`` into the sweep dir.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from dcls_vision.utils.errors import EXIT_USER_ERROR, error_line

from .options import LaunchError, LaunchOptions
from .slurm import preflight


def launcher_options(launcher: DictConfig) -> LaunchOptions:
    """The resources of ``hydra.launcher`` (hydra-submitit-launcher's keys) as :class:`LaunchOptions`."""
    p = OmegaConf.to_container(launcher, resolve=True)
    assert isinstance(p, dict)
    return LaunchOptions(
        nodes=int(p.get("nodes") or 1),
        gpus_per_node=int(p.get("gpus_per_node") or 0),
        tasks_per_node=p.get("tasks_per_node"),
        cpus_per_task=p.get("cpus_per_task"),
        mem_gb=p.get("mem_gb"),
        partition=p.get("partition"),
        account=p.get("account"),
        qos=p.get("qos"),
        constraint=p.get("constraint"),
        time_min=int(p.get("timeout_min") or 1),
    )


class SlurmLaunchRecord(Callback):
    """Checks the SLURM request with ``sbatch --test-only`` and records the launch, before the sweep starts."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            preflight(launcher_options(config.hydra.launcher))
        except LaunchError as e:
            # Hydra turns a callback's exception into a warning and goes on; a bad request must stop here
            print(error_line(e), file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        sweep_dir = Path(str(config.hydra.sweep.dir)).resolve()
        sweep_dir.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, *sys.argv]
        stamp = time.strftime("%FT%T%z")
        (sweep_dir / "command.sh").write_text(
            f"#!/usr/bin/env bash\n# Submitted {stamp}; rerunning this submits the same sweep again.\n"
            f"cd {shlex.quote(os.getcwd())}\n{shlex.join(argv)}\n"
        )
        (sweep_dir / "command.sh").chmod(0o755)
        record = {
            "launcher": "hydra/launcher=slurm",
            "submitted_at": stamp,
            "argv": argv,
            "cwd": os.getcwd(),
            "sweep_dir": str(sweep_dir),
            "overrides": list(config.hydra.overrides.task),
            "slurm": OmegaConf.to_container(config.hydra.launcher, resolve=True),
            "submitit_folder": str(config.hydra.launcher.submitit_folder),
        }
        (sweep_dir / "launch.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
