"""Atomic, ``weights_only``-loadable checkpoints and RNG state capture.

Files are written to a temporary file in the target directory, fsynced, then ``os.replace``d, so a run
killed at any moment leaves either the previous or the new file, never a torn one. Contents are tensors
and primitive containers only, so ``torch.load(path, weights_only=True)`` works (no pickled objects).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

LAST, BEST, BEST_EMA = "last.pth", "best.pth", "best_ema.pth"
_EPOCH_RE = re.compile(r"^epoch_(\d{4,})\.pth$")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same dir + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`atomic_save` (``weights_only=True``: no code execution)."""
    return torch.load(path, map_location=map_location, weights_only=True)


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
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda_states])
