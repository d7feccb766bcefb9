"""Low-level checkpoint IO: atomic writes and safe (``weights_only=True``) reads.

Files are written to a temporary file in the target directory, fsynced, then ``os.replace``d, so a run
killed at any moment leaves either the previous or the new file, never a torn one. Contents are tensors
and primitive containers only, so ``torch.load(path, weights_only=True)`` works (no pickled objects, no code
execution on load). The trainer, the model factory, the downstream backbones and the analysis tools all read
and write checkpoints through this module; it imports nothing else of ``dcls_vision``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

# File names the trainer writes in a run dir (best_ema.pth holds EMA weights under its "model" entry).
LAST, BEST, BEST_EMA = "last.pth", "best.pth", "best_ema.pth"


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


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (tensors and primitive containers only: no code execution)."""
    return torch.load(path, map_location=map_location, weights_only=True)
