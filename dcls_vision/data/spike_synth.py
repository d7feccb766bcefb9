"""The embedded spiking-digits set: spoken digits (espeak-ng) through a small cochlear model, in SHD's HDF5 layout.

SHD's 20 classes (labels 0-9: English zero..nine, 10-19: German null..neun, as SHD) spoken by ``espeak-ng`` with
:data:`EN_VOICES` / :data:`DE_VOICES`, each voice with one of :data:`VARIANTS`; a *speaker* is one (voice, variant)
pair. Test speakers are held out: a seeded quarter of each language's pairs speaks only the test set, the rest only
the training set. Each rendition draws pitch 20-80, speed 120-220 words/min, a 0-100 ms lead-in and white noise at
25-40 dB below the speech, at 16 kHz (the prototype's recipe, /work/shared/DESIGN.md §7).

Cochlea (:func:`cochlea_spikes`): power STFT (n_fft 512, hop 1 ms), 700 triangular channels ERB-spaced over
50-7800 Hz (1.5 ERB wide at the base, unit area), dB relative to the sample's peak over a 45 dB range as the drive
d in [0, 1]; each channel fires Bernoulli per 1 ms at 300 Hz * (0.6 d^2 + 4 onset) + 1 Hz, onset = the positive
1-ms increase of d. Written as ``shd_train.h5`` / ``shd_test.h5`` (``spikes/times`` float32 s, ``spikes/units``
uint16, ``labels`` uint16, ``extra/{speaker, keys, meta_info}``), so :class:`~.spikes.SpikeH5`, the reader of the
real SHD files, is the code path the embedded set exercises. The espeak-ng version is in every file's attributes
and in ``embedded.json`` beside them (the audio it renders may change between versions).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .audio_synth import espeak_exe, speak
from .generated import DONE, generate_once, is_generated
from .spikes import N_UNITS, SpikeDataError

EN_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DE_WORDS = ("null", "eins", "zwei", "drei", "vier", "fünf", "sechs", "sieben", "acht", "neun")
EN_VOICES = (
    "en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc",
)  # fmt: skip
DE_VOICES = ("de",)
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+f1", "+f2", "+f3", "+f4")
TEST_SHARE = 0.25  # of each language's (voice, variant) pairs, held out for the test set
RATE, HOP = 16000, 16  # 16 kHz; 16 samples = 1 ms per cochlea frame and spike step
N_FFT = 512
F_LO, F_HI, WIDTH_ERB = 50.0, 7800.0, 1.5
RANGE_DB = 45.0
MAX_SECONDS = 0.8  # 80 steps of 10 ms: a longer rendition (slow speech + lead-in) is cut there
VERSION = 1


@lru_cache(maxsize=1)
def erb_filterbank() -> np.ndarray:
    """(700, n_fft//2 + 1) triangular filters, centres equally spaced on the ERB-rate scale, each of unit area."""
    erb_rate = lambda f: 21.4 * np.log10(1.0 + 0.00437 * f)  # noqa: E731  Glasberg & Moore (1990)
    rates = np.linspace(erb_rate(F_LO), erb_rate(F_HI), N_UNITS)
    centres = (10 ** (rates / 21.4) - 1.0) / 0.00437
    half = 0.5 * WIDTH_ERB * 24.7 * (4.37 * centres / 1000 + 1.0)
    freqs = np.fft.rfftfreq(N_FFT, 1.0 / RATE)
    fb = np.clip(1.0 - np.abs(freqs[None, :] - centres[:, None]) / half[:, None], 0.0, None)
    return (fb / fb.sum(axis=1, keepdims=True)).astype(
        np.float32
    )  # half-width >= 22 Hz > half the 31.25 Hz bin spacing: no empty row


def cochlea_spikes(wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(times in s, units) of the spikes of a 16 kHz waveform, sorted by time then unit as SHD."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
    spec = torch.stft(x, N_FFT, HOP, window=torch.hann_window(N_FFT), center=True, return_complex=True)
    power = (spec.real.square() + spec.imag.square()).numpy()  # (257, frames)
    db = 10.0 * np.log10(np.maximum(erb_filterbank() @ power, 1e-12), dtype=np.float64)
    drive = np.clip(1.0 + (db - db.max()) / RANGE_DB, 0.0, 1.0)
    onset = np.clip(np.diff(drive, axis=1, prepend=drive[:, :1]), 0.0, None)
    rate_hz = 300.0 * (0.6 * drive**2 + 4.0 * onset) + 1.0
    fired = rng.random(rate_hz.shape) < rate_hz * (HOP / RATE)
    step, unit = np.nonzero(fired.T)  # row-major over (time, unit): sorted by time, then unit
    return (step * (HOP / RATE)).astype(np.float32), unit.astype(np.uint16)


def speakers(seed: int) -> tuple[list[str], np.ndarray]:
    """All (voice+variant) speakers, English then German, and a bool mask of the held-out test speakers."""
    rng = np.random.default_rng([seed, 1])
    names, test = [], []
    for voices in (EN_VOICES, DE_VOICES):
        pairs = [f"{v}{var}" for v in voices for var in VARIANTS]
        held = set(rng.permutation(len(pairs))[: int(np.ceil(TEST_SHARE * len(pairs)))].tolist())
        names += pairs
        test += [i in held for i in range(len(pairs))]
    return names, np.array(test)


def render(word: str, voice: str, rng: np.random.Generator, exe: str, tmp: Path) -> np.ndarray:
    """One noisy 16 kHz rendition: random pitch/speed, lead-in, noise 25-40 dB below the speech, cut at 0.8 s."""
    pitch, speed = int(rng.integers(20, 81)), int(rng.integers(120, 221))
    speech = speak(exe, word, voice, pitch, speed, tmp, rate=RATE)
    loud = np.nonzero(np.abs(speech) > 10 ** (-40 / 20))[0]  # espeak's silent head and tail (peak = 1)
    speech = speech[loud[0] : loud[-1] + 1] if loud.size else speech
    lead = np.zeros(int(rng.integers(0, 101)) * RATE // 1000, dtype=np.float32)
    wave = np.concatenate([lead, speech])[: int(MAX_SECONDS * RATE)]
    rms = float(np.sqrt(np.mean(speech**2)))
    noise = rng.standard_normal(wave.size).astype(np.float32) * rms * 10 ** (-rng.uniform(25.0, 40.0) / 20)
    return wave + noise


def _samples(per_class: int, test: bool, names: list[str], held: np.ndarray, seed: int) -> list[tuple[int, int]]:
    """(label, speaker) of every sample of a split, class-interleaved, speakers drawn from the split's pool."""
    rng = np.random.default_rng([seed, 2, int(test)])
    n_en = len(EN_VOICES) * len(VARIANTS)
    pools = [
        [i for i in range(n_en) if held[i] == test],
        [i for i in range(n_en, len(names)) if held[i] == test],
    ]
    return [(c, int(rng.choice(pools[c // 10]))) for _ in range(per_class) for c in range(20)]


def _ragged(f: Any, name: str, arrays: list[np.ndarray], dtype: type) -> None:
    """A vlen dataset, one array per sample, as SHD's ``spikes/times`` and ``spikes/units``."""
    import h5py

    ds = f.create_dataset(name, (len(arrays),), dtype=h5py.vlen_dtype(dtype))
    for i, a in enumerate(arrays):
        ds[i] = a


def _write_split(
    path: Path, samples: list[tuple[int, int]], test: bool, names: list[str], held: np.ndarray, meta: dict
) -> None:
    import h5py

    exe, words = _exe(), EN_WORDS + DE_WORDS
    times, units = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (label, speaker) in enumerate(samples):
            rng = np.random.default_rng([meta["seed"], 3, int(test), i])  # per sample: order-independent
            t, u = cochlea_spikes(render(words[label], names[speaker], rng, exe, Path(tmp)), rng)
            times.append(t)
            units.append(u)
    with h5py.File(path, "w") as f:
        _ragged(f, "spikes/times", times, np.float32)
        _ragged(f, "spikes/units", units, np.uint16)
        f["labels"] = np.array([s[0] for s in samples], dtype=np.uint16)
        f["extra/speaker"] = np.array([s[1] for s in samples], dtype=np.uint16)
        f["extra/keys"] = np.array([w.encode() for w in words])
        f["extra/meta_info/voice"] = np.array([n.encode() for n in names])
        f["extra/meta_info/test_speaker"] = held
        f.attrs.update({k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()})


def _exe() -> str:
    return espeak_exe(SpikeDataError, "the embedded spiking-digits set")


def espeak_version() -> str:
    """``espeak-ng --version``'s first line, e.g. 'eSpeak NG text-to-speech: 1.51  Data at: ...' (the version)."""
    line = subprocess.run([_exe(), "--version"], capture_output=True, text=True, check=True).stdout.strip()
    return line.split("Data at")[0].strip()


def _made_with(root: Path, settings: dict[str, Any]) -> bool:
    """A complete set in ``root`` with these settings, whichever espeak-ng version made it."""
    done = root / DONE
    if not done.is_file():
        return False
    recorded = json.loads(done.read_text())
    return {k: v for k, v in recorded.items() if k != "espeak_ng"} == settings


def ensure_spiking_digits(root: Path, n_train: int = 45, n_test: int = 15, seed: int = 0) -> Path:
    """Generate ``shd_train.h5`` / ``shd_test.h5`` (n per class) into ``root`` unless an equal set is there."""
    if n_train < 1 or n_test < 1:
        raise SpikeDataError(f"spiking digits: n_train={n_train}, n_test={n_test}; allowed: >= 1 per class each")
    settings: dict[str, Any] = {"version": VERSION, "n_train": n_train, "n_test": n_test, "seed": seed}
    if shutil.which("espeak-ng") is None and _made_with(root, settings):
        return root  # a complete set copied to a machine without espeak-ng: usable as it is
    settings["espeak_ng"] = espeak_version()
    if is_generated(root, settings):
        return root
    names, held = speakers(seed)

    def write(folder: Path) -> None:
        for split, per_class in (("train", n_train), ("test", n_test)):
            samples = _samples(per_class, split == "test", names, held, seed)
            _write_split(folder / f"shd_{split}.h5", samples, split == "test", names, held, settings)

    return generate_once(root, settings, write, SpikeDataError, "embedded spiking-digits set")


def main() -> None:
    """``python -m dcls_vision.data.spike_synth ROOT [N_TRAIN N_TEST SEED]``: generate the set (per-class counts)."""
    import sys

    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m dcls_vision.data.spike_synth ROOT [N_TRAIN N_TEST SEED]")
    print(ensure_spiking_digits(Path(args[0]), *[int(a) for a in args[1:4]]))


if __name__ == "__main__":
    main()
