"""Effective receptive field (ERF): how much each input pixel moves the central output unit.

As in Luo et al. (2016) and the thesis (§2.12): for each image, the gradient of the sum over channels of
the central unit of a feature map (``forward_features`` by default, or any module's output) with respect
to the input; its magnitude summed over input channels (``abs``, or ``relu`` as in RepLKNet's script) is
averaged over the images. For a linear network this map is exactly the composed kernel.

Summary: the "high-contribution area ratio" of RepLKNet: for a threshold t, the area of the smallest square
centred on the input that holds a fraction t of the map's total, over the input area.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .errors import AnalysisError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
REDUCTIONS = ("abs", "relu")


def load_images(
    folder: str | Path,
    size: tuple[int, int],
    in_chans: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    limit: int | None = None,
) -> Tensor:
    """Images of ``folder`` (recursively, sorted), resized to ``size`` and normalised: (N, C, H, W)."""
    from PIL import Image
    from torchvision.transforms import v2

    root = Path(folder)
    if not root.is_dir():
        raise AnalysisError(f"--images {str(folder)!r} is not a directory; allowed: a folder of image files")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise AnalysisError(f"--images {str(folder)!r} holds no image file; allowed: {', '.join(IMAGE_SUFFIXES)}")
    tf = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize(size, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    mode = "L" if in_chans == 1 else "RGB"
    images = []
    for p in files:
        with Image.open(p) as im:
            images.append(tf(im.convert(mode)))
    return torch.stack(images)


def _features(model: nn.Module, x: Tensor, layer: str | None) -> Tensor:
    if layer is None:
        return model.forward_features(x) if hasattr(model, "forward_features") else model(x)
    modules = dict(model.named_modules())
    if layer not in modules:
        raise AnalysisError(
            f"--layer {layer!r} is not a module of {type(model).__name__}; allowed: a name from "
            "model.named_modules(), e.g. stages.1"
        )
    captured: list[Tensor] = []
    handle = modules[layer].register_forward_hook(lambda m, i, o: captured.append(o))
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0]


def erf_map(
    model: nn.Module, images: Tensor, layer: str | None = None, reduce: str = "abs", batch_size: int = 8
) -> Tensor:
    """Mean over ``images`` of the per-pixel contribution map (H, W) to the central unit of ``layer``."""
    if reduce not in REDUCTIONS:
        raise AnalysisError(f"reduce={reduce!r} is not supported; allowed: {', '.join(REDUCTIONS)}")
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:  # gradients only w.r.t. the input (DCLS layers then reuse their cached kernel)
        p.requires_grad_(False)
    total = torch.zeros(images.shape[-2:], dtype=torch.float64)
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].clone().requires_grad_(True)
            feats = _features(model, x, layer)
            if not isinstance(feats, Tensor) or feats.dim() != 4:
                got = getattr(feats, "shape", type(feats).__name__)
                raise AnalysisError(
                    f"the ERF needs a (N, C, H, W) feature map; {layer or 'forward_features'} gave "
                    f"{got}; allowed: --layer of a conv stage"
                )
            h, w = feats.shape[-2:]
            centre = feats[:, :, h // 2, w // 2].sum()
            (grad,) = torch.autograd.grad(centre, x)
            grad = grad.abs() if reduce == "abs" else grad.clamp(min=0)
            total += grad.sum(dim=(0, 1)).double()
    finally:
        for p in params:
            p.requires_grad_(True)
    return (total / len(images)).float()


def area_ratios(erf: Tensor, thresholds: tuple[float, ...] = (0.2, 0.3, 0.5, 0.99)) -> dict[str, float]:
    """Per threshold t: area of the smallest square centred on the map that holds t of the total, over the
    map's area (RepLKNet's high-contribution area ratio)."""
    h, w = erf.shape
    cy, cx = h // 2, w // 2
    total = float(erf.sum())
    out = {}
    for t in thresholds:
        ratio = 1.0
        for r in range(max(h, w)):
            box = erf[max(0, cy - r) : cy + r + 1, max(0, cx - r) : cx + r + 1]
            if float(box.sum()) >= t * total:
                ratio = box.numel() / (h * w)
                break
        out[str(t)] = ratio
    return out


def summarise(erf: Tensor) -> dict[str, Any]:
    """Peak location and its offset from the centre, totals and area ratios of an ERF map."""
    h, w = erf.shape
    py, px = divmod(int(erf.argmax()), w)
    return {
        "shape": [h, w],
        "sum": float(erf.sum()),
        "max": float(erf.max()),
        "peak": [py, px],
        "peak_offset_from_centre": [py - h // 2, px - w // 2],
        "area_ratio": area_ratios(erf),
    }
