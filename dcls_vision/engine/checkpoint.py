"""The trainer's checkpoint files: epoch copies, temp-file clean-up, intact-snapshot choice and RNG state capture.

The atomic write, the sha256 sidecars and the safe (``weights_only=True``) read live one layer down in
:mod:`dcls_vision.utils.io` (the model factory and the downstream backbones use them too); they are re-exported
here for the trainer.

``epoch_XXXX.pth`` is a hard link to the ``last.pth`` of that epoch's end: one inode, one copy on disk. So
``trainer.keep_last`` protects against a ``last.pth`` that is later torn or lost *by being replaced* (a later save,
a ``last.pth`` overwritten by a bad copy, a later epoch that went wrong): the older epoch files are other inodes.
It does not protect against damage to the file itself (a bit flip, an in-place truncation): that damages every
name of the inode, i.e. ``last.pth`` and the newest ``epoch_XXXX.pth`` together, and only the older epoch files
are a fallback. Nor does it protect against losing the disk: copy the run dir elsewhere for that.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dcls_vision.utils.errors import SaveError
from dcls_vision.utils.io import (
    BEST,
    BEST_EMA,
    LAST,
    atomic_save,
    checksum_path,
    checksum_problem,
    load_checkpoint,
    read_checksums,
    replace_with_checksum,
    save_error,
)

__all__ = [
    "BEST",
    "BEST_EMA",
    "LAST",
    "atomic_save",
    "clean_temp_files",
    "epoch_checkpoints",
    "link_epoch_checkpoint",
    "load_checkpoint",
    "load_intact",
    "prune_epoch_checkpoints",
    "rng_state",
    "run_dir_snapshots",
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
        checksum_path(p).unlink(missing_ok=True)


def link_epoch_checkpoint(last: Path, target: Path) -> None:
    """``target`` (``epoch_XXXX.pth``) as a hard link to ``last`` (a copy where links are not supported), with
    ``last``'s checksum in its sidecar; atomic like every checkpoint write (a failure raises :class:`SaveError`)."""
    tmp = target.with_name(f".{target.name}.link.tmp")
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(last, tmp)
        except OSError:
            shutil.copyfile(last, tmp)
        digests = read_checksums(last)
        if digests:
            replace_with_checksum(tmp, target, digests[0])
        else:
            os.replace(tmp, target)
    except SaveError:
        tmp.unlink(missing_ok=True)
        raise
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise save_error(target, err, last.stat().st_size if last.exists() else None) from err


def run_dir_snapshots(run_dir: str | os.PathLike) -> list[Path]:
    """A run dir's resumable checkpoints, newest first: ``last.pth``, then ``epoch_XXXX.pth`` by epoch."""
    run_dir = Path(run_dir)
    last = [run_dir / LAST] if (run_dir / LAST).is_file() else []
    return last + epoch_checkpoints(run_dir)[::-1]


def _load_problem(path: Path) -> tuple[Any, str | None]:
    """(the loaded checkpoint, None) or (None, why it cannot be used): a checksum mismatch or a load error."""
    problem = checksum_problem(path)
    if problem is not None:
        return None, problem
    try:
        return load_checkpoint(path, map_location="cpu"), None
    except Exception as err:  # torn zip, truncated pickle, I/O error: any reason makes this file unusable
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return None, f"cannot be loaded ({type(err).__name__}: {first[:160]})"


def load_intact(candidates: list[Path]) -> tuple[Path | None, Any, list[str]]:
    """The first of ``candidates`` (newest first) that matches its sha256 sidecar and loads, its content, and one
    line per candidate skipped on the way (a hard link of a skipped file is skipped without re-reading it)."""
    skipped: list[str] = []
    bad_inodes: dict[tuple[int, int], Path] = {}
    for path in candidates:
        st = path.stat()
        inode = (st.st_dev, st.st_ino)
        if inode in bad_inodes:
            skipped.append(f"checkpoint {path} is the same file as {bad_inodes[inode].name} (a hard link), skipped")
            continue
        state, problem = _load_problem(path)
        if problem is None:
            return path, state, skipped
        bad_inodes[inode] = path
        skipped.append(f"checkpoint {path} {problem}, skipped")
    return None, None, skipped


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
