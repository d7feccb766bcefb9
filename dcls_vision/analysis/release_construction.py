"""A ConvNeXt-dcls release as its own training code computed it: the reference a conversion's logits are checked
against.

Every DCLS conv of the converted model is swapped for the release's own construction of its own, untranslated
tensors (``P``/``SIG``): the 2022 CUDA bilinear kernel, the dcls 0.0.2-0.0.5 torch one (:func:`dcls_bilinear_kernel`)
or, for Gaussian releases, the ``dcls`` package's ``Dcls2d`` when ``DCLS`` is importable.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dcls_vision.models.release import Conversion


def dcls_bilinear_kernel(weight: Tensor, P: Tensor, size: int, transposed: bool, clamp: bool) -> Tensor:
    """The dense (C_out, C_in/g, s, s) kernel of a ``dcls`` bilinear construction, from its tensors (weight
    (C_out, C_in/g, K), P (2, C_out, C_in/g, K)). ``clamp``: the 2022 CUDA code (DCLS ``cuda`` branch 87ea108,
    ``dcls_construct_2d_cuda_kernel.cu`` lines 124-145 and 37-45): floor and rest of the position clamped to
    [0, s-1]. Without: the 2022-11 torch code (b5e3521 ``modules.py`` lines 224-243), out-of-kernel shares
    dropped. ``transposed``: ``P[0]`` along W (dcls 0.0.2-0.0.5) instead of H."""
    half = size // 2
    rows, cols = (P[1], P[0]) if transposed else (P[0], P[1])
    corners = []
    for p in (rows + half, cols + half):
        low = p.floor()
        rest = p - low
        if clamp:
            low = low.clamp(0, size - 1)
            rest = p.clamp(0, size - 1) - low
        corners.append((low.long(), rest))
    (h, rh), (w, rw) = corners
    kernel = weight.new_zeros(*weight.shape[:2], size * size)
    for dh, dw, share in ((0, 0, (1 - rh) * (1 - rw)), (1, 0, rh * (1 - rw)), (0, 1, (1 - rh) * rw), (1, 1, rh * rw)):
        hh, ww = h + dh, w + dw
        inside = (hh >= 0) & (hh < size) & (ww >= 0) & (ww < size)
        index = (hh.clamp(0, size - 1) * size + ww.clamp(0, size - 1)).long()
        kernel.scatter_add_(2, index, weight * share * inside)
    return kernel.view(*weight.shape[:2], size, size)


class _DenseReference(nn.Module):
    """A depthwise conv whose kernel is :func:`dcls_bilinear_kernel` of a release's own (untranslated) tensors."""

    def __init__(self, weight: Tensor, bias: Tensor, P: Tensor, size: int, transposed: bool, clamp: bool) -> None:
        super().__init__()
        self.register_buffer("kernel", dcls_bilinear_kernel(weight, P, size, transposed, clamp))
        self.register_buffer("bias", bias.clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel, self.bias, padding=self.kernel.shape[-1] // 2, groups=self.kernel.shape[0])


def _dcls_package_layer(dim: int, conv: Conversion, tensors: dict[str, Tensor]) -> nn.Module | None:
    """The ``dcls`` package's Dcls2d ("gauss") holding a release's tensors; None without ``DCLS``."""
    try:
        from DCLS.construct.modules import Dcls2d as RefDcls2d
    except ImportError:
        return None
    s = conv.dilated_kernel_size
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # Dcls2d logs, per layer, that its implicit-GEMM kernel is not installed
    try:
        layer = RefDcls2d(
            dim, dim, conv.arch.kernel_count, padding=s // 2, dilated_kernel_size=s, groups=dim, version=conv.convention
        )
    finally:
        logging.disable(previous)
    with torch.no_grad():
        for name, value in tensors.items():
            getattr(layer, name).copy_(value)
    return layer


REFERENCES = {
    "v0": "2022 CUDA construction (P[0] on rows, clamped into the kernel) on the release tensors",
    "v0-transposed": "dcls 0.0.2-0.0.5 bilinear construction (P[0] along W, no clamp) on the release tensors",
    "gauss": "dcls package Dcls2d (version gauss) on the release tensors",
}


def release_reference(model: nn.Module, source: Mapping[str, Tensor], conv: Conversion) -> nn.Module | None:
    """``model`` with every DCLS conv swapped for the release's own construction of its own tensors (its
    ``P``/``SIG``, untranslated): the release as its training code computed it. None when that needs ``DCLS``
    and it is missing."""
    ref, s = copy.deepcopy(model), conv.dilated_kernel_size
    for i, stage in enumerate(ref.stages):
        for j, block in enumerate(stage.blocks):
            names = ("weight", "bias", "P") + (("SIG",) if conv.arch.interpolation == "gauss" else ())
            tensors = {n: source[f"stages.{i}.{j}.dwconv.{n}"] for n in names}
            if conv.convention == "gauss":
                layer = _dcls_package_layer(block.conv_dw.in_channels, conv, tensors)
                if layer is None:
                    return None
            else:
                transposed = conv.convention == "v0-transposed"
                layer = _DenseReference(tensors["weight"], tensors["bias"], tensors["P"], s, transposed, not transposed)
            block.conv_dw = layer
    return ref.eval()
