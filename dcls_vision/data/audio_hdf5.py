"""AudioSet as most users hold it: the PANNs packed HDF5 files (``data.format=hdf5``).

Each file (``balanced_train.h5``, ``eval.h5``, ``unbalanced_train_partNN.h5`` or DCLS-Audio's combined
``full_unbal_bal_train_wav.h5``; DCLS-Audio INSTALL.md and datasets.py:38-44, 101-155) holds ``audio_name``
(N,) bytes, ``waveform`` (N, 320000) int16 at 32 kHz and ``target`` (N, 527) bool. A split is one file name
(``<root>/<name>.h5``) or several joined by ``+``, each possibly a glob (``balanced_train+unbalanced_train_part*``):
their clips are concatenated, which is how the unbalanced and balanced sets become one training split.

Clips are streamed from the files: nothing but the lengths is read at start, and every process (each DataLoader
worker, each DDP rank) opens its own read-only handles on first use, as the reference's lazy ``open_hdf5``
(an h5py handle must not cross a fork).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import AudioDataError, pad_or_truncate
from .audio_features import CLIP_SAMPLES

PANNS_KEYS = ("audio_name", "waveform", "target")
PANNS_FILES = "balanced_train.h5, eval.h5, full_unbal_bal_train_wav.h5 or unbalanced_train_partNN.h5"


def _h5py() -> Any:
    try:
        import h5py
    except ImportError as err:  # in requirements.txt; checked here so the error names the layout
        raise AudioDataError("data.format=hdf5 needs the h5py package (pip install h5py)") from err
    return h5py


def split_files(root: Path, split: str, option: str) -> list[Path]:
    """The files of ``split`` (``a+b*``: names or globs under ``root``, ``.h5`` optional), in the order given."""
    files: list[Path] = []
    for part in (p.strip() for p in split.split("+")):
        name = part if part.endswith((".h5", ".hdf5")) else f"{part}.h5"
        found = sorted(root.glob(name)) if any(c in name for c in "*?[") else [root / name]
        found = [f for f in found if f.is_file()]
        if not part or not found:
            present = ", ".join(sorted(p.name for p in root.glob("*.h5"))[:8]) or "none"
            raise AudioDataError(
                f"{option}={split!r}: no file {root / name}; allowed: PANNs packed files under data.root "
                f"({PANNS_FILES}), several joined by '+', globs allowed; .h5 files in {root}: {present}"
            )
        files += found
    return files


class AudioSetHDF5(Dataset):
    """The clips of one or more PANNs HDF5 files, as (float waveform in [-1, 1], multi-hot float target)."""

    multilabel = True

    def __init__(self, files: list[Path], clip_samples: int = CLIP_SAMPLES):
        h5py = _h5py()
        self.files, self.clip_samples = list(files), clip_samples
        lengths, widths = [], set()
        for path in self.files:
            with h5py.File(path, "r") as f:
                absent = [k for k in PANNS_KEYS if k not in f]
                if absent:
                    raise AudioDataError(
                        f"{path}: no {', '.join(absent)} dataset; expected the PANNs layout "
                        f"{', '.join(PANNS_KEYS)} (waveform (N, samples) int16 at 32 kHz, target (N, classes) bool)"
                    )
                n, shape = len(f["audio_name"]), f["target"].shape
                if len(shape) != 2 or shape[0] != n or f["waveform"].ndim != 2 or len(f["waveform"]) != n:
                    raise AudioDataError(
                        f"{path}: audio_name {n}, waveform {f['waveform'].shape}, target {shape}; expected N rows each"
                    )
                lengths.append(n)
                widths.add(int(shape[1]))
        if len(widths) != 1:
            raise AudioDataError(
                f"{' + '.join(map(str, self.files))}: files with {sorted(widths)} classes; join equals"
            )
        self.num_classes = widths.pop()
        self.offsets = np.cumsum([0, *lengths])
        self.classes = [str(i) for i in range(self.num_classes)]
        self.missing = 0
        self._handles: dict[int, Any] = {}
        self._pid = -1

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}, "_pid": -1}  # handles never travel to another process

    def _locate(self, i: int) -> tuple[Any, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"clip {i} out of range 0..{len(self) - 1}")
        if self._pid != os.getpid():  # a forked worker: its own handles
            self._handles, self._pid = {}, os.getpid()
        k = int(np.searchsorted(self.offsets, i, side="right") - 1)
        if k not in self._handles:
            self._handles[k] = _h5py().File(self.files[k], "r")
        return self._handles[k], i - int(self.offsets[k])

    def name(self, i: int) -> str:
        """The clip's ``audio_name`` (e.g. ``Y--PJHxphWEs.wav``)."""
        f, j = self._locate(i)
        raw = f["audio_name"][j]
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        f, j = self._locate(i)
        wave = np.asarray(f["waveform"][j])
        if np.issubdtype(wave.dtype, np.integer):
            wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)  # int16 / 2**15 as the reference
        wave = pad_or_truncate(wave.astype(np.float32), self.clip_samples)
        target = torch.from_numpy(np.asarray(f["target"][j], dtype=np.float32))
        return torch.from_numpy(np.ascontiguousarray(wave)), target

    @property
    def targets(self) -> np.ndarray:
        """All targets (N, classes) uint8, read from the files on each access (for the label priors only)."""
        h5py = _h5py()
        parts = []
        for path in self.files:
            with h5py.File(path, "r") as f:
                parts.append(np.asarray(f["target"][:], dtype=np.uint8))
        return np.concatenate(parts)


__all__ = ["PANNS_KEYS", "AudioSetHDF5", "split_files"]
