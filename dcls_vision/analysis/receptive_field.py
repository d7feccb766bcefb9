"""Theoretical receptive field (RF) of every block of a 2-D network, traced through one forward pass.

Each activation carries, per spatial axis, the input interval ``[lo, hi]`` seen by its first unit and the
``jump`` (input pixels between neighbouring units): unit ``i`` sees ``[lo + i*jump, hi + i*jump]`` and the RF
size is ``hi - lo + 1`` (the image border ignored, as usual). Convolutions and pools update it
(``lo += (first_tap - pad_before) * jump``, ``hi += (last_tap - pad_before) * jump``, ``jump *= stride``);
other ops merge their inputs' intervals (a residual sum sees the union of both branches). Global pools and
means over both spatial axes see the whole image. Not recognised: attention and other token mixing,
spatial reductions on channels-last tensors, resampling; networks made of those report the conv path only.

A DCLS layer counts at its dilated kernel size, or with ``effective=True`` at the extent its learned
positions actually use: the bounding box, over all channels, of the constructed kernel's taps with
``|K| > threshold * max|K|``.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Conv2dSame
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from dcls_vision.ops import DclsLayer

_ATTR = "_dcls_rf"
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)
_GLOBAL_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_GLOBAL_FUNCS = {F.adaptive_avg_pool2d, F.adaptive_max_pool2d}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin, Tensor.mean, Tensor.sum, Tensor.amax, Tensor.amin}
# Block-level rows of the table: stems, stage downsamplers, blocks (timm ConvNeXt/MetaFormer/FastViT), ResNet
# bottlenecks, and stages that hold their blocks directly (the quickstart nets). Innermost matches are kept.
DEFAULT_BLOCKS = r"^(stem|stages\.\d+\.downsample|stages\.\d+\.blocks\.\d+|layer\d+\.\d+|stages\.\d+)$"


@dataclass(frozen=True)
class Span:
    """Per axis: the input interval [lo, hi] of the first unit, and the jump between units."""

    lo: float
    hi: float
    jump: float

    @property
    def size(self) -> float:
        return self.hi - self.lo + 1


Meta = tuple[Span, Span]


def _get(t: Any) -> Meta | None:
    return getattr(t, _ATTR, None) if isinstance(t, Tensor) else None


def _set(t: Tensor, meta: Meta) -> None:
    setattr(t, _ATTR, meta)


def _union(metas: list[Meta]) -> Meta:
    return tuple(
        Span(min(m[a].lo for m in metas), max(m[a].hi for m in metas), max(m[a].jump for m in metas)) for a in range(2)
    )


def _whole(shape: tuple[int, int]) -> Meta:
    return tuple(Span(0.0, float(n - 1), float(n)) for n in shape)


class _Propagate(TorchFunctionMode):
    """Gives every op's outputs the union of its inputs' RF (module hooks then correct convs and pools)."""

    def __init__(self, image_shape: tuple[int, int]) -> None:
        super().__init__()
        self.image_shape = image_shape

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        metas = [m for m in map(_get, tree_leaves((args, kwargs))) if m is not None]
        if metas:
            meta = _union(metas)
            if func in _GLOBAL_FUNCS or (func in _REDUCTIONS and _reduces_hw(args, kwargs)):
                meta = _whole(self.image_shape)
            for t in tree_leaves(out):
                if isinstance(t, Tensor) and t.dim() >= 2:
                    _set(t, meta)
        return out


def _reduces_hw(args: tuple, kwargs: dict) -> bool:
    x = args[0] if args else None
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if not isinstance(x, Tensor) or x.dim() != 4 or dims is None:
        return False
    dims = {d % 4 for d in ((dims,) if isinstance(dims, int) else dims)}
    return {2, 3} <= dims


def _conv_geometry(module: nn.Module, x: Tensor, effective: bool, threshold: float) -> list[tuple[int, int, int, int]]:
    """Per spatial axis (first tap, last tap, padding before, stride) of a conv / pool / DCLS layer."""
    if isinstance(module, DclsLayer):
        taps = [(0, k - 1) for k in module.kernel_size]
        if effective:
            taps = _kernel_support(module, threshold)
        return [(t0, t1, pad[0], s) for (t0, t1), pad, s in zip(taps, module.padding, module.stride)]
    k = _pair(module.kernel_size)
    s = _pair(module.stride)
    d = _pair(getattr(module, "dilation", 1))
    if isinstance(module, Conv2dSame) or type(module).__name__.endswith("Same"):
        size = x.shape[-2:]
        pads = [
            max((math.ceil(n / st) - 1) * st + (kk - 1) * dd + 1 - n, 0) // 2 for n, st, kk, dd in zip(size, s, k, d)
        ]
    elif module.padding == "same":
        pads = [dd * (kk - 1) // 2 for kk, dd in zip(k, d)]
    elif module.padding == "valid":
        pads = [0, 0]
    else:
        pads = list(_pair(module.padding))
    return [(0, (kk - 1) * dd, p, st) for kk, dd, p, st in zip(k, d, pads, s)]


def _pair(v: Any) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


@torch.no_grad()
def _kernel_support(layer: DclsLayer, threshold: float) -> list[tuple[int, int]]:
    """Bounding box (first, last tap per spatial axis) of ``|K| > threshold * max|K|`` over all channels."""
    kernel = layer.build_kernel().abs()
    mask = kernel > threshold * kernel.max()
    out = []
    for axis in range(2):
        other = tuple(d for d in range(kernel.dim()) if d != axis + 2)
        used = mask.any(dim=other).nonzero().flatten()
        out.append((int(used.min()), int(used.max())) if len(used) else (layer.kernel_size[axis] // 2,) * 2)
    return out


def _block_names(model: nn.Module, pattern: str) -> list[str]:
    regex = re.compile(pattern)
    names = [n for n, m in model.named_modules() if n and regex.search(n) and not isinstance(m, nn.Identity)]
    return [n for n in names if not any(o.startswith(n + ".") for o in names)]  # innermost matches


def _geometry_model(model: nn.Module, effective: bool) -> nn.Module:
    """The model to trace: a meta copy whose DCLS layers skip kernel construction, unless ``effective``."""
    if effective:
        return model
    model = copy.deepcopy(model).to("meta")
    for layer in model.modules():
        if isinstance(layer, DclsLayer):  # geometry only: skip the (slow on meta) kernel construction
            shape = (*layer.weight.shape[:2], *layer.kernel_size)
            layer.dense_kernel = functools.partial(torch.empty, shape, device="meta")
    return model


def _register_hooks(
    model: nn.Module,
    names: list[str],
    input_shape: tuple[int, int, int, int],
    effective: bool,
    threshold: float,
    rows: dict[str, dict[str, Any]],
) -> list[Any]:
    """Forward hooks that carry the spans through convs/pools and record a row per block in ``rows``."""

    def spatial_hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        meta = _get(inputs[0])
        if meta is None or not isinstance(output, Tensor):
            return
        geometry = _conv_geometry(module, inputs[0], effective, threshold)
        _set(
            output,
            tuple(
                Span(m.lo + (t0 - p) * m.jump, m.hi + (t1 - p) * m.jump, m.jump * s)
                for m, (t0, t1, p, s) in zip(meta, geometry)
            ),
        )

    def global_hook(module: nn.Module, inputs: tuple, output: Tensor) -> None:
        if _get(inputs[0]) is not None and isinstance(output, Tensor):
            _set(output, _whole(input_shape[-2:]))

    def block_hook(name: str):
        def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
            t = (
                output
                if isinstance(output, Tensor)
                else next((o for o in tree_leaves(output) if isinstance(o, Tensor)), None)
            )
            meta = _get(t)
            if meta is not None:
                rows[name] = {
                    "block": name,
                    "rf": [m.size for m in meta],
                    "jump": [m.jump for m in meta],
                    "start": [m.lo for m in meta],
                    "out_shape": list(t.shape[1:]),
                }

        return hook

    handles = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, DclsLayer) + _POOLS) and (
            not isinstance(module, DclsLayer) or module.n_dims == 2
        ):
            handles.append(module.register_forward_hook(spatial_hook))
        elif isinstance(module, _GLOBAL_POOLS) or type(module).__name__ == "SelectAdaptivePool2d":
            handles.append(module.register_forward_hook(global_hook))
        if name in names:
            handles.append(module.register_forward_hook(block_hook(name)))
    return handles


def trace(
    model: nn.Module,
    input_shape: tuple[int, int, int, int],
    blocks: str = DEFAULT_BLOCKS,
    effective: bool = False,
    threshold: float = 0.01,
) -> dict[str, Any]:
    """One forward pass; the RF, jump and output size of every module whose name matches ``blocks``.

    Runs on meta tensors (free) unless ``effective`` needs the learned kernels.
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape={input_shape!r} must be (N, C, H, W): the tracer handles 2-D networks")
    device = next(model.parameters()).device if effective else torch.device("meta")
    model = _geometry_model(model, effective)
    model.eval()
    rows: dict[str, dict[str, Any]] = {}
    names = _block_names(model, blocks)
    if not names:
        raise ValueError(f"no module name matches blocks={blocks!r}; allowed: a regex over model.named_modules()")
    handles = _register_hooks(model, names, input_shape, effective, threshold, rows)
    x = torch.zeros(input_shape, device=device)
    _set(x, (Span(0.0, 0.0, 1.0), Span(0.0, 0.0, 1.0)))
    try:
        with torch.no_grad(), _Propagate(tuple(input_shape[-2:])):
            model(x)
    finally:
        for h in handles:
            h.remove()
    table = [rows[n] for n in names if n in rows]
    for i, row in enumerate(table):
        row["index"] = i
        row["rf_size"] = max(row["rf"])
    return {
        "input_shape": list(input_shape),
        "effective": effective,
        "threshold": threshold if effective else None,
        "blocks": table,
    }
