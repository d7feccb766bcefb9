"""Deterministic, class-stratified subsets (same N -> same samples on every run and machine)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

SUBSET_SEED = 0


def stratified_indices(
    targets: Sequence[int] | torch.Tensor, n: int, seed: int = SUBSET_SEED, name: str = "subset"
) -> list[int]:
    """``n`` indices drawn with a fixed seed, each class represented in proportion to its frequency.

    Samples are shuffled with ``seed``; each gets the key (rank within its class) / (class size), and
    the ``n`` smallest keys are kept, so every class contributes ~n * share samples. Sorted ascending.
    """
    targets = torch.as_tensor(targets, dtype=torch.long)
    total = len(targets)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 < n <= total:
        raise ValueError(f"{name}={n!r} is invalid; allowed: null or an integer in [1, {total}] (the dataset size)")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(total, generator=gen)
    shuffled = targets[perm]
    counts = torch.bincount(shuffled)
    rank = torch.empty(total, dtype=torch.float64)
    for cls in torch.nonzero(counts).flatten().tolist():
        where = torch.nonzero(shuffled == cls).flatten()
        rank[where] = (torch.arange(len(where), dtype=torch.float64) + 0.5) / len(where)
    order = torch.argsort(rank, stable=True)[:n]
    return sorted(perm[order].tolist())
