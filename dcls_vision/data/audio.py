"""AudioSet-style multi-label audio data: a folder of clips + segments CSV, or pre-computed arrays.

Layouts (``data.format``):

* ``folder``: ``<root>/<labels_csv>`` (``index,mid,display_name``, AudioSet's class_labels_indices.csv),
  ``<root>/<split>_segments.csv`` (``YTID, start_seconds, end_seconds, "positive_labels"``; lines starting with
  ``#`` are comments) and the clips in ``<root>/<audio_dir>/<split>/``, a clip named ``<YTID>.wav``,
  ``Y<YTID>.wav`` or ``<YTID>_<anything>.wav``. Rows whose clip is missing are left out and counted (AudioSet
  always lacks some videos): a warning at start gives their count and the first few. WAV files are read with scipy,
  ``.flac``/``.ogg`` with ``soundfile`` (checked at start when the split has such files). A warning at start counts
  the clips (of up to ``rate_check_clips`` evenly spaced ones) recorded below 32 kHz: upsampled, they are empty above
  half their rate, which the fixed AudioSet normalisation statistics do not expect.
* ``arrays``: ``<root>/<split>_data.npy`` (memory-mapped) holding either waveforms (N, samples) at 32 kHz
  (int16 or float) or dB mel spectrograms (N, 128, frames), and ``<root>/<split>_targets.npy`` (N, classes) 0/1.
* ``hdf5``: the PANNs packed files, :mod:`.audio_hdf5`.

Samples are ``(float tensor, multi-hot float tensor)``; waveforms are mono, resampled to 32 kHz and padded or
truncated to 10 s here (cheap), the spectrogram is made on the device by :mod:`.audio_features`.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from dcls_vision.utils.errors import UserError
from dcls_vision.utils.io import atomic_write_text

from .audio_features import CLIP_SAMPLES, SAMPLE_RATE, LogMel

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class AudioDataError(UserError):
    """A missing/malformed AudioSet file or layout; one line naming it and what is expected."""


class AudioDataWarning(UserWarning):
    """Something about the data the run goes on with, said once at start (missing clips, low rates, skipped aug)."""


def read_label_csv(path: Path) -> tuple[list[str], list[str]]:
    """``(mids, display names)`` ordered by index from AudioSet's ``class_labels_indices.csv``."""
    if not path.is_file():
        raise AudioDataError(f"data.labels_csv: {path} not found; expected AudioSet's index,mid,display_name CSV")
    rows = list(csv.DictReader(path.open(newline="")))
    if not rows or not {"index", "mid", "display_name"} <= set(rows[0]):
        raise AudioDataError(f"data.labels_csv: {path} needs the header index,mid,display_name")
    rows.sort(key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise AudioDataError(f"data.labels_csv: {path}: indices must be 0..{len(rows) - 1} without gaps")
    return [r["mid"] for r in rows], [r["display_name"] for r in rows]


def read_segments_csv(path: Path, mid_index: dict[str, int]) -> list[tuple[str, np.ndarray]]:
    """``[(YTID, multi-hot uint8 row)]`` from an AudioSet segments CSV; an unknown label mid is an error."""
    if not path.is_file():
        raise AudioDataError(f"segments CSV {path} not found; expected YTID, start_seconds, end_seconds, labels")
    out = []
    with path.open(newline="") as f:
        for lineno, row in enumerate(csv.reader(f, skipinitialspace=True), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) < 4:
                raise AudioDataError(f"{path}:{lineno}: {len(row)} fields; expected YTID, start, end, labels")
            target = np.zeros(len(mid_index), dtype=np.uint8)
            for mid in row[3].split(","):
                if mid.strip() not in mid_index:
                    raise AudioDataError(f"{path}:{lineno}: label {mid.strip()!r} is not in the labels CSV")
                target[mid_index[mid.strip()]] = 1
            out.append((row[0], target))
    return out


def _index_clips(folder: Path) -> dict[str, Path]:
    """YTID -> file for ``<YTID>.wav``, ``Y<YTID>.wav`` and ``<YTID>_<...>.wav`` in ``folder``."""
    if not folder.is_dir():
        raise AudioDataError(f"audio folder {folder} not found; expected the clips as <YTID>.wav in it")
    clips: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        stem = p.stem
        clips.setdefault(stem, p)
        if stem.startswith("Y") and len(stem) == 12:
            clips.setdefault(stem[1:], p)
        if "_" in stem[11:]:
            clips.setdefault(stem[:11], p)
    return clips


def read_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Mono float32 waveform in [-1, 1] at ``sample_rate`` (polyphase resampling when the file differs)."""
    if path.suffix.lower() == ".wav":
        from scipy.io import wavfile

        sr, data = wavfile.read(path)
    else:
        try:
            import soundfile
        except ImportError as err:
            raise AudioDataError(f"{path}: reading {path.suffix} needs the soundfile package; allowed: .wav") from err
        data, sr = soundfile.read(path, dtype="float32")
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(int(sr), sample_rate)
        data = resample_poly(data, sample_rate // g, int(sr) // g).astype(np.float32)
    return data


def pad_or_truncate(wave: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Zero-pad at the end or cut to ``length`` samples (10 s at 32 kHz)."""
    if len(wave) >= length:
        return wave[:length]
    return np.pad(wave, (0, length - len(wave)))


class AudioSetFolder(Dataset):
    """Clips of one split listed in a segments CSV; ``targets`` (N, classes) uint8, ``missing`` rows left out."""

    multilabel = True

    def __init__(
        self,
        csv_path: Path,
        audio_dir: Path,
        labels_csv: Path,
        clip_samples: int = CLIP_SAMPLES,
        rate_check_clips: int = 1000,
    ):
        self.mids, self.classes = read_label_csv(labels_csv)
        rows = read_segments_csv(csv_path, {m: i for i, m in enumerate(self.mids)})
        clips = _index_clips(audio_dir)
        found = [(clips[y], t) for y, t in rows if y in clips]
        self.missing = len(rows) - len(found)
        if not found:
            raise AudioDataError(f"{csv_path}: none of its {len(rows)} clips is in {audio_dir}")
        if self.missing:
            absent = [y for y, _ in rows if y not in clips]
            warnings.warn(
                f"{csv_path}: {self.missing} of {len(rows)} clips are not in {audio_dir} and are left out "
                f"(first: {', '.join(absent[:5])})",
                AudioDataWarning,
                stacklevel=2,
            )
        self.files = [f for f, _ in found]
        self.targets = np.stack([t for _, t in found])
        self.num_classes = len(self.classes)
        self.clip_samples = clip_samples
        _check_soundfile(self.files, csv_path)
        _warn_low_rates(self.files, rate_check_clips, csv_path)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        wave = pad_or_truncate(read_audio(self.files[i]), self.clip_samples)
        return torch.from_numpy(np.ascontiguousarray(wave)), torch.from_numpy(self.targets[i].astype(np.float32))


def _check_soundfile(files: list[Path], where: Path) -> None:
    """At start, not at the first ``__getitem__``: non-WAV clips need the soundfile package."""
    other = sorted({p.suffix.lower() for p in files if p.suffix.lower() != ".wav"})
    if not other:
        return
    try:
        import soundfile  # noqa: F401
    except ImportError as err:
        count = sum(p.suffix.lower() != ".wav" for p in files)
        raise AudioDataError(
            f"{where}: {count} clips are {'/'.join(other)}, which need the soundfile package (pip install "
            "soundfile); allowed without it: .wav"
        ) from err


def clip_sample_rate(path: Path) -> int:
    """The recorded sample rate from the file header (no audio read)."""
    if path.suffix.lower() == ".wav":
        import wave

        try:
            with wave.open(str(path)) as w:
                return w.getframerate()
        except (wave.Error, EOFError):  # e.g. float WAV: soundfile reads its header
            pass
    import soundfile

    return int(soundfile.info(str(path)).samplerate)


def _warn_low_rates(files: list[Path], max_clips: int, where: Path) -> None:
    """Warn once when clips are recorded below 32 kHz: read at 32 kHz they are empty above half their rate (a
    16 kHz clip leaves the mel bands above 8 kHz ~54 dB below the fixed AudioSet statistics)."""
    if max_clips <= 0:
        return
    idx = np.unique(np.linspace(0, len(files) - 1, min(len(files), max_clips)).round().astype(int))
    rates = [clip_sample_rate(files[i]) for i in idx]
    low = [r for r in rates if r < SAMPLE_RATE]
    if low:
        warnings.warn(
            f"{where}: {len(low)} of {len(idx)} clips checked (evenly spaced over {len(files)}) are recorded below "
            f"{SAMPLE_RATE} Hz (lowest {min(low)} Hz): upsampled, they carry nothing above {min(low) // 2} Hz, far "
            "below the normalisation statistics there; resample the source at 32 kHz or expect lower mAP",
            AudioDataWarning,
            stacklevel=3,
        )


class AudioSetArrays(Dataset):
    """``<split>_data.npy`` (waveforms (N, T) or dB mel (N, mels, frames)) + ``<split>_targets.npy`` (N, C)."""

    multilabel = True

    def __init__(self, root: Path, split: str, clip_samples: int = CLIP_SAMPLES):
        data, targets = root / f"{split}_data.npy", root / f"{split}_targets.npy"
        for p in (data, targets):
            if not p.is_file():
                raise AudioDataError(f"data.format=arrays: {p} not found; expected {split}_data/_targets.npy")
        self.data = np.load(data, mmap_mode="r")
        self.targets = np.load(targets, mmap_mode="r")
        if self.data.ndim not in (2, 3) or len(self.data) != len(self.targets):
            raise AudioDataError(
                f"{data}: shape {self.data.shape} with {len(self.targets)} targets; expected (N, samples) or "
                "(N, mels, frames) and one target row per clip"
            )
        self.is_waveform = self.data.ndim == 2
        self.clip_samples = clip_samples
        self.num_classes = int(self.targets.shape[1])
        self.classes = [str(i) for i in range(self.num_classes)]
        self.missing = 0

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = np.asarray(self.data[i])
        if self.is_waveform:
            if np.issubdtype(x.dtype, np.integer):
                x = x.astype(np.float32) / float(np.iinfo(x.dtype).max + 1)
            x = pad_or_truncate(x.astype(np.float32), self.clip_samples)
        target = torch.from_numpy(np.asarray(self.targets[i], dtype=np.float32))
        return torch.from_numpy(np.array(x, dtype=np.float32)), target  # a copy: memmaps are read-only


def norm_stats(dataset: Dataset, cache: Path | None, max_clips: int = 1000) -> tuple[float, float]:
    """Mean and std of the dB mel over (up to ``max_clips`` evenly spaced clips of) the training set.

    Cached as JSON at ``cache`` (atomic write) when given and writable, so the pass runs once per data set.
    """
    if cache is not None and cache.is_file():
        stats = json.loads(cache.read_text())
        return float(stats["mean"]), float(stats["std"])
    logmel = LogMel(0.0, 1.0).eval()
    n = len(dataset)
    idx = np.unique(np.linspace(0, n - 1, min(n, max_clips)).round().astype(int))
    s1 = s2 = count = 0.0
    with torch.no_grad():
        for start in range(0, len(idx), 32):
            x = torch.stack([dataset[int(i)][0] for i in idx[start : start + 32]])
            db = logmel(x).double()
            s1, s2, count = s1 + db.sum().item(), s2 + db.square().sum().item(), count + db.numel()
    mean = s1 / count
    std = max((s2 / count - mean**2) ** 0.5, 1e-6)
    if cache is not None:
        try:
            # through a unique temp file: ranks may race here
            atomic_write_text(cache, json.dumps({"mean": mean, "std": std, "clips": len(idx)}))
        except OSError:
            pass  # a read-only data folder: recomputed next time
    return mean, std


def stats_cache_path(root: Path, key: str) -> Path:
    """``<root>/norm_stats_<key>.json``, characters a file name should not hold (``+*/``) as ``_``."""
    import re

    return root / f"norm_stats_{re.sub(r'[^A-Za-z0-9_.-]', '_', key)}.json"


__all__: list[Any] = [
    "AudioDataError",
    "AudioDataWarning",
    "AudioSetArrays",
    "AudioSetFolder",
    "norm_stats",
    "pad_or_truncate",
    "read_audio",
    "read_label_csv",
    "read_segments_csv",
]
