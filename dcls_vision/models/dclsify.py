"""Turn any timm model into its DCLS variant: swap selected convolutions for Dcls2d, share positions by stage.

Selection is rule-based, so one converter serves every architecture: either the depthwise k×k convolutions
(ConvNeXt, ConvFormer, FastViT) or every k×k convolution (the 3×3 convs of ResNet-50).

What is replaced: ``nn.Conv2d`` itself and timm's ``Conv2dSame`` (TF 'same' padding), whose forward is a
plain convolution; the per-split convs inside timm's ``MixedConv2d`` are such children, so they are handled
one by one. What is skipped (with a warning naming them): other ``nn.Conv2d`` subclasses (``StdConv2d``,
``ScaledStdConv2d``, ...: their forward adds semantics a DCLS layer would silently drop), convs with
dilation, and convs whose padding does not keep the output size of a centred 'same' convolution (the
replacement would change the output shape). Modules that are not ``nn.Conv2d`` (``CondConv2d``) are never
selected. Parent modules that read a replaced conv's ``.weight`` (re-parameterisation, e.g. FastViT's
``RepConditionalPosEnc``) would break: exclude them by name, or ``convert_to_conv`` before re-parameterising.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from fnmatch import fnmatchcase

import torch
from timm.layers import Conv2dSame, trunc_normal_
from torch import nn

from dcls_vision.ops import Dcls2d, share_positions
from dcls_vision.ops.interpolation import check_interpolation

SHARE_MODES = ("stage", "none")
# One path component naming a stage: stages.N / stages_N (timm, FeatureListNet), stageN, layerN (ResNet),
# layers.N (Swin-like). The first (outermost) match is the stage.
_STAGE_RE = re.compile(r"(?:^|\.)(?:stages?|layers?)[._]?\d+(?=\.|$)")
_REPLACEABLE = (nn.Conv2d, Conv2dSame)


def stage_of(name: str) -> str | None:
    """The stage prefix of a module path (``'stages.2.blocks.0.conv_dw'`` -> ``'stages.2'``), or None."""
    match = _STAGE_RE.search(name)
    return name[: match.end()] if match else None


def _is_depthwise(conv: nn.Conv2d) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def _unsupported(conv: nn.Conv2d) -> str | None:
    """Why ``conv`` cannot be swapped for a centred-padding Dcls2d without changing the model, or None."""
    if type(conv) not in _REPLACEABLE:
        return f"{type(conv).__name__} is a Conv2d subclass with its own forward"
    if conv.dilation != (1, 1):
        return f"dilation={conv.dilation}"
    if isinstance(conv, Conv2dSame):
        return None  # output size ceil(H / stride), as a centred DCLS layer
    same = tuple((k - 1) // 2 for k in conv.kernel_size)
    if any(k % 2 == 0 for k in conv.kernel_size) or conv.padding != same:
        return f"padding={conv.padding!r} with kernel_size={conv.kernel_size} is not 'same'-like"
    return None


def select_convs(
    model: nn.Module, kernel_size: int, depthwise_only: bool, exclude: Sequence[str] = ()
) -> tuple[list[tuple[str, nn.Conv2d]], dict[str, str]]:
    """The k×k convs the rule selects (name, module), and the matching ones skipped (name -> why)."""
    selected: list[tuple[str, nn.Conv2d]] = []
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.Conv2d) or module.kernel_size != (kernel_size, kernel_size):
            continue
        if (depthwise_only and not _is_depthwise(module)) or any(fnmatchcase(name, p) for p in exclude):
            continue
        reason = _unsupported(module)
        if reason is None:
            selected.append((name, module))
        else:
            skipped[name] = reason
    return selected, skipped


def _check_args(
    kernel_size: int,
    interpolation: str,
    dilated_kernel_size: int,
    kernel_count: int,
    share: str,
    weight_init_std: float | None,
) -> None:
    for arg, value in (("kernel_size", kernel_size), ("kernel_count", kernel_count)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg}={value!r} is invalid; allowed: integers >= 1")
    if (
        isinstance(dilated_kernel_size, bool)
        or not isinstance(dilated_kernel_size, int)
        or dilated_kernel_size < kernel_size
    ):
        raise ValueError(
            f"dilated_kernel_size={dilated_kernel_size!r} is invalid; allowed: integers >= kernel_size={kernel_size}"
        )
    check_interpolation(interpolation)
    if share not in SHARE_MODES:
        raise ValueError(f"share={share!r} is not supported; allowed: {', '.join(SHARE_MODES)}")
    if weight_init_std is not None and not weight_init_std > 0:
        raise ValueError(f"weight_init_std={weight_init_std!r} is invalid; allowed: a float > 0, or None")


def _to_dcls(
    conv: nn.Conv2d, interpolation: str, dilated_kernel_size: int, kernel_count: int, weight_init_std: float | None
) -> Dcls2d:
    """A Dcls2d with the conv's channels, stride, groups, bias and padding mode; centred 'same' padding."""
    layer = Dcls2d(
        conv.in_channels,
        conv.out_channels,
        kernel_count,
        dilated_kernel_size,
        stride=conv.stride,
        padding=None,
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        interpolation=interpolation,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    if weight_init_std is not None:  # the reference ConvNeXt-dcls init; None keeps Dcls2d's kaiming-uniform
        with torch.no_grad():
            trunc_normal_(layer.weight, std=weight_init_std)
            if layer.bias is not None:
                layer.bias.zero_()
    return layer


def _stage_groups(layers: dict[str, Dcls2d], model: nn.Module) -> list[list[Dcls2d]]:
    """Layers sharing one positions tensor: same stage and same positions shape (a tensor has one shape)."""
    groups: dict[tuple[str, tuple[int, ...]], list[Dcls2d]] = {}
    for name, layer in layers.items():
        stage = stage_of(name)
        if stage is not None:
            groups.setdefault((stage, tuple(layer.positions.shape)), []).append(layer)
    if not groups:
        raise ValueError(
            f"share='stage' but {type(model).__name__} has no stage structure (no converted module under a path "
            "component like stages.N, stages_N, stageN, layerN or layers.N); allowed: share='none' for this model"
        )
    return list(groups.values())


def dclsify(
    model: nn.Module,
    *,
    kernel_size: int = 7,
    depthwise_only: bool = True,
    interpolation: str = "bilinear",
    dilated_kernel_size: int = 17,
    kernel_count: int = 34,
    share: str = "stage",
    weight_init_std: float | None = 0.02,
    exclude: Sequence[str] = (),
) -> nn.Module:
    """Replace, in place, the selected convolutions of ``model`` by Dcls2d layers and return it.

    Selected: the ``kernel_size``×``kernel_size`` convs that are depthwise (groups == in == out channels) when
    ``depthwise_only``, else all of them, minus names matching a glob in ``exclude``. Each keeps its channels,
    stride, groups, bias and padding mode, with centred 'same' padding, so every output shape is unchanged.
    Weights ~ trunc-normal(std=``weight_init_std``), bias 0, as the reference ConvNeXt-dcls init.

    ``share='stage'``: all DCLS layers of one stage (module path ``stages.N``/``stages_N``/``layerN``...) use one
    positions (and σ) tensor, as in the thesis (+0.13 % top-1); layers outside any stage keep their own.
    """
    _check_args(kernel_size, interpolation, dilated_kernel_size, kernel_count, share, weight_init_std)
    selected, skipped = select_convs(model, kernel_size, depthwise_only, exclude)
    if skipped:
        details = "; ".join(f"{name}: {why}" for name, why in skipped.items())
        warnings.warn(f"dclsify left {len(skipped)} matching convolution(s) unchanged: {details}", stacklevel=2)
    if not selected:
        kind = "depthwise " if depthwise_only else ""
        raise ValueError(
            f"no convolution of {type(model).__name__} matched: no replaceable {kind}{kernel_size}x{kernel_size} "
            f"Conv2d (exclude={list(exclude)!r}); check kernel_size / depthwise_only"
        )
    layers = {
        name: _to_dcls(conv, interpolation, dilated_kernel_size, kernel_count, weight_init_std)
        for name, conv in selected
    }
    if share == "stage":
        for group in _stage_groups(layers, model):
            share_positions(group)
    for name, layer in layers.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)
    return model
