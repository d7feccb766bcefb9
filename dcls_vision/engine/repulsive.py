"""Repulsive loss on kernel-element positions (official DCLS code): keeps elements of a kernel apart.

For a positions tensor ``P`` of shape (M, Cout, Cin/g, [dense dims...], K), with ``p_i ∈ R^M`` the position of
element i of kernel (o, c):

    R_l = 2 / (K (K − 1) · Cout · Cin/g) · Σ_{o,c} Σ_{i<j} max(0, 1 − ‖p_i − p_j‖₂)

``R`` is the mean of ``R_l`` over distinct positions tensors; the trainer adds ``weight × R²`` to the loss in the
epochs where :func:`repulsive_applies`.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from dcls_vision.ops import dcls_parameters


def _safe_norm(diff: Tensor, dim: int = -1) -> Tensor:
    """‖diff‖₂ with a finite gradient (0) where diff = 0, unlike ``torch.linalg.norm``'s NaN."""
    sq = diff.pow(2).sum(dim)
    nonzero = sq > 0
    return torch.where(nonzero, sq.clamp_min(torch.finfo(sq.dtype).tiny).sqrt(), torch.zeros_like(sq))


def repulsive_applies(epoch: int, start_epoch: int) -> bool:
    """Whether 0-based ``epoch`` gets the repulsive term: from ``start_epoch`` on.

    Both public DCLS training codes write ``if epoch > 20`` (0-based), so the recipes' ``start_epoch`` is 21.
    """
    return epoch >= start_epoch


def repulsive_term(positions: Tensor) -> Tensor:
    """``R_l`` for one positions tensor (M, ..., K), vectorised over every kernel (o, c, ...)."""
    m, k = positions.shape[0], positions.shape[-1]
    if k < 2:
        return positions.new_zeros(())
    p = positions.float().reshape(m, -1, k).permute(1, 2, 0)  # (B, K, M)
    diff = p.unsqueeze(2) - p.unsqueeze(1)  # (B, K, K, M)
    iu = torch.triu_indices(k, k, offset=1, device=p.device)
    dist = _safe_norm(diff[:, iu[0], iu[1]])  # (B, K(K-1)/2)
    return torch.relu(1.0 - dist).sum() * (2.0 / (k * (k - 1) * p.shape[0]))


def repulsive_loss(model_or_positions: nn.Module | Iterable[Tensor]) -> Tensor:
    """``R``: mean of :func:`repulsive_term` over the distinct positions tensors (0 when there are none)."""
    if isinstance(model_or_positions, nn.Module):
        tensors = dcls_parameters(model_or_positions)["positions"]
    else:
        seen: set[int] = set()
        tensors = [t for t in model_or_positions if not (id(t) in seen or seen.add(id(t)))]
    if not tensors:
        return torch.zeros(())
    return torch.stack([repulsive_term(t) for t in tensors]).mean()
