"""The trainer's checkpoint files: epoch copies, temp-file clean-up and RNG state capture.

The atomic write and the safe (``weights_only=True``) read live one layer down in :mod:`dcls_vision.utils.io`
(the model factory and the downstream backbones use them too); they are re-exported here for the trainer.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcls_vision.utils.io import BEST, BEST_EMA, LAST, atomic_save, load_checkpoint

__all__ = [
    "BEST",
    "BEST_EMA",
    "LAST",
    "atomic_save",
    "clean_temp_files",
    "epoch_checkpoints",
    "load_checkpoint",
    "prune_epoch_checkpoints",
    "rng_state",
    "set_rng_state",
]

_EPOCH_RE = re.compile(r"^epoch_(\d{4,})\.pth$")


def epoch_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """``epoch_XXXX.pth`` files of a run, oldest first."""
    run_dir = Path(run_dir)
    found = [(int(m.group(1)), p) for p in run_dir.glob("epoch_*.pth") if (m := _EPOCH_RE.match(p.name))]
    return [p for _, p in sorted(found)]


def prune_epoch_checkpoints(run_dir: str | os.PathLike, keep_last: int) -> None:
    """Keep only the newest ``keep_last`` ``epoch_XXXX.pth`` files (``keep_last <= 0`` keeps none)."""
    files = epoch_checkpoints(run_dir)
    for p in files[: max(0, len(files) - max(0, keep_last))]:
        p.unlink(missing_ok=True)


def clean_temp_files(run_dir: str | os.PathLike) -> None:
    """Remove temp files left by a run killed during a save."""
    for p in Path(run_dir).glob(".*.pth.*.tmp"):
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- RNG state
def rng_state() -> dict[str, Any]:
    """torch/numpy/python(/cuda) RNG states as tensors and lists (``weights_only``-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
