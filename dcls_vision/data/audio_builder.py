"""``data.name=audioset``: the train/val datasets and their device batch transforms (waveform -> dB mel).

The datasets return waveforms (or pre-computed dB mel); the spectrogram is made on the training device by the
module :func:`batch_transforms` returns (the trainer moves it there and applies it before mixup). Mixup on the
spectrograms with multi-hot targets is :func:`multilabel_mixup`, the reference's ``batch_mixup_fn``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .audio import AudioDataError, AudioDataWarning, AudioSetArrays, AudioSetFolder, norm_stats, stats_cache_path
from .audio_features import AudioBatchTransform, LogMel, WaveAugment
from .audio_hdf5 import AudioSetHDF5, split_files
from .audio_synth import ensure_embedded_audioset
from .paths import resolve_path

LAYOUTS = (
    "data.format=folder (<root>/<split>_segments.csv + <root>/<audio_dir>/<split>/<YTID>.wav), "
    "arrays (<root>/<split>_data.npy + <split>_targets.npy) or hdf5 (PANNs packed <root>/<split>.h5: "
    "balanced_train, eval, full_unbal_bal_train_wav)"
)


def _datasets(cfg: Mapping[str, Any], root: Path) -> tuple[Dataset, Dataset]:
    fmt = cfg["format"]
    splits = {"data.train_split": str(cfg["train_split"]), "data.val_split": str(cfg["val_split"])}
    if fmt == "hdf5":
        return tuple(AudioSetHDF5(split_files(root, s, option)) for option, s in splits.items())  # type: ignore
    if fmt == "arrays":
        for option, split in splits.items():
            _require(root / f"{split}_data.npy", option, split, fmt)
        return AudioSetArrays(root, splits["data.train_split"]), AudioSetArrays(root, splits["data.val_split"])
    if fmt != "folder":
        raise AudioDataError(f"data.format={fmt!r} is not supported; allowed: folder, arrays, hdf5")
    labels = root / str(cfg["labels_csv"])
    audio = root / str(cfg["audio_dir"])
    for option, split in splits.items():
        _require(root / f"{split}_segments.csv", option, split, fmt)
    return tuple(  # type: ignore[return-value]
        AudioSetFolder(root / f"{split}_segments.csv", audio / split, labels) for split in splits.values()
    )


def _require(path: Path, option: str, split: str, fmt: str) -> None:
    """A missing split file names the split option, the accepted layouts and the .h5 files it sees instead."""
    if path.is_file():
        return
    h5 = sorted(p.name for p in path.parent.glob("*.h5"))
    hint = f"; {path.parent} holds {', '.join(h5[:4])}: set data.format=hdf5" if h5 else ""
    raise AudioDataError(f"{option}={split!r} (data.format={fmt}): {path} not found; allowed: {LAYOUTS}{hint}")


def _warn_skipped_augmentation(train: Dataset, cfg: Mapping[str, Any], reprob: float) -> None:
    """Pre-computed dB mel arrays cannot be rolled, sped up or erased before the mel scale: say so at start."""
    if getattr(train, "is_waveform", True):
        return
    skipped = [
        f"{name} ({key}={value})"
        for name, key, value, on in (
            ("waveform roll", "data.roll", cfg["roll"], bool(cfg["roll"])),
            ("speed perturbation", "data.speed_p", cfg["speed_p"], float(cfg["speed_p"]) > 0),
            ("random erasing", "aug.reprob", reprob, reprob > 0),
        )
        if on
    ]
    if skipped:
        warnings.warn(
            f"data.format=arrays holds dB mel spectrograms, not waveforms: {', '.join(skipped)} skipped; store "
            "waveforms to train with them",
            AudioDataWarning,
            stacklevel=3,
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
    classes = int(train.num_classes)
    expected = cfg["num_classes"]
    if expected is not None and int(expected) != classes:
        raise AudioDataError(f"data.num_classes={expected} but {root} has {classes} classes; fix one of them")
    if cfg["mean"] and cfg["std"]:
        mean, std = float(cfg["mean"][0]), float(cfg["std"][0])
    else:
        key = f"{cfg['format']}_{cfg['train_split']}"
        mean, std = norm_stats(train, stats_cache_path(root, key), int(cfg["stats_clips"]))
    reprob = float(aug_cfg["reprob"]) if aug_cfg is not None else 0.0
    _warn_skipped_augmentation(train, cfg, reprob)
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
