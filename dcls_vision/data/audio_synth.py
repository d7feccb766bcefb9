"""The embedded multi-label audio set: spoken words (espeak-ng) mixed into 10-s noisy clips, in AudioSet layout.

Generated offline on first use into the data folder (nothing is shipped: ~280 MB of WAV would bloat the repository,
the generator is a few kB and deterministic). Needs the Debian package ``espeak-ng`` (tools/install.sh installs it).
Each of the :data:`WORDS` is a class. Every word is spoken in :data:`RENDITIONS` renditions (voice, variant, pitch
and speed drawn from a seeded generator); training clips use renditions 0-11, eval clips the held-out 12-15, so eval
measures generalisation to unseen voices (with 4 training voices per word, v2, the small nets only memorised them).
A clip holds 1-3 distinct words at random times over white or pink noise (SNR 0-20 dB) filling the whole 10 s and
the whole band, stored as 16-bit 32 kHz mono WAV (the model's rate: no resampling in the loader). No digital silence
on purpose: zero padding or an empty band (a 16 kHz file read at 32 kHz is empty above 8 kHz) becomes the -100 dB
floor of the log, which real recordings never show; in v1 it made ~18 % of the dB mel, dominated the normalisation
statistics (std 42 dB) and the small nets' max pooling. Layout: ``class_labels_indices.csv``,
``{train,eval}_segments.csv``, ``audio/{train,eval}/<YTID>.wav``.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .audio import AudioDataError
from .generated import generate_once, is_generated

WORDS = (
    "apple", "banana", "bicycle", "castle", "dolphin", "elephant", "forest", "guitar", "hammer", "island",
    "jacket", "kitten", "lemon", "mountain", "number", "orange", "pencil", "rabbit", "silver", "tiger",
    "umbrella", "violin", "window", "yellow", "zebra", "rocket", "garden", "winter", "monkey", "doctor",
)  # fmt: skip
VOICES = ("en-gb", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("", "+m1", "+m3", "+m5", "+f1", "+f2", "+f3", "+f4")
RENDITIONS, TRAIN_RENDITIONS = 16, 12
STORE_RATE, CLIP_SECONDS = 32000, 10  # 32 kHz: the model's rate (audio_features.SAMPLE_RATE)
VERSION = 3


def espeak_exe(error: type[Exception] = AudioDataError, what: str = "the embedded audio set") -> str:
    """The espeak-ng executable; its absence is one line (``error``) naming the set that needs it."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise error(f"{what} needs espeak-ng; install it (apt-get install espeak-ng, or bash tools/install.sh)")
    return exe


