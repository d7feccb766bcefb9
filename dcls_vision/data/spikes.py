"""Spiking audio in the Heidelberg HDF5 layout (SHD, SSC, the embedded spiking digits) as (T, 140) count frames.

A file (``shd_{train,test}.h5``, ``ssc_{train,valid,test}.h5``) holds ``spikes/times`` (ragged, float seconds, one
array per sample), ``spikes/units`` (ragged ints 0..699, the cochlear channel of each spike), ``labels`` and
``extra/{speaker, keys, meta_info}``. A sample becomes spike counts per (time bin, channel group) as the SNN-delays
reference (Thvnvtos/SNN-delays datasets.py:109-110,126-128 through spikingjelly's fixed-duration frames, then
datasets.py:197-200): times in ms relative to the sample's first spike, bins of ``dt_ms`` (best_config_*.py:20
``time_step = 10``), the last bin also taking the spikes at its right edge (spikingjelly
``integrate_events_by_fixed_duration_shd``), and the 700 units summed in groups of ``group`` consecutive units
(best_config_*.py:21,36 ``n_bins = 5``, ``n_inputs = 700 // n_bins`` = 140).

Deliberate difference: the reference zero-pads each batch to its longest sample (``pad_sequence_collate``,
datasets.py:114); here every sample is zero-padded (at the end, as there) to one fixed length per dataset, by default
the longest sample of the files in use, so nothing is cropped and default collation works; a shorter
``num_steps`` crops the end (as the reference's GSC ``PadOrTruncate``, augmentations.py:340-351).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dcls_vision.utils.errors import UserError

N_UNITS = 700  # cochlear channels of SHD/SSC (spikingjelly shd.py get_H_W: (None, 700))
LAYOUT = "HDF5 with spikes/times (ragged float seconds), spikes/units (ragged ints 0-699) and labels"
SPLITS = {"shd": ("train", "test"), "ssc": ("train", "valid", "test")}  # the published file names <format>_<split>.h5
CLASSES = {"shd": 20, "ssc": 35}
SCAN_CHUNK = 2048  # samples read at once when looking for the longest sample


class SpikeDataError(UserError):
    """A missing/malformed spike file or layout; one line naming the file and what is expected."""


def frame_index(times: np.ndarray, dt_ms: float) -> tuple[np.ndarray, int]:
    """(bin of every spike, number of bins) of one sample, times relative to its first spike.

    As spikingjelly's fixed-duration frames (``t = 1000 * t; t -= t[0]``, ``ceil(t[-1] / duration)`` bins, the
    last bin taking everything from its start): the arithmetic stays in the file's dtype as there (numpy). The
    minimum/maximum are used instead of ``t[0]``/``t[-1]`` (the same for the published, time-sorted files), and a
    sample whose spikes all fall at one instant gets one bin (the reference has zero bins and fails on it).
    """
    if times.size == 0:
        return np.zeros(0, dtype=np.int64), 0
    t = times * 1000
    t = t - t.min()
    steps = max(1, math.ceil(float(t.max() / dt_ms)))
    index = np.minimum((t // dt_ms).astype(np.int64), steps - 1)
    return index, steps


def bin_spikes(times: np.ndarray, units: np.ndarray, dt_ms: float, group: int, num_steps: int) -> np.ndarray:
    """(num_steps, 700 // group) float32 spike counts: bins of ``dt_ms`` ms, units summed ``group`` at a time.

    Zero-padded at the end up to ``num_steps`` bins, or its first ``num_steps`` bins kept.
    """
    index, _ = frame_index(times, dt_ms)
    channel = units.astype(np.int64) // group
    keep = index < num_steps
    width = N_UNITS // group
    flat = index[keep] * width + channel[keep]
    counts = np.bincount(flat, minlength=num_steps * width)
    return counts.reshape(num_steps, width).astype(np.float32)


class SpikeH5(Dataset):
    """One Heidelberg-layout HDF5 file as ``(x, y)``: x (num_steps, 700 // group) float32 counts, y an int class.

    The file is opened lazily in each process (h5py handles do not survive fork); labels are read once.
    """

    def __init__(
        self,
        path: Path,
        dt_ms: float = 10.0,
        group: int = 5,
        num_steps: int | None = None,
        num_classes: int | None = None,
    ):
        self.path, self.dt_ms, self.group = Path(path), float(dt_ms), int(group)
        self._file: Any = None
        self._file_pid = 0
        with self._open() as f:
            self.targets = self._check_layout(f, num_classes)
        self.num_steps = int(num_steps) if num_steps is not None else self.longest()

    def _open(self) -> Any:
        import h5py

        if not self.path.is_file():
            raise SpikeDataError(f"{self.path} not found; expected {LAYOUT}")
        try:
            return h5py.File(self.path, "r")
        except OSError as err:
            raise SpikeDataError(f"{self.path} is not a readable HDF5 file ({err}); expected {LAYOUT}") from err

    def _check_layout(self, f: Any, num_classes: int | None) -> list[int]:
        missing = [key for key in ("spikes/times", "spikes/units", "labels") if key not in f]
        if missing:
            raise SpikeDataError(f"{self.path} has no {', '.join(missing)}; expected {LAYOUT}")
        sizes = {key: len(f[key]) for key in ("spikes/times", "spikes/units", "labels")}
        if len(set(sizes.values())) != 1:
            found = ", ".join(f"{k}: {n}" for k, n in sizes.items())
            raise SpikeDataError(f"{self.path}: sample counts differ ({found}); expected one entry per sample in each")
        labels = np.asarray(f["labels"][:])
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
            raise SpikeDataError(
                f"{self.path}: labels of dtype {labels.dtype}, shape {labels.shape}; expected ints >= 0"
            )
        if num_classes is not None and labels.size and labels.max() >= num_classes:
            raise SpikeDataError(f"{self.path}: label {labels.max()} found; expected 0..{num_classes - 1}")
        return labels.tolist()

    def _check_times(self, times: np.ndarray, i: int) -> np.ndarray:
        if times.ndim != 1 or not np.isfinite(times).all():
            raise SpikeDataError(f"{self.path}: sample {i} has non-finite or non-1-D spike times; expected seconds")
        return times

    def longest(self) -> int:
        """Bins of the longest sample (the reference's per-batch padding length at its largest)."""
        longest = 0
        with self._open() as f:
            times = f["spikes/times"]
            for start in range(0, len(times), SCAN_CHUNK):
                for i, sample in enumerate(times[start : start + SCAN_CHUNK], start):
                    longest = max(longest, frame_index(self._check_times(np.asarray(sample), i), self.dt_ms)[1])
        return longest

    @property
    def num_channels(self) -> int:
        return N_UNITS // self.group

    def __len__(self) -> int:
        return len(self.targets)

    def _handle(self) -> Any:
        """This process's open file: a handle inherited through fork (DataLoader workers) is not reused."""
        if self._file is None or self._file_pid != os.getpid():
            self._file, self._file_pid = self._open(), os.getpid()
        return self._file

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        f = self._handle()
        times = self._check_times(np.asarray(f["spikes/times"][i]), i)
        units = np.asarray(f["spikes/units"][i])
        if times.shape != units.shape:
            raise SpikeDataError(
                f"{self.path}: sample {i} has {times.shape} times but {units.shape} units; expected equal"
            )
        if units.size and (units.min() < 0 or units.max() >= N_UNITS):
            raise SpikeDataError(f"{self.path}: sample {i} has unit {units.max()}; expected units 0..{N_UNITS - 1}")
        frames = bin_spikes(times, units, self.dt_ms, self.group, self.num_steps)
        return torch.from_numpy(frames), int(self.targets[i])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"] = None  # reopened in the worker
        return state


def split_path(root: Path, fmt: str, split: str) -> Path:
    """``<root>/<fmt>_<split>.h5``; an unknown split is one line listing the published ones."""
    allowed = SPLITS[fmt]
    if split not in allowed:
        raise SpikeDataError(f"data.format={fmt}: split {split!r} does not exist; allowed: {', '.join(allowed)}")
    path = root / f"{fmt}_{split}.h5"
    if not path.is_file():
        names = ", ".join(f"{fmt}_{s}.h5" for s in allowed)
        raise SpikeDataError(
            f"data.root={root}: {path.name} not found; expected the published files {names} ({LAYOUT})"
        )
    return path


def open_splits(
    root: Path, fmt: str, splits: tuple[str, ...], dt_ms: float, group: int, num_steps: int | None
) -> list[SpikeH5]:
    """One :class:`SpikeH5` per split, all padded to ``num_steps`` (null: the longest sample over the splits)."""
    if N_UNITS % group:
        divisors = [d for d in range(1, N_UNITS + 1) if N_UNITS % d == 0]
        raise SpikeDataError(f"data.channel_group={group}; allowed: a divisor of {N_UNITS} ({divisors})")
    sets = [SpikeH5(split_path(root, fmt, s), dt_ms, group, num_steps, CLASSES[fmt]) for s in splits]
    longest = max(ds.num_steps for ds in sets)
    for ds in sets:
        ds.num_steps = longest  # the same length in every split (null: the longest over them)
    return sets


__all__ = [
    "CLASSES",
    "N_UNITS",
    "SPLITS",
    "SpikeDataError",
    "SpikeH5",
    "bin_spikes",
    "frame_index",
    "open_splits",
    "split_path",
]
