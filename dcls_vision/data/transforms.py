"""Transforms: timm's for ImageNet-style folders, light tensor ones for small grey images."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from timm.data import create_transform
from timm.data.random_erasing import RandomErasing

Transform = Callable[[Any], torch.Tensor]

# timm's resize interpolations (timm.data.transforms.str_to_interp_mode); the train crop may also be 'random'
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
TRAIN_INTERPOLATIONS = (*INTERPOLATIONS, "random")
DEFAULT_CROP_PCT = 0.875  # timm's / torchvision's ImageNet eval crop (224 of 256) when data.crop_pct is null


def _get(cfg: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = cfg.get(key, default)
    return default if value is None else value


def val_crop_pct(data_cfg: Mapping[str, Any] | None) -> float:
    """The centre-crop fraction of the validation transform: ``data.crop_pct``, or DEFAULT_CROP_PCT when unset.

    One place for the default, so the trainer's val split and robustness evaluation (eval.py) crop alike.
    """
    return float(_get(data_cfg, "crop_pct", DEFAULT_CROP_PCT))


def _floats(value: Any, n: int | None = None) -> tuple[float, ...]:
    values = tuple(float(v) for v in (value if isinstance(value, Sequence) or hasattr(value, "__iter__") else [value]))
    return values * n if n is not None and len(values) == 1 else values


def _color_jitter(value: Any) -> float | tuple[float, ...]:
    """timm wants a float or a tuple (not an omegaconf ListConfig)."""
    return float(value) if isinstance(value, (int, float)) else _floats(value)


class PadCrop:
    """Random crop of the original size from the image zero-padded by ``padding`` (the CIFAR-style shift).

    Uses Python's ``random``: DataLoader seeds it per worker, and it is ~10x cheaper per call than torch's.
    """

    def __init__(self, padding: int) -> None:
        self.padding = int(padding)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        # = crop of F.pad(img, p) at offset (p + dy, p + dx), written as a shifted copy (3x cheaper)
        p = self.padding
        h, w = img.shape[-2:]
        dy, dx = random.randint(-p, p), random.randint(-p, p)
        if abs(dy) >= h or abs(dx) >= w:
            return torch.zeros_like(img)
        out = torch.zeros_like(img)
        out[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = img[
            ..., max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
        ]
        return out


class RandomHFlip:
    def __init__(self, p: float) -> None:
        self.p = float(p)

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return img.flip(-1) if random.random() < self.p else img


class ToFloatNormalize:
    """uint8 tensor (C, H, W) -> normalised float32."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1) * 255
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1) * 255

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() - self.mean) / self.std


class Compose:
    def __init__(self, steps: Sequence[Transform]) -> None:
        self.steps = list(steps)

    def __call__(self, img: Any) -> torch.Tensor:
        for step in self.steps:
            img = step(img)
        return img

    def __repr__(self) -> str:
        return f"Compose({', '.join(type(s).__name__ for s in self.steps)})"


def small_image_transforms(
    data_cfg: Mapping[str, Any], aug_cfg: Mapping[str, Any] | None
) -> tuple[Transform, Transform]:
    """(train, val) for uint8 tensor images such as Fashion-MNIST.

    Train: pad-crop (``pad_crop``, 0 = off), horizontal flip (``hflip``), normalise, random erasing
    (``reprob``, ``remode``). ImageNet-only keys (``auto_augment``, ``scale``, ``ratio``,
    ``color_jitter``) are ignored: they are meant for large RGB photos.
    """
    channels = int(_get(data_cfg, "in_chans", 1))
    mean, std = _floats(_get(data_cfg, "mean", 0.5), channels), _floats(_get(data_cfg, "std", 0.5), channels)
    normalize = ToFloatNormalize(mean, std)
    train: list[Transform] = []
    if int(_get(aug_cfg, "pad_crop", 0)) > 0:
        train.append(PadCrop(int(_get(aug_cfg, "pad_crop"))))
    if float(_get(aug_cfg, "hflip", 0.0)) > 0:
        train.append(RandomHFlip(float(_get(aug_cfg, "hflip"))))
    train.append(normalize)
    if float(_get(aug_cfg, "reprob", 0.0)) > 0:
        train.append(
            RandomErasing(float(_get(aug_cfg, "reprob")), mode=str(_get(aug_cfg, "remode", "pixel")), device="cpu")
        )
    return Compose(train), Compose([normalize])


def imagenet_transforms(data_cfg: Mapping[str, Any], aug_cfg: Mapping[str, Any] | None) -> tuple[Transform, Transform]:
    """(train, val) from ``timm.data.create_transform``: RandAugment/RRC/erasing; val resize + centre crop.

    ``test_img_size`` (default ``img_size``) sets the validation crop: timm's A3 recipe trains at 160
    and evaluates at 224 (the "FixRes" train/test resolution discrepancy). The train crop resizes with
    ``aug.train_interpolation`` (timm's ``--train-interpolation``), else with ``data.interpolation`` as val.
    """
    channels = int(_get(data_cfg, "in_chans", 3))
    size = int(_get(data_cfg, "img_size", 224))
    test_size = int(_get(data_cfg, "test_img_size", None) or size)
    common = {
        "interpolation": str(_get(data_cfg, "interpolation", "bicubic")),
        "mean": _floats(_get(data_cfg, "mean", (0.485, 0.456, 0.406)), channels),
        "std": _floats(_get(data_cfg, "std", (0.229, 0.224, 0.225)), channels),
    }
    train_interpolation = _get(aug_cfg, "train_interpolation") or common["interpolation"]
    train = create_transform(
        is_training=True,
        scale=_floats(_get(aug_cfg, "scale", (0.08, 1.0))),
        ratio=_floats(_get(aug_cfg, "ratio", (3 / 4, 4 / 3))),
        hflip=float(_get(aug_cfg, "hflip", 0.5)),
        color_jitter=_color_jitter(_get(aug_cfg, "color_jitter", 0.4)),
        auto_augment=_get(aug_cfg, "auto_augment"),
        re_prob=float(_get(aug_cfg, "reprob", 0.0)),
        re_mode=str(_get(aug_cfg, "remode", "pixel")),
        input_size=(channels, size, size),
        **{**common, "interpolation": str(train_interpolation)},
    )
    val = create_transform(
        is_training=False, crop_pct=val_crop_pct(data_cfg), input_size=(channels, test_size, test_size), **common
    )
    return train, val
