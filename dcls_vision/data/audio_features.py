"""Waveform batch -> normalised dB mel spectrogram, on the training device (thesis ch. 5, DCLS-Audio datasets.py).

torchaudio has no release for our torch, so the spectrogram is ``torch.stft`` (periodic Hann window, centred,
reflect padding, power 2: torchaudio's ``Spectrogram`` defaults) and the mel filterbank is nnAudio's copy of
librosa's ``mel`` with ``htk=True, norm=None`` (= torchaudio ``MelScale`` defaults). nnAudio was chosen over
librosa because it adds no dependency beyond numpy/scipy/torch (librosa pulls ~10: soundfile, soxr, pooch, numba,
scikit-learn, ...) and only its filterbank function is used. 10 s at 32 kHz with hop 320 gives 1001 frames.

Training augmentation as the reference: a random circular roll of the waveform, speed perturbation (rate
U(0.5, 1.5) with probability 0.5: the clip is stretched to ``len x rate`` samples by nearest-index resampling, then
random-aligned pad/crop back to 10 s; DCLS-Audio augmentations.py:248-279 (Resample), 324-333 (SpeedPerturbation))
and timm random erasing (probability ``reprob``) of the power spectrogram before the mel scale. No SpecAugment
time/frequency masking: the reference does not use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

SAMPLE_RATE = 32000
CLIP_SECONDS = 10
CLIP_SAMPLES = SAMPLE_RATE * CLIP_SECONDS


@dataclass(frozen=True)
class MelSettings:
    """DCLS-Audio datasets.py build_transform: 32 kHz, window 1024, hop 320, 128 mel bands in 50 Hz-14 kHz."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop_length: int = 320
    n_mels: int = 128
    f_min: float = 50.0
    f_max: float = 14000.0
    top_db: float | None = None  # torchaudio AmplitudeToDB default: no floor relative to the max


def mel_filterbank(s: MelSettings) -> Tensor:
    """(n_fft//2 + 1, n_mels) triangular HTK-mel filterbank without area normalisation."""
    from nnAudio.librosa_functions import get_mel

    fb = get_mel(s.sample_rate, s.n_fft, n_mels=s.n_mels, fmin=s.f_min, fmax=s.f_max, htk=True, norm=None)
    return torch.as_tensor(fb, dtype=torch.float32).T.contiguous()


def num_frames(samples: int, hop_length: int) -> int:
    """Frames of a centred STFT: 320000 samples, hop 320 -> 1001."""
    return samples // hop_length + 1


class WaveAugment(nn.Module):
    """Per-sample random roll and speed perturbation of a (B, T) waveform batch (training only)."""

    def __init__(self, roll: bool = True, speed_rates: tuple[float, float] = (0.5, 1.5), speed_p: float = 0.5):
        super().__init__()
        self.roll, self.speed_rates, self.speed_p = roll, speed_rates, speed_p

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[-1]
        out = []
        for wave in x:
            if self.roll:
                wave = torch.roll(wave, int(torch.randint(-length, length, (1,))), dims=-1)
            if self.speed_p > 0 and float(torch.rand(())) < self.speed_p:
                lo, hi = self.speed_rates
                rate = lo + (hi - lo) * float(torch.rand(()))
                wave = _pad_crop_random(stretch_nearest(wave, rate), length)
            out.append(wave)
        return torch.stack(out)


def stretch_nearest(wave: Tensor, rate: float) -> Tensor:
    """``wave`` resampled to ``ceil(len x rate)`` samples, sample k = wave[round(k / rate)] (the reference's
    ``Resample.resample_nearest``, augmentations.py:270-279): rate 1.5 makes the clip 1.5x longer (slower, lower)."""
    length = wave.shape[-1]
    index = torch.arange(0, length, 1.0 / rate, device=wave.device).round().long().clamp(max=length - 1)
    return wave[..., index]


def _pad_crop_random(wave: Tensor, length: int) -> Tensor:
    """Random-aligned crop or zero pad to ``length`` (augmentations.py:76-85, 195-207: a crop never starts at
    the last possible offset, ``randint(0, diff)``, a pad splits ``0..missing`` inclusive)."""
    diff = wave.shape[-1] - length
    if diff > 0:
        start = int(torch.randint(0, diff, (1,)))
        return wave[start : start + length]
    if diff < 0:
        left = int(torch.randint(0, -diff + 1, (1,)))
        return nn.functional.pad(wave, (left, -diff - left))
    return wave


class LogMel(nn.Module):
    """(B, T) waveforms -> (B, 1, n_mels, frames) normalised dB mel; (B, n_mels, frames) dB mel -> normalised.

    ``erase`` (timm RandomErasing or None) acts on the power spectrogram of training batches, as the reference.
    """

    def __init__(self, mean: float, std: float, settings: MelSettings | None = None, erase: nn.Module | None = None):
        super().__init__()
        self.s = settings or MelSettings()
        self.mean, self.std, self.erase = float(mean), float(std), erase
        self.register_buffer("fb", mel_filterbank(self.s), persistent=False)
        self.register_buffer("window", torch.hann_window(self.s.n_fft), persistent=False)

    def power(self, x: Tensor) -> Tensor:
        """(B, T) -> (B, n_fft//2 + 1, frames) power spectrogram (torch.stft, centred, reflect padding)."""
        spec = torch.stft(
            x.float(),
            self.s.n_fft,
            hop_length=self.s.hop_length,
            window=self.window,
            center=True,
            pad_mode="reflect",
            return_complex=True,
        )
        return spec.real.square() + spec.imag.square()

    def db_mel(self, x: Tensor) -> Tensor:
        """(B, T) waveforms -> (B, n_mels, frames) dB mel (10 log10, floor 1e-10, as AmplitudeToDB)."""
        p = self.power(x)
        if self.erase is not None and self.training:
            p = self.erase(p[:, None])[:, 0]
        mel = torch.matmul(p.transpose(1, 2), self.fb).transpose(1, 2)
        db = 10.0 * torch.log10(mel.clamp_min(1e-10))
        if self.s.top_db is not None:
            db = torch.maximum(db, db.amax(dim=(1, 2), keepdim=True) - self.s.top_db)
        return db

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 2:
            x = self.db_mel(x)
        elif x.dim() != 3:
            raise ValueError(f"LogMel input of shape {tuple(x.shape)}; allowed: (B, samples) or (B, n_mels, frames)")
        return ((x - self.mean) / self.std)[:, None]


class AudioBatchTransform(nn.Module):
    """What the trainer applies to every batch on the device: waveform augment (train) then :class:`LogMel`."""

    def __init__(self, logmel: LogMel, augment: WaveAugment | None = None):
        super().__init__()
        self.logmel, self.augment = logmel, augment

    def forward(self, x: Tensor) -> Tensor:
        if self.augment is not None and self.training and x.dim() == 2:
            x = self.augment(x)
        return self.logmel(x)


__all__ = [
    "CLIP_SAMPLES",
    "SAMPLE_RATE",
    "AudioBatchTransform",
    "LogMel",
    "MelSettings",
    "WaveAugment",
    "mel_filterbank",
    "stretch_nearest",
    "num_frames",
]
