"""``data.name=audioset``: the train/val datasets and their device batch transforms (waveform -> dB mel).

The datasets return waveforms (or pre-computed dB mel); the spectrogram is made on the training device by the
module :func:`batch_transforms` returns (the trainer moves it there and applies it before mixup). Mixup on the
spectrograms with multi-hot targets is :func:`multilabel_mixup`, the reference's ``batch_mixup_fn``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .audio import AudioDataError, AudioSetArrays, AudioSetFolder, norm_stats, stats_cache_path
from .audio_features import AudioBatchTransform, LogMel, WaveAugment
from .audio_synth import ensure_embedded_audioset
from .paths import resolve_path


def _datasets(cfg: Mapping[str, Any], root: Path) -> tuple[Dataset, Dataset]:
    fmt = cfg["format"]
    train_split, val_split = str(cfg["train_split"]), str(cfg["val_split"])
    if fmt == "arrays":
        return AudioSetArrays(root, train_split), AudioSetArrays(root, val_split)
    if fmt != "folder":
        raise AudioDataError(f"data.format={fmt!r} is not supported; allowed: folder, arrays")
    labels = root / str(cfg["labels_csv"])
    audio = root / str(cfg["audio_dir"])
    return tuple(  # type: ignore[return-value]
        AudioSetFolder(root / f"{split}_segments.csv", audio / split, labels) for split in (train_split, val_split)
    )


class SpecErasing(nn.Module):
    """timm RandomErasing on a (B, 1, F, T) spectrogram batch, its fill drawn on the batch's device."""

    def __init__(self, probability: float, mode: str):
        super().__init__()
        from timm.data.random_erasing import RandomErasing

        self.erase = RandomErasing(probability, mode=mode, device="cpu")

    def forward(self, x: Tensor) -> Tensor:
        self.erase.device = x.device
        return self.erase(x)


def build_audioset(cfg: Mapping[str, Any], aug_cfg: Mapping[str, Any] | None) -> tuple[Dataset, Dataset, int]:
    """(train, val, classes); ``train.batch_transform`` / ``val.batch_transform`` hold the device transforms."""
    root = resolve_path(cfg["root"], "data.root")
    if cfg["embedded"]:
        ensure_embedded_audioset(root)
    train, val = _datasets(cfg, root)
    classes = int(train.targets.shape[1])
    expected = cfg["num_classes"]
    if expected is not None and int(expected) != classes:
        raise AudioDataError(f"data.num_classes={expected} but {root} has {classes} classes; fix one of them")
    if cfg["mean"] and cfg["std"]:
        mean, std = float(cfg["mean"][0]), float(cfg["std"][0])
    else:
        key = f"{cfg['format']}_{cfg['train_split']}"
        mean, std = norm_stats(train, stats_cache_path(root, key), int(cfg["stats_clips"]))
    reprob = float(aug_cfg["reprob"]) if aug_cfg is not None else 0.0
    erase = SpecErasing(reprob, str(aug_cfg["remode"])) if reprob > 0 else None
    speed_p = float(cfg["speed_p"])
    augment = WaveAugment(bool(cfg["roll"]), tuple(cfg["speed_rates"]), speed_p)
    train.batch_transform = AudioBatchTransform(LogMel(mean, std, erase=erase), augment)
    val.batch_transform = AudioBatchTransform(LogMel(mean, std)).eval()
    train.norm = val.norm = (mean, std)
    return train, val, classes


def batch_transform(dataset: Dataset) -> nn.Module | None:
    """The device transform a dataset's batches need before the model (None: the batch is the model input)."""
    return getattr(dataset, "batch_transform", None)


def is_multilabel(dataset: Dataset) -> bool:
    """True for datasets with multi-hot targets (BCE loss, mAP metrics)."""
    return bool(getattr(dataset, "multilabel", False))


def multilabel_mixup(mixup: float, smoothing: float, num_classes: int) -> Callable[[Tensor, Tensor], Any] | None:
    """Batch mixup of spectrograms with multi-hot targets, as DCLS-Audio utils.py:163-170 (``batch_mixup_fn``).

    Targets are smoothed ``(1 - s) y + s / classes`` first; one ``lam ~ Beta(alpha, alpha)`` per batch (not folded
    to >= 0.5) mixes each sample with the one a random permutation pairs it with (timm's Mixup flips the batch:
    fixed pairs). None when both are off; with ``mixup=0`` only the smoothing applies.
    """
    if mixup <= 0 and smoothing <= 0:
        return None
    beta = torch.distributions.Beta(mixup, mixup) if mixup > 0 else None

    def apply(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        y = (1.0 - smoothing) * y.float() + smoothing / num_classes
        if beta is None:
            return x, y
        partner = torch.randperm(x.shape[0], device=x.device)
        lam = float(beta.sample())
        return x * lam + x[partner] * (1.0 - lam), y * lam + y[partner] * (1.0 - lam)

    return apply


__all__ = ["SpecErasing", "batch_transform", "build_audioset", "is_multilabel", "multilabel_mixup"]
