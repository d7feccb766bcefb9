"""Parameters and FLOPs of a model, with the DCLS kernel construction counted separately.

Forward cost: the model with every DCLS layer exported to its equivalent plain convolution
(:func:`~dcls_vision.ops.convert_to_conv`: a dense kernel of the dilated size), counted by
``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (shapes only, nothing computed). That is the
convention of the thesis (ConvNeXt-T 4.5G, ConvNeXt-T-dcls 5.0G), whose "FLOPs" are multiply-adds (MACs, as
in fvcore/timm); we report both ``gmacs`` and ``gflops = 2 * gmacs``. Like fvcore and FlopCounterMode,
only convolutions and matrix products count; norms, activations and additions do not.

Construction cost: building each DCLS layer's dense kernel, once per forward pass and independent of the
batch (in eval it is cached, and an exported model has none). Counted op by op: matrix products (the
Gauss/triangle einsum) by FlopCounterMode, plus one operation per output element of every pointwise op,
per input element of every reduction and per scattered element (the bilinear scatter-add).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from dcls_vision.ops import convert_to_conv, dcls_layers, dcls_parameters

aten = torch.ops.aten
_REDUCTIONS = {aten.sum, aten.mean, aten.amax, aten.amin, aten.prod, aten.max, aten.min}
_SCATTERS = {aten.scatter_add, aten.scatter_add_, aten.index_add, aten.index_add_, aten.index_put, aten.index_put_}
_MASKED = {aten.masked_fill, aten.masked_fill_}


class ElementwiseCounter(TorchDispatchMode):
    """Counts elementwise work below autograd: pointwise outputs, reduced inputs and scattered elements."""

    def __init__(self) -> None:
        super().__init__()
        self.pointwise = self.reduction = self.scatter = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if torch.Tag.pointwise in func.tags or packet in _MASKED:
            self.pointwise += sum(t.numel() for t in tree_leaves(out) if isinstance(t, torch.Tensor))
        elif packet in _REDUCTIONS:
            self.reduction += args[0].numel()
        elif packet in _SCATTERS:
            src = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)][-1]
            self.scatter += src.numel()
        return out

    @property
    def total(self) -> int:
        return self.pointwise + self.reduction + self.scatter


@dataclass
class ConstructionCount:
    """Work to build one DCLS layer's dense kernel (once per forward pass)."""

    matmul_flops: int  # 2 x multiply-adds of the einsum / batched matmul
    elementwise_ops: int  # pointwise + reduction + scatter elements

    @property
    def flops(self) -> int:
        return self.matmul_flops + self.elementwise_ops


def count_construction(layer: nn.Module) -> ConstructionCount:
    """Operations of one ``layer.build_kernel()`` call (no gradient; the layer is left unchanged)."""
    with torch.no_grad(), FlopCounterMode(display=False) as fc, ElementwiseCounter() as ec:
        layer.build_kernel()
    return ConstructionCount(int(fc.get_total_flops()), ec.total)


def count_params(model: nn.Module) -> dict[str, int]:
    """Distinct parameters (shared positions once), split into DCLS positions, σ and the rest."""
    dcls = dcls_parameters(model)
    total = sum(p.numel() for p in model.parameters())
    positions = sum(p.numel() for p in dcls["positions"])
    sigma = sum(p.numel() for p in dcls["sigma"])
    return {"total": total, "positions": positions, "sigma": sigma, "weights": total - positions - sigma}


def _groups(model: nn.Module) -> list[str]:
    """Module names for the per-part breakdown: top-level children; a container of like modules (``stages``)
    is split into its children."""
    names = []
    for name, child in model.named_children():
        kinds = {type(c) for c in child.children()}
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1 and len(kinds) == 1:
            names += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            names.append(name)
    return names


Forward = Callable[[nn.Module, torch.Tensor], Any]


def _call(model: nn.Module, x: torch.Tensor) -> Any:
    return model(x)


def count_forward(
    model: nn.Module, input_shape: tuple[int, ...], forward: Forward = _call, device: str = "meta"
) -> tuple[int, dict[str, int]]:
    """FLOPs (2 x MACs) of ``forward(plain, x)`` on a plain-convolution copy of ``model``, and per part.

    The copy is converted where the model is (building kernels on meta tensors runs slow Python meta
    kernels), then moved to ``device``: on meta the forward costs nothing; ``device="cpu"`` (real zeros in,
    computed) is for models whose forward has ops without meta kernels (mmcv's RoIAlign in a detector).
    ``forward`` picks what one inference is (default ``plain(x)``; a detector's or segmentor's test-time path).
    """
    plain = convert_to_conv(copy.deepcopy(model).eval()).to(device)
    x = torch.zeros(input_shape, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        forward(plain, x)
    return int(fc.get_total_flops()), _parts(plain, fc.get_flop_counts())


def _parts(plain: nn.Module, counts: dict[str, dict[Any, int]]) -> dict[str, int]:
    """FLOPs per part (see :func:`_groups`). FlopCounterMode names a module by its path under the root when the
    root was called, else (a forward that calls parts directly) by its class: such a class counts for the one
    part that holds it. What no part claims is ``other``."""
    root = type(plain).__name__
    groups = _groups(plain)
    owners: dict[str, set[str]] = {}
    for g in groups:
        for m in plain.get_submodule(g).modules():
            owners.setdefault(type(m).__name__, set()).add(g)
    parts = {g: int(sum(counts.get(f"{root}.{g}", {}).values())) for g in groups}
    for key, per_op in counts.items():
        owner = owners.get(key, set())
        if "." not in key and key not in (root, "Global") and len(owner) == 1:
            parts[next(iter(owner))] += int(sum(per_op.values()))
    other = int(sum(counts.get("Global", {}).values())) - sum(parts.values())
    if other:
        parts["other"] = other
    return parts


def analyse(
    model: nn.Module, input_shape: tuple[int, ...], forward: Forward = _call, device: str = "meta"
) -> dict[str, Any]:
    """Parameters, forward MACs/FLOPs (per image and per part) and construction cost of ``model``.

    ``input_shape`` is (N, C, H, W); forward figures are per image (divided by N), construction per pass.
    ``forward`` and ``device`` as in :func:`count_forward` (whole detectors / segmentors pass theirs).
    """
    batch = input_shape[0]
    flops, parts = count_forward(model, input_shape, forward, device)
    layers = list(dcls_layers(model))
    construction = [count_construction(layer) for layer in layers]
    c_matmul = sum(c.matmul_flops for c in construction)
    c_elem = sum(c.elementwise_ops for c in construction)
    per_image = flops / batch
    return {
        "input_shape": list(input_shape),
        "params": count_params(model),
        "params_m": count_params(model)["total"] / 1e6,
        "gmacs": per_image / 2e9,
        "gflops": per_image / 1e9,
        "parts_gmacs": {k: v / batch / 2e9 for k, v in parts.items()},
        "dcls_layers": len(layers),
        "construction": {
            "gflops_per_pass": (c_matmul + c_elem) / 1e9,
            "matmul_gflops": c_matmul / 1e9,
            "elementwise_gops": c_elem / 1e9,
            "note": "once per forward pass whatever the batch; cached in eval, absent after export",
        },
        "forward_with_construction_gflops_per_image": (flops + c_matmul + c_elem) / batch / 1e9,
    }
