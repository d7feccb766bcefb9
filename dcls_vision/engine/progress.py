"""Throughput and progress of the training loop as one plain line every ``logger.log_interval`` optimizer steps.

The tqdm bars need a terminal; a SLURM job has none, so these lines (stdout, ``log.txt`` and W&B) are what shows
that a run is alive and how fast it goes. Times are host wall-clock between log lines: every optimizer step ends
with a host sync (the NaN/preemption check reads a device flag), so no extra CUDA synchronisation is needed.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch


@dataclass
class Window:
    """What happened since the previous log line: seconds, data-wait seconds, images (this rank), optimizer steps."""

    seconds: float
    data_seconds: float
    images: int
    steps: int


class StepMeter:
    """Counts images, optimizer steps and the time spent waiting for the loader between two log lines.

    The loop calls :meth:`fetched` when a batch arrives and :meth:`mark` when it is done with it (and counts
    ``steps``); from a :meth:`fetched` to the next :meth:`mark` is compute, from a :meth:`mark` to the next
    :meth:`fetched` is waiting for the loader.
    """

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        """Start a new window now (an epoch start, or after a pause the rates should not include)."""
        self.t0 = self.t_mark = time.perf_counter()
        self.data_s, self.images, self.steps = 0.0, 0, 0

    def fetched(self, images: int) -> None:
        self.data_s += time.perf_counter() - self.t_mark
        self.images += images

    def mark(self) -> None:
        self.t_mark = time.perf_counter()

    def take(self) -> Window:
        """The window so far; the next one starts now."""
        w = Window(time.perf_counter() - self.t0, self.data_s, self.images, self.steps)
        self.restart()
        return w


def hms(seconds: float) -> str:
    """``H:MM:SS`` (hours not wrapped at a day)."""
    s = max(int(round(seconds)), 0)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def significant(x: float, digits: int = 4) -> str:
    """``x`` in fixed-point with at least ``digits`` significant digits (never an exponent).

    Log lines are read by people and parsed by tools: a fixed number of decimals turns a 17 ms step into
    ``0.017`` (2 digits, a 3 % rounding error), so products such as img/s × s/step stop matching.
    """
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return f"{x:.{digits - 1}f}"
    decimals = max(digits - 1 - math.floor(math.log10(abs(x))), 1)
    return f"{x:.{decimals}f}"


def step_time(seconds: float) -> str:
    """One optimizer step's wall time: milliseconds below 1 s (``17.23ms``), else seconds (``2.315s``)."""
    return f"{significant(seconds * 1000)}ms" if seconds < 1 else f"{significant(seconds)}s"


def peak_memory_gib(device: torch.device) -> float | None:
    """Peak CUDA memory allocated by this process so far (GiB); None off CUDA."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


@dataclass
class Progress:
    """Where the run is: global step, epoch (0-based) of ``epochs``, step in epoch of ``steps_per_epoch``."""

    global_step: int
    epoch: int
    epochs: int
    step_in_epoch: int
    steps_per_epoch: int


def step_scalars(
    w: Window, p: Progress, loss: float, lr: float, world: int, memory_gib: float | None, epoch_end_s: float = 0.0
) -> dict[str, float]:
    """The W&B scalars of one log line (``train/...``).

    ETAs: the steps left times this window's mean step time; the run's adds, per epoch end left, the last
    epoch end's validation + checkpoint time ``epoch_end_s`` (0 before the first epoch ended).
    """
    step_s = w.seconds / max(w.steps, 1)
    left_epoch = p.steps_per_epoch - p.step_in_epoch
    left_epochs = p.epochs - p.epoch - 1
    left_run = (left_epoch + left_epochs * p.steps_per_epoch) * step_s + (left_epochs + 1) * epoch_end_s
    per_proc = w.images / w.seconds if w.seconds > 0 else 0.0
    out = {
        "train/loss": loss,
        "train/lr": lr,
        "train/epoch_progress": p.epoch + p.step_in_epoch / p.steps_per_epoch,
        "train/img_per_s": per_proc,
        "train/img_per_s_global": per_proc * world,
        "train/data_share": w.data_seconds / w.seconds if w.seconds > 0 else 0.0,
        "train/step_time": step_s,
        "train/eta_epoch_s": left_epoch * step_s,
        "train/eta_run_s": left_run,
    }
    if memory_gib is not None:
        out["train/peak_mem_gib"] = memory_gib
    return out


def step_line(p: Progress, s: dict[str, float]) -> str:
    """One console/log.txt line from :func:`step_scalars`; docs/training.md "Progress lines" explains each field."""
    parts = [
        f"step {p.global_step}",
        f"epoch {p.epoch + 1}/{p.epochs} {p.step_in_epoch}/{p.steps_per_epoch}",
        f"loss {s['train/loss']:.4f}",
        f"lr {s['train/lr']:.3e}",
        f"img/s {significant(s['train/img_per_s'])} (global {significant(s['train/img_per_s_global'])})",
        f"data {100 * s['train/data_share']:.1f}%",
        f"{step_time(s['train/step_time'])}/step",
    ]
    if "train/peak_mem_gib" in s:
        parts.append(f"mem {s['train/peak_mem_gib']:.2f}GiB")
    parts.append(f"eta epoch {hms(s['train/eta_epoch_s'])} run {hms(s['train/eta_run_s'])}")
    return " | ".join(parts)
