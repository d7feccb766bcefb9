"""Interpolation profiles and separable construction of the dense DCLS kernel.

Every DCLS interpolation is a product of 1-D profiles, one per learned axis, so the dense kernel
is a sum over elements of rank-1 outer products. We build one profile per axis, shape
(..., K, s_a), and contract them with einsum: memory O(C·K·Σs) instead of the O(C·K·Πs)
broadcast of the reference implementation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INTERPOLATIONS = ("bilinear", "triangle", "gauss")
SIGMA0 = {"triangle": 1.0, "gauss": 0.27}
SIGMA_INIT = {"triangle": 0.0, "gauss": 0.23}
EPS = 1e-7
_LETTERS = "ijlmnp"


def check_interpolation(interpolation: str) -> str:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation={interpolation!r} is not supported; allowed: {', '.join(INTERPOLATIONS)}")
    return interpolation


def _gauss_cutoff(dtype: torch.dtype, n_axes: int) -> float:
    """Largest exponent kept for a Gaussian tail.

    exp(-z) below the smallest normal float is a denormal, and CPUs process denormals 10-100x
    slower; products of n_axes profiles must stay normal too. The tail cut is below float eps.
    """
    return 0.9 * -math.log(torch.finfo(dtype).tiny) / n_axes


def profile(
    interpolation: str, coord: Tensor, size: int, sigma: Tensor | None, n_axes: int = 1
) -> Tensor:
    """1-D profile I(coord - i) on the grid i = 0..size-1, appended as a last dim.

    ``coord`` is the element's grid coordinate (position + floor(size/2)).
    """
    grid = torch.arange(size, device=coord.device, dtype=coord.dtype)
    x = coord.unsqueeze(-1) - grid
    if interpolation == "bilinear":
        return torch.relu(1 - x.abs())
    width = SIGMA0[interpolation] + sigma.abs().unsqueeze(-1)
    if interpolation == "triangle":
        return torch.relu(width - x.abs())
    z = (x / width).square() * 0.5
    cutoff = _gauss_cutoff(z.dtype, n_axes)
    return torch.where(z < cutoff, torch.exp(-z.clamp(max=cutoff)), torch.zeros_like(z))


def construct_kernel(
    weight: Tensor,
    positions: Tensor,
    sigma: Tensor | None,
    sizes: tuple[int, ...],
    interpolation: str,
    learned_axes: tuple[int, ...],
) -> Tensor:
    """Dense kernel from weights (O, I, *dense, K), positions/σ (M, O, I, *dense, K).

    Returns (O, I, *kernel) where the learned axes of the kernel have the sizes in ``sizes`` and
    the dense axes keep the sizes of ``weight``. positions[m] moves along kernel axis learned_axes[m].
    """
    n_learned = len(sizes)
    profiles = []
    for m, size in enumerate(sizes):
        sig = None if sigma is None else sigma[m]
        profiles.append(profile(interpolation, positions[m] + size // 2, size, sig, n_learned))
    scale = weight
    if interpolation != "bilinear":
        mass = profiles[0].sum(-1)
        for p in profiles[1:]:
            mass = mass * p.sum(-1)
        scale = weight / (mass + EPS)
    return _combine(scale, profiles, learned_axes)


def construct_rounded_kernel(
    weight: Tensor, positions: Tensor, sizes: tuple[int, ...], learned_axes: tuple[int, ...]
) -> Tensor:
    """Kernel with each element's whole weight at its rounded position (SNN-delay inference)."""
    onehots = []
    for m, size in enumerate(sizes):
        index = (positions[m] + size // 2).round().long().clamp(0, size - 1)
        onehots.append(torch.nn.functional.one_hot(index, size).to(weight.dtype))
    return _combine(weight, onehots, learned_axes)


def _combine(scale: Tensor, profiles: list[Tensor], learned_axes: tuple[int, ...]) -> Tensor:
    """Σ_k scale_k · Π_m profile_m[k, i_m], with the learned axes placed among the dense ones.

    Spelled as einsum "ab{dense}k, ab{dense}ki, ab{dense}kj -> ab{ij and dense in kernel order}";
    for 2-D this is one batched matmul.
    """
    n_dense = scale.dim() - 3
    dense = "".join(chr(ord("q") + d) for d in range(n_dense))
    learned = _LETTERS[: len(profiles)]
    dense_iter, learned_iter = iter(dense), iter(learned)
    out = "".join(
        next(learned_iter) if axis in learned_axes else next(dense_iter)
        for axis in range(n_dense + len(profiles))
    )
    operands = [f"ab{dense}k"] + [f"ab{dense}k{letter}" for letter in learned]
    return torch.einsum(",".join(operands) + "->ab" + out, scale, *profiles)
