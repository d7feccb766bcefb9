"""Evaluation preprocessing of PIL images, identical to what the checkpoint's trainer used for validation.

ImageNet-style data: timm's eval transform (resize to ``img_size / crop_pct``, centre crop) from the data config,
as :func:`dcls_vision.data.transforms.imagenet_transforms` builds it. Small grey images (Fashion-MNIST) were fed
to the trainer as uint8 tensors and normalised by :class:`~dcls_vision.data.transforms.ToFloatNormalize`; here the
PIL image is resized only when its size differs from ``img_size`` (so a 28x28 PNG of the original pixels gives a
bit-identical tensor), turned into a uint8 tensor and normalised by the same class.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from PIL import Image
from torchvision.transforms import functional as F

from dcls_vision.data.transforms import ToFloatNormalize, imagenet_transforms, val_crop_pct

Transform = Callable[[Image.Image], torch.Tensor]


def _per_channel(value: Any, channels: int) -> tuple[float, ...]:
    values = tuple(float(v) for v in (value if hasattr(value, "__iter__") else [value]))
    return values * channels if len(values) == 1 else values


def pil_mode(data_cfg: Mapping[str, Any]) -> str:
    """PIL mode the model expects: "L" for one input channel, else "RGB"."""
    return "L" if int(data_cfg.get("in_chans") or 3) == 1 else "RGB"


class ResizeCenterCrop:
    """Shorter side to ``floor(size / crop_pct)``, then a centre crop of ``size``; a no-op at the target size."""

    def __init__(self, size: int, crop_pct: float, interpolation: str) -> None:
        from timm.data.transforms import str_to_interp_mode

        self.size, self.crop_pct = int(size), float(crop_pct)
        self.scale_size = math.floor(self.size / self.crop_pct)
        self.interpolation = str_to_interp_mode(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        if img.size == (self.size, self.size) and self.scale_size == self.size:
            return img
        img = F.resize(img, self.scale_size, interpolation=self.interpolation)
        return F.center_crop(img, [self.size, self.size])


class SmallImageEval:
    """PIL image -> (resize/crop if needed) -> uint8 tensor -> ``ToFloatNormalize`` (the trainer's val transform)."""

    def __init__(self, data_cfg: Mapping[str, Any], crop_pct: float) -> None:
        channels = int(data_cfg.get("in_chans") or 1)
        self.resize = ResizeCenterCrop(
            int(data_cfg.get("img_size") or 28), crop_pct, str(data_cfg.get("interpolation") or "bilinear")
        )
        self.normalize = ToFloatNormalize(
            _per_channel(data_cfg.get("mean") or 0.5, channels), _per_channel(data_cfg.get("std") or 0.5, channels)
        )

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return self.normalize(F.pil_to_tensor(self.resize(img)))


def effective_crop_pct(data_cfg: Mapping[str, Any], crop_pct: float | None = None) -> float:
    """The crop fraction eval uses: ``crop_pct`` if given, else what the trainer's val transform used.

    ImageNet-style data: ``data.crop_pct`` with the trainer's own default (:func:`val_crop_pct`) when it is null.
    Fashion-MNIST: the trainer's small-image val transform never crops, so 1.0.
    """
    if crop_pct is not None:
        return float(crop_pct)
    return 1.0 if data_cfg.get("name") == "fashion_mnist" else val_crop_pct(data_cfg)


def eval_transform(data_cfg: Mapping[str, Any], crop_pct: float | None = None) -> Transform:
    """The checkpoint's validation transform for PIL images; ``crop_pct`` overrides the checkpoint's."""
    pct = effective_crop_pct(data_cfg, crop_pct)
    if data_cfg.get("name") == "fashion_mnist":
        return SmallImageEval(data_cfg, pct)
    return imagenet_transforms({**dict(data_cfg), "crop_pct": pct}, None)[1]
