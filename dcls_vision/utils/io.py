"""Low-level checkpoint IO: atomic writes and safe (``weights_only=True``) reads.

Files are written to a temporary file in the target directory, fsynced, then ``os.replace``d, so a run
killed at any moment leaves either the previous or the new file, never a torn one. Contents are tensors
and primitive containers only, so ``torch.load(path, weights_only=True)`` works (no pickled objects, no code
execution on load). Foreign files (published releases) may also hold the harmless objects of
:data:`SAFE_GLOBALS` (a training script's ``argparse.Namespace``), let through by ``torch.serialization``'s
allow-list, never by a plain unpickle; anything else is refused with one line naming its type. The trainer, the
model factory, the downstream backbones and the analysis tools all read and write checkpoints through this
module; it imports nothing else of ``dcls_vision`` but the user-error base class.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where checkpoints are read or written: the text writers stay light
    import torch

# File names the trainer writes in a run dir (best_ema.pth holds EMA weights under its "model" entry).
LAST, BEST, BEST_EMA = "last.pth", "best.pth", "best_ema.pth"
# Non-tensor objects a checkpoint may hold and that unpickle without running code: the training args some
# published releases save next to their weights. The only place this list lives.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
SAFETENSORS = ".safetensors"
_REFUSED = re.compile(r"GLOBAL ([\w.]+) was not an allowed global")


class UnsafeCheckpointError(UserError):
    """A checkpoint holding a pickled object outside tensors, plain containers and :data:`SAFE_GLOBALS`."""


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _serialise(obj: Any, path: Path, f: Any) -> None:
    """``torch.save``, or for ``*.safetensors`` the ``model`` state dict with the other entries as JSON metadata."""
    if path.suffix != SAFETENSORS:
        import torch

        torch.save(obj, f)
        return
    from safetensors.torch import save

    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        raise ValueError(f"{path}: a {SAFETENSORS} checkpoint holds {{'model': state_dict, ...JSON-able entries}}")
    state, seen = {}, set()
    for key, value in obj["model"].items():  # safetensors stores no aliasing: shared positions are written per key
        state[key] = value.detach().clone() if value.data_ptr() in seen else value.contiguous()
        seen.add(value.data_ptr())
    f.write(save(state, metadata={k: json.dumps(v) for k, v in obj.items() if k != "model"}))


def _load_safetensors(path: Path, map_location: str | torch.device) -> Any:
    """A bare state dict, or ``{"model": ..., <entries>}`` when the metadata holds our ``config`` entry."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(map_location)) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    if "config" not in meta:
        return state
    return {"model": state, **{k: json.loads(v) for k, v in meta.items() if k != "format"}}


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same dir + fsync + ``os.replace``); a
    ``.safetensors`` path holds the ``model`` state dict and the other entries as JSON metadata."""
    path = Path(path)
    return _atomic_write(path, lambda f: _serialise(obj, path, f))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same dir + fsync + ``os.replace``): a report or
    table being rewritten is never seen half-written, and a crash keeps the previous version."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write_text` for bytes (a PNG rendered into memory); readable by others (0644)."""
    return _atomic_write(Path(path), lambda f: f.write(data), mode=0o644)


def _atomic_write(path: Path, write: Callable[[BinaryIO], object], mode: int | None = None) -> Path:
    """Temp file in the same dir + fsync + ``os.replace`` + dir fsync: readers never see half a file and a crash
    keeps the previous one. ``mode``: else mkstemp's 0600 (checkpoints)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint with ``weights_only=True`` (tensors, primitive containers and :data:`SAFE_GLOBALS`),
    or a ``.safetensors`` file (no pickle at all).

    Raises :class:`UnsafeCheckpointError` naming the type of any other pickled object (torch's own message is
    a paragraph suggesting ``weights_only=False``, which would run the file's code).
    """
    if Path(path).suffix == SAFETENSORS:
        return _load_safetensors(Path(path), map_location)
    import torch

    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        found = _REFUSED.search(str(err))
        if found is None:
            raise
        allowed = ", ".join(f"{t.__module__}.{t.__qualname__}" for t in SAFE_GLOBALS)
        raise UnsafeCheckpointError(
            f"checkpoint={str(path)!r} cannot be loaded with weights_only=True: it holds a pickled {found[1]} object "
            f"(unpickling it could run code); allowed: tensors, plain containers and {allowed}"
        ) from None
