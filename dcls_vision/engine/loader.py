"""Deterministic, resumable data loading.

The training order of epoch e depends only on (seed, e): the sampler is a ``DistributedSampler`` seeded with
``seed`` and ``set_epoch(e)`` (its generator uses seed + epoch), worker RNGs derive from a generator reseeded
per (seed, epoch, rank), and workers are not persistent. So a resumed run sees the same batches, and a
mid-epoch resume skips the batches already done (``start_batch``).

With ``num_workers=0`` a mid-epoch resume is exact (the main-process RNG is restored from the checkpoint);
with workers, the batches are the same but their augmentation draws differ (worker RNG streams restart).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` (also for world size 1) that can start part-way into an epoch."""

    def __init__(
        self, dataset: Sized, num_replicas: int, rank: int, shuffle: bool = True, seed: int = 0, drop_last: bool = True
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` samples of this rank's order for the current epoch only."""
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        start, self.start = self.start, 0
        return iter(indices[start:])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ShardSampler(Sampler[int]):
    """Evaluation sampler: rank r gets indices r, r + W, …; no padding duplicates (counts stay exact)."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int) -> None:
        self.n, self.num_replicas, self.rank = len(dataset), num_replicas, rank

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.num_replicas))


def _seed_worker(worker_id: int) -> None:
    """Seed numpy in each worker from torch's per-worker seed (torch and ``random`` are seeded by torch)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)


def _default_collate() -> Callable | None:
    try:
        from dcls_vision.data import collate_skip_bad  # ImageFolder: drops unreadable images
    except ImportError:
        return None
    return collate_skip_bad


class EpochLoader:
    """Wraps a ``DataLoader`` so each epoch's iteration is seeded from (seed, epoch, rank)."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        train: bool,
        num_replicas: int,
        rank: int,
        seed: int,
        num_workers: int,
        pin_memory: bool,
        drop_last: bool = True,
    ) -> None:
        self.train, self.seed, self.rank = train, seed, rank
        self.batch_size = batch_size
        if train:
            self.sampler: Sampler[int] = ResumableSampler(
                dataset, num_replicas, rank, shuffle=True, seed=seed, drop_last=drop_last
            )
        else:
            self.sampler = ShardSampler(dataset, num_replicas, rank)
        self.generator = torch.Generator()
        collate = _default_collate()
        kwargs = {"collate_fn": collate} if collate is not None else {}
        self.loader = DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=pin_memory,
            drop_last=train and drop_last,
            worker_init_fn=_seed_worker,
            generator=self.generator,
            persistent_workers=False,
            **kwargs,
        )

    def batches_per_epoch(self) -> int:
        """Full-epoch batch count (independent of a pending mid-epoch start)."""
        n = self.sampler.num_samples if isinstance(self.sampler, ResumableSampler) else len(self.sampler)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def epoch(self, epoch: int, start_batch: int = 0) -> DataLoader:
        """The loader for ``epoch``, starting at batch ``start_batch`` (train only)."""
        if isinstance(self.sampler, ResumableSampler):
            self.sampler.set_epoch(epoch)
            self.sampler.set_start(start_batch * self.batch_size)
        self.generator.manual_seed(self.seed * 1_000_003 + epoch * 1009 + self.rank + (0 if self.train else 7))
        return self.loader

    @property
    def num_samples(self) -> int:
        return len(self.sampler)
