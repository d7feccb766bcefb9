"""Google Speech Commands v0.02 (35 words) as (101, 140) dB mel frames, the SNN-delays reference's GSC front end.

Thvnvtos/SNN-delays datasets.py:269-297 (``build_transform(False)``; training uses no augmentation either,
datasets.py:140): pad or cut to 1 s at 16 kHz (``PadOrTruncate(16000)``, augmentations.py:340-351), resample to
8 kHz, power spectrogram n_fft 256 / hop 80 (centred, Hann), 140 HTK mel bands with f_min 50 Hz and **f_max 14 kHz**,
dB (10 log10, floor 1e-10, no top_db), transposed to time-major (datasets.py:320): 101 frames x 140 bands.
f_max lies far above the 4 kHz Nyquist frequency of the 8 kHz signal, so the mel bands whose lower edge is at or
above 4 kHz cover no FFT bin: they are all-zero and read -100 dB in every sample (:func:`empty_bands` counts
them: 53 of 140). Reproduced on purpose, as the reference trained with them.

torchaudio has no release for our torch: the spectrogram and mel scale are :class:`~.audio_features.LogMel`'s
(torch.stft + librosa/HTK filterbank = torchaudio's defaults); the 16 -> 8 kHz resampling is scipy's polyphase
filter (Kaiser window) instead of torchaudio's ``Resample`` (Hann-windowed sinc, width 6): the two differ only
near 4 kHz. Layout: the extracted ``speech_commands_v0.02`` folder (``<word>/<file>.wav``,
``validation_list.txt``, ``testing_list.txt``) or torchaudio's ``<root>/SpeechCommands/speech_commands_v0.02``.
Splits as torchaudio's ``SPEECHCOMMANDS`` (datasets.py:309): ``validation`` / ``testing`` are the listed files,
``training`` every other ``*_nohash_*.wav`` outside ``_background_noise_``.
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .audio import pad_or_truncate, read_audio
from .audio_features import LogMel, MelSettings
from .spikes import SpikeDataError

# datasets.py:299: the 35 words, sorted; the class index is the position here
WORDS = (
    "backward", "bed", "bird", "cat", "dog", "down", "eight", "five", "follow", "forward", "four", "go", "happy",
    "house", "learn", "left", "marvin", "nine", "no", "off", "on", "one", "right", "seven", "sheila", "six", "stop",
    "three", "tree", "two", "up", "visual", "wow", "yes", "zero",
)  # fmt: skip
SPLITS = ("training", "validation", "testing")
SOURCE_RATE, RATE = 16000, 8000  # datasets.py:270,278: Resample(sample_rate, sample_rate // 2)
GSC_MEL = MelSettings(sample_rate=RATE, n_fft=256, hop_length=80, n_mels=140, f_min=50.0, f_max=14000.0)
LAYOUT = "the extracted speech_commands_v0.02 folder: <word>/<file>.wav, validation_list.txt, testing_list.txt"


def find_root(root: Path) -> Path:
    """The folder holding validation_list.txt: ``root`` itself or torchaudio's download layout under it."""
    for candidate in (root, root / "SpeechCommands" / "speech_commands_v0.02"):
        if (candidate / "validation_list.txt").is_file() and (candidate / "testing_list.txt").is_file():
            return candidate
    raise SpikeDataError(f"data.root={root}: no validation_list.txt / testing_list.txt found; expected {LAYOUT}")


def split_files(root: Path, split: str) -> list[str]:
    """Relative paths (``word/file.wav``) of a split, as torchaudio's SPEECHCOMMANDS walks them."""
    if split not in SPLITS:
        raise SpikeDataError(f"data.format=gsc: split {split!r} does not exist; allowed: {', '.join(SPLITS)}")
    listed = {name: (root / f"{name}_list.txt").read_text().split() for name in ("validation", "testing")}
    if split != "training":
        return listed[split]
    held = set(listed["validation"]) | set(listed["testing"])
    found = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav"))
    return [f for f in found if "_nohash_" in f and not f.startswith("_background_noise_") and f not in held]


def empty_bands(settings: MelSettings = GSC_MEL) -> int:
    """Mel bands of the filterbank that cover no FFT bin (all-zero rows): 53 for the reference's GSC settings."""
    return int((_logmel(settings).fb.sum(dim=0) == 0).sum())


class SpeechCommandsMel(Dataset):
    """One GSC split as ``(x, y)``: x (101, 140) float32 dB mel (time-major), y the index in :data:`WORDS`."""

    def __init__(self, root: Path, split: str):
        self.root = find_root(Path(root))
        self.files = split_files(self.root, split)
        if not self.files:
            raise SpikeDataError(f"data.root={self.root}: the {split} split has no files; expected {LAYOUT}")
        words = [f.split("/")[0] for f in self.files]
        unknown = sorted(set(words) - set(WORDS))
        if unknown:
            raise SpikeDataError(f"{self.root}: word folder {unknown[0]!r} is not a GSC-35 word; allowed: {WORDS}")
        self.targets = [WORDS.index(w) for w in words]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.root / self.files[i]
        if not path.is_file():
            raise SpikeDataError(f"{path} is listed in the {self.root.name} split lists but missing; expected {LAYOUT}")
        try:
            wave = read_audio(path, SOURCE_RATE)
        except (ValueError, OSError) as err:  # scipy's wavfile: a truncated or non-WAV file
            raise SpikeDataError(f"{path}: unreadable WAV ({err}); expected 16-bit mono 16 kHz clips") from err
        return features(wave), self.targets[i]


def features(wave: np.ndarray) -> torch.Tensor:
    """16 kHz mono waveform -> (101, 140) dB mel, as the reference's ``build_transform(False)``."""
    from scipy.signal import resample_poly

    wave = pad_or_truncate(wave, SOURCE_RATE)
    wave = resample_poly(wave, 1, SOURCE_RATE // RATE).astype(np.float32)
    with torch.no_grad():
        return _logmel(GSC_MEL).db_mel(torch.from_numpy(wave)[None])[0].T.contiguous()


@lru_cache(maxsize=2)
def _logmel(settings: MelSettings) -> LogMel:
    """dB mel without normalisation; the empty-filter warning is the documented f_max > Nyquist of the reference."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Empty filters detected")
        return LogMel(0.0, 1.0, settings)


__all__ = ["GSC_MEL", "WORDS", "SpeechCommandsMel", "empty_bands", "features", "find_root", "split_files"]
