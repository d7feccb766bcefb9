"""Whole-model DCLS helpers: find every DCLS layer of a model and act on all of them at once.

Trainers, hooks and analysis tools work on models, not layers: they collect the positions and σ for their
own parameter groups, clamp positions after each optimizer step, share one position tensor between layers
and export every layer to a plain convolution. The per-layer behaviour lives in :mod:`.dcls`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from .dcls import DclsLayer

__all__ = ["clamp_positions_", "convert_to_conv", "dcls_layers", "dcls_parameters", "share_positions"]


def dcls_layers(model: nn.Module) -> Iterable[DclsLayer]:
    return (m for m in model.modules() if isinstance(m, DclsLayer))


def dcls_parameters(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Distinct positions and σ tensors of a model (shared tensors appear once), by identity not name."""
    out: dict[str, list[nn.Parameter]] = {"positions": [], "sigma": []}
    seen: set[int] = set()
    for layer in dcls_layers(model):
        for kind, params in layer.dcls_parameters().items():
            for p in params:
                if id(p) not in seen:
                    seen.add(id(p))
                    out[kind].append(p)
    return out


@torch.no_grad()
def clamp_positions_(model: nn.Module) -> None:
    """Clamp every DCLS layer's positions into its dilated kernel."""
    for layer in dcls_layers(model):
        layer.clamp_()


def share_positions(layers: Sequence[DclsLayer], sigma: bool = True) -> None:
    """Make ``layers`` use the first layer's positions (and σ) tensor; weights stay per layer.

    Sharing is by object identity, so ``model.parameters()``, optimizers and state_dict round-trips
    (``load_state_dict`` copies into the one tensor) all keep it.
    """
    if not layers:
        return
    first = layers[0]
    for layer in layers[1:]:
        if (
            layer.positions.shape != first.positions.shape
            or layer.interpolation != first.interpolation
            or layer.dilated_kernel_size != first.dilated_kernel_size
        ):
            raise ValueError(
                f"cannot share positions between layers with positions {tuple(first.positions.shape)}, "
                f"{first.interpolation!r}, size {first.dilated_kernel_size} and {tuple(layer.positions.shape)}, "
                f"{layer.interpolation!r}, size {layer.dilated_kernel_size}; shared layers must match"
            )
        layer.positions = first.positions
        if sigma and first.sigma is not None:
            layer.sigma = first.sigma


def convert_to_conv(model: nn.Module, rounded: bool = False) -> nn.Module:
    """Replace every DCLS layer of ``model`` (in place) by its plain-convolution export."""
    if isinstance(model, DclsLayer):
        return model.to_conv(rounded=rounded)
    for name, child in list(model.named_children()):
        if isinstance(child, DclsLayer):
            setattr(model, name, child.to_conv(rounded=rounded))
        else:
            convert_to_conv(child, rounded)
    return model
