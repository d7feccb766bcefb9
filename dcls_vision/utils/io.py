"""Low-level checkpoint IO: atomic writes and safe (``weights_only=True``) reads.

Files are written to a temporary file in the target directory, fsynced, then ``os.replace``d, so a run
killed at any moment leaves either the previous or the new file, never a torn one. Contents are tensors
and primitive containers only, so ``torch.load(path, weights_only=True)`` works (no pickled objects, no code
execution on load). Foreign files (published releases) may also hold the harmless objects of
:data:`SAFE_GLOBALS` (a training script's ``argparse.Namespace``), let through by ``torch.serialization``'s
allow-list, never by a plain unpickle; anything else is refused with one line naming its type. The trainer, the
model factory, the downstream backbones and the analysis tools all read and write checkpoints through this
module; it imports nothing else of ``dcls_vision`` but the error classes.

A write that fails with an ``OSError`` (a full disk, a read-only filesystem, a quota, a permission) raises
:class:`~dcls_vision.utils.errors.SaveError`: one line naming the file, the filesystem's free space, the size
needed and whether the previous file is intact (it always is: the temp file is removed). ``checksum=True`` also
keeps a ``<file>.sha256`` sidecar (``sha256sum -c`` format) so a later reader can tell a torn or bit-flipped file
from an intact one (:func:`checksum_problem`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from .errors import SaveError, UserError

if TYPE_CHECKING:  # torch is imported where checkpoints are read or written: the text writers stay light
    import torch

# File names the trainer writes in a run dir (best_ema.pth holds EMA weights under its "model" entry).
LAST, BEST, BEST_EMA = "last.pth", "best.pth", "best_ema.pth"
# Non-tensor objects a checkpoint may hold and that unpickle without running code: the training args some
# published releases save next to their weights. The only place this list lives.
SAFE_GLOBALS: tuple[type, ...] = (argparse.Namespace,)
SAFETENSORS = ".safetensors"
CHECKSUM_SUFFIX = ".sha256"
_SIDECAR_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")
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


def atomic_save(obj: Any, path: str | os.PathLike, checksum: bool = False) -> Path:
    """``torch.save`` to ``path`` atomically (temp file in the same dir + fsync + ``os.replace``); a
    ``.safetensors`` path holds the ``model`` state dict and the other entries as JSON metadata.
    ``checksum``: also keep ``<path>.sha256`` (:func:`replace_with_checksum`)."""
    path = Path(path)

    def write(f: Any) -> None:
        _serialise(obj, path, f)

    return _atomic_write(path, write, size=lambda: _count_bytes(write), checksum=checksum)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same dir + fsync + ``os.replace``): a report or
    table being rewritten is never seen half-written, and a crash keeps the previous version."""
    return atomic_write_bytes(path, text.encode())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write_text` for bytes (a PNG rendered into memory); readable by others (0644)."""
    return _atomic_write(Path(path), lambda f: f.write(data), mode=0o644, size=lambda: len(data))


def _atomic_write(
    path: Path,
    write: Callable[[BinaryIO], object],
    mode: int | None = None,
    size: Callable[[], int] | None = None,
    checksum: bool = False,
) -> Path:
    """Temp file in the same dir + fsync + ``os.replace`` + dir fsync: readers never see half a file and a crash
    keeps the previous one. ``mode``: else mkstemp's 0600 (checkpoints). ``size``: the bytes the file needs, for
    the :class:`SaveError` of a failed write (computed only then)."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if checksum:
            replace_with_checksum(Path(tmp), path, file_sha256(tmp))
        else:
            os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = oserror_in(err)
        if cause is None or isinstance(err, SaveError):
            raise
        raise save_error(path, cause, size() if size is not None else None) from cause
    _fsync_dir(path.parent)
    return path


class _ByteCounter:
    """A write-only sink that only counts: the size a failed write needed, without a disk."""

    def __init__(self) -> None:
        self.n = 0

    def write(self, data: bytes) -> int:
        self.n += len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _count_bytes(write: Callable[[Any], object]) -> int:
    counter = _ByteCounter()
    write(counter)
    return counter.n


def oserror_in(err: BaseException | None) -> OSError | None:
    """The OSError behind ``err``: torch.save reports a failed write as a RuntimeError ("unexpected pos ...")
    whose context is the OSError."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, OSError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def format_bytes(n: float) -> str:
    """``1.3 MB``-style size (decimal units, as ``df -H``)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_space(path: Path) -> int | None:
    """Bytes free for an unprivileged writer on the filesystem holding ``path`` (its nearest existing folder)."""
    for folder in (path, *path.parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def save_error(path: Path, err: OSError, needed: int | None) -> SaveError:
    """One line: which file could not be written and why, free space vs the size needed, what is still intact."""
    why = f"[Errno {err.errno}] {err.strerror}" if err.errno is not None and err.strerror else str(err)
    free = free_space(path.parent)
    space = f"{path.parent} has {format_bytes(free)} free" if free is not None else f"{path.parent} is not readable"
    if needed is not None:
        space += f", the file needs {format_bytes(needed)}"
    kept = f"the previous {path.name} is intact" if path.exists() else f"no previous {path.name} was there"
    return SaveError(f"writing {path} failed: {why}; {space}; {kept}")


# ----------------------------------------------------------------------------- checksum sidecars
def checksum_path(path: str | os.PathLike) -> Path:
    """``<path>.sha256``, the sidecar :func:`atomic_save` keeps with ``checksum=True``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def read_checksums(path: str | os.PathLike) -> list[str] | None:
    """The digests ``path``'s sidecar accepts (newest first), ``[]`` for an unreadable sidecar, None without one."""
    try:
        text = checksum_path(path).read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        return []
    return [m[1] for line in text.splitlines() if (m := _SIDECAR_LINE.match(line.strip()))]


def write_checksums(path: str | os.PathLike, digests: list[str]) -> None:
    """``path``'s sidecar (atomically), one ``sha256sum`` line per accepted digest."""
    path = Path(path)
    atomic_write_text(checksum_path(path), "".join(f"{d}  {path.name}\n" for d in dict.fromkeys(digests)))


def replace_with_checksum(tmp: Path, path: Path, digest: str) -> None:
    """``os.replace(tmp, path)`` with ``path``'s sidecar true at every moment: before the replace it accepts the
    new digest beside the old one(s), after it the new one only. A crash in between leaves either file verifying,
    so an interrupted save is never mistaken for a corrupt one."""
    old = read_checksums(path)
    if old:
        write_checksums(path, [digest, *old])
    os.replace(tmp, path)
    try:
        write_checksums(path, [digest])
    except SaveError:  # the two-digest sidecar written above still verifies the new file
        if not old:
            raise


def checksum_problem(path: str | os.PathLike) -> str | None:
    """None when ``path`` matches its sidecar (or has none), else why not (one phrase)."""
    recorded = read_checksums(path)
    if recorded is None:
        return None
    if not recorded:
        return f"its checksum file {checksum_path(path).name} is unreadable"
    actual = file_sha256(path)
    if actual in recorded:
        return None
    return (
        f"fails its checksum (sha256 {actual[:12]}... differs from {recorded[0][:12]}... in {checksum_path(path).name})"
    )


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