def speak(exe: str, word: str, voice: str, pitch: int, speed: int, tmp: Path, rate: int = STORE_RATE) -> np.ndarray:
    """One rendition as float32 at ``rate`` (default :data:`STORE_RATE`), peak-normalised."""
    from math import gcd

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    out = tmp / "w.wav"
    subprocess.run([exe, "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(out), word], check=True)
    sr, data = wavfile.read(out)
    wave = data.astype(np.float32) / 32768.0
    g = gcd(int(sr), rate)
    wave = resample_poly(wave, rate // g, int(sr) // g).astype(np.float32)
    return wave / max(float(np.abs(wave).max()), 1e-6)


def _renditions(rng: np.random.Generator, n_words: int) -> list[list[np.ndarray]]:
    """``bank[word][r]``: every word in :data:`RENDITIONS` seeded voice/variant/pitch/speed settings."""
    exe = espeak_exe()
    bank = []
    with tempfile.TemporaryDirectory() as tmp:
        for word in WORDS[:n_words]:
            row = []
            for _ in range(RENDITIONS):
                voice = f"{rng.choice(VOICES)}{rng.choice(VARIANTS)}"
                row.append(speak(exe, word, voice, int(rng.integers(20, 81)), int(rng.integers(120, 221)), Path(tmp)))
            bank.append(row)
    return bank


def _noise(rng: np.random.Generator, n: int) -> np.ndarray:
    white = rng.standard_normal(n).astype(np.float32)
    if rng.random() < 0.5:
        return white
    spec = np.fft.rfft(white)
    spec /= np.sqrt(np.arange(1, len(spec) + 1))  # 1/f power: pink
    pink = np.fft.irfft(spec, n).astype(np.float32)
    return pink / float(pink.std() + 1e-8)


def make_clip(rng: np.random.Generator, bank: list[list[np.ndarray]], renditions: range) -> tuple[np.ndarray, list]:
    """One clip: 1-3 distinct words at random times over noise; returns (int16 wave, word indices)."""
    n = STORE_RATE * CLIP_SECONDS
    speech = np.zeros(n, dtype=np.float32)
    words = sorted(rng.choice(len(bank), size=int(rng.integers(1, 4)), replace=False).tolist())
    for w in words:
        utt = bank[w][int(rng.choice(renditions))] * rng.uniform(0.5, 1.0)
        utt = utt[: n - 1]
        start = int(rng.integers(0, n - len(utt)))
        speech[start : start + len(utt)] += utt
    rms = float(np.sqrt(np.mean(speech[speech != 0] ** 2))) if speech.any() else 1.0
    noise = _noise(rng, n) * rms / (10 ** (rng.uniform(0.0, 20.0) / 20))
    mix = speech + noise
    mix = 0.9 * mix / max(float(np.abs(mix).max()), 1e-6)
    return (mix * 32767).astype(np.int16), words


def _write_split(root: Path, split: str, count: int, rng, bank, renditions: range) -> None:
    from scipy.io import wavfile

    folder = root / "audio" / split
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["# Segments csv created by dcls_vision.data.audio_synth (embedded set)", "# YTID, start_seconds, ..."]
    for i in range(count):
        ytid = f"{split[:2]}{i:09d}"  # 11 characters, as YouTube ids
        wave, words = make_clip(rng, bank, renditions)
        wavfile.write(folder / f"{ytid}.wav", STORE_RATE, wave)
        labels = ",".join(f"/x/{WORDS[w]}" for w in words)
        lines.append(f'{ytid}, 0.000, {len(wave) / STORE_RATE:.3f}, "{labels}"')
    (root / f"{split}_segments.csv").write_text("\n".join(lines) + "\n")


def ensure_embedded_audioset(
    root: Path, n_train: int = 320, n_eval: int = 120, seed: int = 0, n_words: int = len(WORDS)
) -> Path:
    """Generate the set into ``root`` unless a complete one with the same settings is there; returns ``root``.

    Written into a temporary sibling folder and renamed at the end, so an interrupted run leaves nothing half-made.
    """
    settings = {"version": VERSION, "n_train": n_train, "n_eval": n_eval, "seed": seed, "words": n_words}
    if is_generated(root, settings):
        return root
    if not 1 <= n_words <= len(WORDS):
        raise AudioDataError(f"embedded audio set: n_words={n_words}; allowed: 1..{len(WORDS)}")

    def write(folder: Path) -> None:
        rng = np.random.default_rng(seed)
        bank = _renditions(rng, n_words)
        with (folder / "class_labels_indices.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "mid", "display_name"])
            writer.writerows([i, f"/x/{w}", w] for i, w in enumerate(WORDS[:n_words]))
        _write_split(folder, "train", n_train, rng, bank, range(TRAIN_RENDITIONS))
        _write_split(folder, "eval", n_eval, rng, bank, range(TRAIN_RENDITIONS, RENDITIONS))

    return generate_once(root, settings, write, AudioDataError, "embedded audio set")


def main() -> None:
    """``python -m dcls_vision.data.audio_synth <root> [n_train n_eval seed n_words]``: generate the embedded set."""
    import sys

    args = sys.argv[1:]
    if not args:
        raise SystemExit("usage: python -m dcls_vision.data.audio_synth ROOT [N_TRAIN N_EVAL SEED N_WORDS]")
    nums = [int(a) for a in args[1:5]]
    print(ensure_embedded_audioset(Path(args[0]), *nums))


if __name__ == "__main__":
    main()
