"""Preemption and time limits: a signal becomes a ``last.pth`` at the next optimizer-step boundary.

A signal handler only sets a flag; the trainer all-reduces it with its per-step NaN check, so every rank
saves at the same step (the save is collective) and the run resumes exactly there. What a signal means:

* stop (save, then stop): SIGUSR2 — submitit's preemption/time-limit signal (``$SUBMITIT_PREEMPT_SIGNAL``
  overrides it) — and SIGTERM when the process has no Python handler for it: plain runs, torchrun workers
  and srun tasks, which SLURM sends SIGTERM on ``scontrol requeue``, preemption and ``scancel`` (then SIGKILL
  after KillWait), and which ``slurm/train.sbatch`` sends SIGTERM before its time limit.
* save only (save, keep training): SIGTERM when a launcher already handles it (submitit ignores it and
  waits for SIGUSR2), so a preemption that ends in SIGKILL still loses at most one step.

After the save, :meth:`PreemptionGuard.hand_over` gives each caught stop signal to the handler that was there
before (submitit's: pickle the callable, ``scontrol requeue``, exit on rank 0), then :class:`Preempted` is raised.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any

NONE, SAVE, STOP = 0, 1, 2
EXIT_PREEMPTED = 3  # train.py's exit code: stopped by a signal, last.pth saved, rerun to resume


class Preempted(RuntimeError):
    """Training stopped on a signal after saving ``last.pth``; the same run dir resumes from it."""


def _usr_signal() -> signal.Signals:
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper()
    sig = getattr(signal, name if name.startswith("SIG") else f"SIG{name}", None)
    if not isinstance(sig, signal.Signals):
        raise ValueError(f"SUBMITIT_PREEMPT_SIGNAL={name!r} is not a signal name; allowed: e.g. USR1, USR2")
    return sig


class PreemptionGuard:
    """Context manager installing the flag-setting handlers (main thread only; elsewhere it stays inert)."""

    def __init__(self) -> None:
        self.level = NONE
        self.caught: list[signal.Signals] = []
        self._prev: dict[signal.Signals, Any] = {}
        self._mode: dict[signal.Signals, int] = {}

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            return self
        usr = _usr_signal()
        self._mode[usr] = STOP
        term = signal.getsignal(signal.SIGTERM)
        if usr != signal.SIGTERM and term is not signal.SIG_IGN:
            self._mode[signal.SIGTERM] = SAVE if callable(term) else STOP
        for sig in self._mode:
            self._prev[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        self._restore()

    def _restore(self) -> None:
        for sig, prev in self._prev.items():
            signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
        self._prev.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        sig = signal.Signals(signum)
        self.level = max(self.level, self._mode.get(sig, STOP))
        if sig not in self.caught:
            self.caught.append(sig)

    def pending(self) -> int:
        """NONE, SAVE or STOP: what this process was asked for so far."""
        return self.level

    def saved(self) -> None:
        """A save-only request was served."""
        if self.level == SAVE:
            self.level = NONE

    def describe(self) -> str:
        return "+".join(s.name for s in self.caught) or "a signal on another rank"

    def hand_over(self) -> None:
        """Restore the previous handlers and call the Python ones for the stop signals caught (submitit's
        requeue); SIG_DFL/SIG_IGN are not called: the caller raises :class:`Preempted` next."""
        prev = dict(self._prev)
        self._restore()
        for sig in self.caught:
            handler = prev.get(sig)
            if self._mode.get(sig) == STOP and callable(handler):
                handler(int(sig), None)


__all__ = ["EXIT_PREEMPTED", "NONE", "SAVE", "STOP", "Preempted", "PreemptionGuard"]
