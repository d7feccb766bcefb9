"""The launcher's SLURM options: ``key=value`` arguments of ``python -m dcls_vision.launch`` → :class:`LaunchOptions`.

The bottom of :mod:`dcls_vision.launch`: no SLURM, no submitit, no training code, so parsing stays cheap and every
other launch module can import it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from dcls_vision.utils.errors import UserError

USAGE = """\
usage: python -m dcls_vision.launch experiment=NAME [SLURM options] [training overrides ...]
       python -m dcls_vision.launch downstream CONFIG [SLURM options] [downstream train arguments ...]
         (mmdet/mmseg fine-tuning: the arguments of python -m dcls_vision.downstream.train)

SLURM options (key=value; everything else is a training override, as for train.py):
  nodes=N              nodes (default 1)
  gpus_per_node=G      GPUs per node (default 0: CPU); one DDP process per GPU
  tasks_per_node=T     processes per node (default: G, or 1 without GPUs)
  cpus_per_task=C      CPUs per process (default: the partition's default)
  mem_gb=M             memory per node in GB (default: the partition's default)
  partition=P account=A qos=Q constraint=C   passed to sbatch as they are
  time=T               time limit: minutes, H:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS (default 60)
  job_name=NAME        (default dcls-<experiment name>)
  signal_delay_s=S     the job gets SIGUSR2 S seconds before its time limit, checkpoints and requeues (120)
  max_requeues=R       requeues after time limits (default 10; preemptions do not count)
  wait=true            block until the job ends, print its final metrics, exit non-zero if it failed
"""

_INT_KEYS = {
    "nodes": 1,
    "gpus_per_node": 0,
    "tasks_per_node": 1,
    "cpus_per_task": 1,
    "mem_gb": 1,
    "signal_delay_s": 0,
    "max_requeues": 0,
}
_STR_KEYS = ("partition", "account", "qos", "constraint", "job_name", "time", "wait")


class LaunchError(UserError):
    """A launch that cannot work; the message is one line naming the value and what is allowed."""


@dataclass
class LaunchOptions:
    """SLURM resources of one launch (``key=value`` arguments of the CLI)."""

    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    time_min: int = 60
    job_name: str | None = None
    signal_delay_s: int = 120
    max_requeues: int = 10
    wait: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # more #SBATCH flags (Python API only)
    # once one task has ended, srun kills the others after this long: a rank left hanging on a dead peer (or
    # frozen itself) must not hold the nodes until the time limit; set from trainer.dist_timeout_s by submit()
    task_exit_wait_s: int = 300

    @property
    def ntasks_per_node(self) -> int:
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus_per_node if self.gpus_per_node > 0 else 1


def parse_time(value: str) -> int:
    """SLURM's time formats → whole minutes (rounded up)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", value.strip())
    if not m:
        raise LaunchError(f"time={value!r} is not a SLURM time; allowed: minutes, H:MM:SS, D-HH, D-HH:MM, D-HH:MM:SS")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # minutes
        seconds = int(a) * 60
    minutes = math.ceil(seconds / 60)
    if minutes < 1:
        raise LaunchError(f"time={value!r} must be at least one minute")
    return minutes


def parse_args(argv: list[str]) -> tuple[LaunchOptions, list[str]]:
    """Split ``key=value`` arguments into launcher options and training overrides."""
    opts = LaunchOptions()
    overrides: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in (*_INT_KEYS, *_STR_KEYS):
            overrides.append(arg)
            continue
        if key in _INT_KEYS:
            if not re.fullmatch(r"\d+", value) or int(value) < _INT_KEYS[key]:
                raise LaunchError(f"{key}={value!r} must be an integer >= {_INT_KEYS[key]}")
            setattr(opts, key, int(value))
        elif key == "time":
            opts.time_min = parse_time(value)
        elif key == "wait":
            if value.lower() not in ("true", "false"):
                raise LaunchError(f"wait={value!r} is not a boolean; allowed: true, false")
            opts.wait = value.lower() == "true"
        else:
            if not value:
                raise LaunchError(f"{key}= is empty; give a value or leave the option out")
            setattr(opts, key, value)
    if opts.signal_delay_s >= opts.time_min * 60:
        raise LaunchError(
            f"signal_delay_s={opts.signal_delay_s} must be shorter than the time limit "
            f"({opts.time_min} min); allowed: a smaller delay or a longer time"
        )
    return opts, overrides


def to_argv(opts: LaunchOptions) -> list[str]:
    """The ``key=value`` arguments that give ``opts`` back (defaults left out): what ``command.sh`` reruns."""
    default = LaunchOptions()
    out = []
    for key in (
        "nodes",
        "gpus_per_node",
        "tasks_per_node",
        "cpus_per_task",
        "mem_gb",
        "partition",
        "account",
        "qos",
        "constraint",
        "job_name",
        "signal_delay_s",
        "max_requeues",
    ):
        if getattr(opts, key) != getattr(default, key):
            out.append(f"{key}={getattr(opts, key)}")
    if opts.time_min != default.time_min:
        out.append(f"time={opts.time_min}")
    return out


__all__ = ["USAGE", "LaunchError", "LaunchOptions", "parse_args", "parse_time", "to_argv"]
