"""Interpolation profiles and the construction of the dense DCLS kernel.

Every DCLS interpolation is a product of 1-D profiles, one per learned axis, so the dense kernel
is a sum over elements of rank-1 outer products:

* triangle / gauss: one profile per axis, shape (..., K, s_a), from a custom autograd function that
  keeps only the profile for backward, contracted with einsum (one batched matmul in 2-D): memory
  O(C·K·Σs) instead of the O(C·K·Πs) broadcast of the reference implementation;
* bilinear: each element touches only its 2^M neighbours, so its weights are scattered straight
  into the kernel: time and memory O(C·K·2^M).
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
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
    """Largest (shifted) exponent kept for a Gaussian tail.

    exp(-z) below the smallest normal float is a denormal, and CPUs process denormals 10-100x
    slower; products of n_axes profiles must stay normal too. A tail is cut relative to its
    element's peak (see :func:`_gauss_shift`), so what is dropped is below float eps of that element.
    """
    return 0.9 * -math.log(torch.finfo(dtype).tiny) / n_axes


@torch.no_grad()
def _gauss_shift(coords: list[Tensor], sigma: Tensor, sizes: tuple[int, ...]) -> tuple[list[Tensor], Tensor]:
    """Per-axis exponent shifts s_a with Σ_a s_a = min(Z_min, -ln ε), and ε·exp(Σ_a s_a).

    Z_min is the smallest summed exponent Σ_a x_a²/2w_a² of an element over the grid. The formula
    w·e^{-Z}/(ε + Σ e^{-Z}) equals w·e^{-(Z-S)}/(ε·e^{S} + Σ e^{-(Z-S)}) for any S, so shifting keeps the
    kernel exact while each profile's largest kept term is near 1: tails are then cut relative to the
    element's own peak (or to ε when the element lies far outside the grid), in every dimension.
    S does not change the value, so it is held constant for autograd.
    """
    zmin = []
    for m, (coord, size) in enumerate(zip(coords, sizes)):
        nearest = coord.round().clamp(0, size - 1)
        zmin.append(((coord - nearest) / (SIGMA0["gauss"] + sigma[m].abs())).square() * 0.5)
    total = torch.stack(zmin).sum(0)
    limit = -math.log(EPS)
    scale = torch.where(total > limit, limit / total, 1.0)
    shifts = [z * scale for z in zmin]
    return shifts, EPS * torch.exp(total.clamp(max=limit))


class _Profile(torch.autograd.Function):
    """Triangle or Gaussian profile I(coord - i), i = 0..size-1, appended as a last dim.

    Hand-written backward that saves only the profile (autograd would keep 4-5 same-sized
    intermediates). d|σ|/dσ is taken as +1 at σ = 0: the triangle's σ starts at exactly 0 and
    would otherwise never receive a gradient.
    """

    @staticmethod
    def forward(
        ctx, coord: Tensor, sigma: Tensor, size: int, interpolation: str, cutoff: float, shift: Tensor | None
    ) -> Tensor:
        x = coord.unsqueeze(-1) - torch.arange(size, device=coord.device, dtype=coord.dtype)
        width = (SIGMA0[interpolation] + sigma.abs()).unsqueeze(-1)
        if interpolation == "triangle":
            phi = torch.relu(width - x.abs())
        else:
            u = x.div_(width)
            neg_z = u.square_().mul_(-0.5) if shift is None else torch.addcmul(shift.unsqueeze(-1), u, u, value=-0.5)
            # exp of a clamped exponent never reaches denormals; threshold_ zeroes the cut tail in one fused pass
            phi = F.threshold_(neg_z.clamp_(min=-cutoff).exp_(), 2 * math.exp(-cutoff), 0.0)
        ctx.save_for_backward(coord, sigma, phi)
        ctx.interpolation = interpolation
        return phi

    @staticmethod
    def backward(ctx, grad: Tensor):
        coord, sigma, phi = ctx.saved_tensors
        x = coord.unsqueeze(-1) - torch.arange(phi.shape[-1], device=coord.device, dtype=coord.dtype)
        width = (SIGMA0[ctx.interpolation] + sigma.abs()).unsqueeze(-1)
        if ctx.interpolation == "triangle":
            g = grad * (phi > 0)
            grad_coord = -(g * x.sign()).sum(-1)
            grad_width = g.sum(-1)
        else:
            g = grad * phi * x / width.square()
            grad_coord = -g.sum(-1)
            grad_width = (g * x).sum(-1) / width.squeeze(-1)
        grad_sigma = torch.where(sigma >= 0, grad_width, -grad_width)
        return grad_coord, grad_sigma, None, None, None, None


def profile(
    interpolation: str, coord: Tensor, size: int, sigma: Tensor, n_axes: int = 1, shift: Tensor | None = None
) -> Tensor:
    """Triangle/gauss profile of elements at grid coordinate ``coord`` (position + floor(size/2)).

    A Gaussian profile is exp(-(z - shift)) (no shift: exp(-z)), cut where the exponent exceeds the cutoff.
    """
    return _Profile.apply(coord, sigma, size, interpolation, _gauss_cutoff(coord.dtype, n_axes), shift)


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
    if interpolation == "bilinear":
        return _scatter_bilinear(weight, positions, sizes, learned_axes)
    coords = [positions[m] + size // 2 for m, size in enumerate(sizes)]
    shifts, eps = [None] * len(sizes), EPS
    if interpolation == "gauss":
        shifts, eps = _gauss_shift(coords, sigma, sizes)
    profiles = [
        profile(interpolation, coords[m], size, sigma[m], len(sizes), shifts[m]) for m, size in enumerate(sizes)
    ]
    mass = profiles[0].sum(-1)
    for p in profiles[1:]:
        mass = mass * p.sum(-1)
    return _combine(weight / (mass + eps), profiles, learned_axes)


def construct_rounded_kernel(
    weight: Tensor, positions: Tensor, sizes: tuple[int, ...], learned_axes: tuple[int, ...]
) -> Tensor:
    """Kernel with each element's whole weight at its rounded position (SNN-delay inference)."""
    index = [(positions[m] + size // 2).round().long() for m, size in enumerate(sizes)]
    return _scatter(weight, [(weight, index)], sizes, learned_axes)


def _scatter_bilinear(weight: Tensor, positions: Tensor, sizes: tuple[int, ...], learned_axes: tuple[int, ...]):
    """Bilinear: each element spreads max(0, 1 - |x|) per axis onto its 2^M neighbouring grid points."""
    coord = [positions[m] + size // 2 for m, size in enumerate(sizes)]
    low = [c.detach().floor() for c in coord]
    frac = [c - lo for c, lo in zip(coord, low)]
    low = [lo.long() for lo in low]
    corners = []
    for bits in itertools.product((0, 1), repeat=len(sizes)):
        value = weight
        for m, bit in enumerate(bits):
            value = value * (frac[m] if bit else 1 - frac[m])
        corners.append((value, [lo + bit for lo, bit in zip(low, bits)]))
    return _scatter(weight, corners, sizes, learned_axes)


def _scatter(
    weight: Tensor, entries: list[tuple[Tensor, list[Tensor]]], sizes: tuple[int, ...], learned_axes: tuple[int, ...]
) -> Tensor:
    """Sum ``value`` at learned-axis indices ``index`` into the (O, I, *kernel) kernel; off-grid entries drop."""
    n_dense = weight.dim() - 3
    dense_axes = [a for a in range(n_dense + len(sizes)) if a not in learned_axes]
    kernel_size = [0] * (n_dense + len(sizes))
    for a, size in zip(learned_axes, sizes):
        kernel_size[a] = size
    for a, size in zip(dense_axes, weight.shape[2:-1]):
        kernel_size[a] = size
    shape = (*weight.shape[:2], *kernel_size)
    strides = torch.empty(shape, device="meta").stride()
    base = torch.zeros((), dtype=torch.long, device=weight.device)
    for dim, stride in zip(range(weight.dim() - 1), strides[:2] + tuple(strides[2 + a] for a in dense_axes)):
        view = [1] * weight.dim()
        view[dim] = -1
        base = base + torch.arange(weight.shape[dim], device=weight.device).view(view) * stride
    indices, values = [], []
    for value, index in entries:
        flat, inside = base, None
        for m, (i, size) in enumerate(zip(index, sizes)):
            ok = (i >= 0) & (i < size)
            inside = ok if inside is None else inside & ok
            flat = flat + i.clamp(0, size - 1) * strides[2 + learned_axes[m]]
        indices.append(flat.expand_as(value).reshape(-1))
        values.append(torch.where(inside, value, 0.0).reshape(-1))
    out = torch.zeros(math.prod(shape), device=weight.device, dtype=weight.dtype)
    return out.scatter_add_(0, torch.cat(indices), torch.cat(values)).view(shape)  # in place: no 2nd copy


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
        next(learned_iter) if axis in learned_axes else next(dense_iter) for axis in range(n_dense + len(profiles))
    )
    operands = [f"ab{dense}k"] + [f"ab{dense}k{letter}" for letter in learned]
    return torch.einsum(",".join(operands) + "->ab" + out, scale, *profiles)
