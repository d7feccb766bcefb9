"""Import layers of the public ``dcls`` package (0.1.1, module ``DCLS``) into ours, with equal outputs.

The reference maps its position axes differently per version: bilinear ("v0") puts ``P[0]`` on
kernel rows, while "v1"/"max"/"gauss" put ``P[0]`` on the *last* kernel axis and centre every axis
with its own ``floor(s/2)``, which mis-centres non-square kernels. We translate to our single
convention (positions[a] along input axis a, offset from floor(s_a/2)). The rule lives in
:func:`positions_from_dcls` (tensors only), shared by :func:`from_dcls` (layers) and the release converter
(:mod:`dcls_vision.models.release`, checkpoints).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dcls import Dcls1d, Dcls2d, Dcls3_1d, Dcls3d, DclsLayer

_VERSIONS = {"v0": "bilinear", "v1": "triangle", "max": "triangle", "gauss": "gauss"}
# For each of our kernel axes a, the reference position axis that moves along it.
_SOURCE_AXIS = {
    ("v0", 1): (0,),
    ("v0", 2): (0, 1),
    ("v0", 3): (0, 2, 1),
    ("spread", 1): (0,),
    ("spread", 2): (1, 0),
    ("spread", 3): (2, 1, 0),
}


def _translate(
    P: Tensor, SIG: Tensor | None, sizes: tuple[int, ...], source: tuple[int, ...], with_sigma: bool
) -> tuple[Tensor, Tensor | None]:
    """Our (positions, σ) from the reference's (P, SIG): axis a takes reference axis ``source[a]``, re-centred."""
    with torch.no_grad():
        positions = torch.stack([P[src] + sizes[src] // 2 - sizes[a] // 2 for a, src in enumerate(source)])
        if not with_sigma:
            return positions, None
        sigma = torch.stack([SIG[src] if SIG is not None else torch.zeros_like(P[src]) for src in source])
    return positions, sigma


def positions_from_dcls(
    P: Tensor, SIG: Tensor | None, version: str, dilated_kernel_size: tuple[int, ...], with_sigma: bool
) -> tuple[Tensor, Tensor | None]:
    """Our ``positions`` (and ``sigma`` when ``with_sigma``) from a ``dcls`` layer's ``P`` / ``SIG`` tensors.

    ``version``: the reference's kernel construction, which fixes the axis order: "v0" (``P[0]`` on rows) or
    "v1"/"max"/"gauss" (``P[0]`` on the last kernel axis). Shapes stay (n_axes, out, in/groups, K).
    """
    if version not in _VERSIONS:
        raise ValueError(f"dcls version={version!r} is not supported; allowed: {', '.join(_VERSIONS)}")
    sizes = tuple(dilated_kernel_size)
    source = _SOURCE_AXIS[("v0" if version == "v0" else "spread", len(sizes))]
    return _translate(P, SIG, sizes, source, with_sigma)


def from_dcls(layer: nn.Module) -> DclsLayer:
    """Build our layer from a ``DCLS.construct.modules`` Dcls1d/2d/3d/3_1d, copying its parameters.

    "v1" (normalised bilinear, no σ) becomes triangle interpolation with σ fixed at 0
    (``sigma.requires_grad`` is False, so training keeps the v1 behaviour).
    """
    name = type(layer).__name__
    classes = {"Dcls1d": Dcls1d, "Dcls2d": Dcls2d, "Dcls3d": Dcls3d, "Dcls3_1d": Dcls3_1d}
    if name not in classes or not hasattr(layer, "P"):
        raise TypeError(f"layer of type {name!r} is not supported; allowed: DCLS Dcls1d, Dcls2d, Dcls3d, Dcls3_1d")
    version = layer.version
    if version not in _VERSIONS:
        raise ValueError(f"dcls version={version!r} is not supported; allowed: {', '.join(_VERSIONS)}")
    if getattr(layer, "transposed", False):
        raise ValueError("transposed DCLS layers are not supported")
    sizes = tuple(layer.dilated_kernel_size)
    common = dict(
        stride=tuple(layer.stride),
        padding=tuple(layer.padding),
        groups=layer.groups,
        bias=layer.bias is not None,
        padding_mode=layer.padding_mode,
        interpolation=_VERSIONS[version],
        device=layer.weight.device,
        dtype=layer.weight.dtype,
    )
    if name == "Dcls3_1d":  # learned along the last kernel axis, dense along the first two
        ours = Dcls3_1d(
            layer.in_channels,
            layer.out_channels,
            layer.kernel_count,
            sizes,
            tuple(layer.dense_kernel_size),
            learned_axes=(2,),
            **common,
        )
        source = (0,)
    else:
        ours = classes[name](layer.in_channels, layer.out_channels, layer.kernel_count, sizes, **common)
        source = _SOURCE_AXIS[("v0" if version == "v0" else "spread", len(sizes))]
    positions, sigma = _translate(layer.P, layer.SIG, sizes, source, ours.sigma is not None)
    with torch.no_grad():
        ours.weight.copy_(layer.weight)
        if layer.bias is not None:
            ours.bias.copy_(layer.bias)
        ours.positions.copy_(positions)
        if ours.sigma is not None:
            ours.sigma.copy_(sigma)
    if version == "v1":
        ours.sigma.requires_grad_(False)
    return ours
