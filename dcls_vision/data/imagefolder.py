"""ImageNet-style folders (``root/{train,val}/<class>/<image>``) that skip unreadable images.

A truncated or non-image file must not kill a multi-day run, nor be silently ignored. Decoding
errors make ``__getitem__`` return ``None`` (the sentinel that :func:`collate_skip_bad` drops from
the batch) and add one to a counter in shared memory, so increments made in DataLoader worker
processes (fork or spawn) are visible in the main process. Each worker writes its own slot, so
there are no lost updates. The trainer reads :func:`skipped_count` once per epoch and calls
:func:`reset_skipped`; a file is counted every time it is read (i.e. once per epoch).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import default_collate, get_worker_info
from torchvision.datasets import ImageFolder

DECODE_ERRORS = (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError)
_SLOTS = 1024  # one counter per worker id (+1 for the main process)


class SkipBadImageFolder(ImageFolder):
    """``ImageFolder`` whose samples are ``None`` when the image cannot be decoded (and counted).

    ``class_to_idx`` can be imposed (the val split must use the train split's labels even if a class
    folder is missing); ``indices`` keeps a subset of the samples; ``mode`` is the PIL mode ("RGB"/"L").
    """

    def __init__(
        self,
        root: Path,
        transform: Callable[[Any], Any] | None = None,
        class_to_idx: dict[str, int] | None = None,
        indices: Sequence[int] | None = None,
        mode: str = "RGB",
    ) -> None:
        self._fixed_classes = class_to_idx
        self.mode = mode
        # with imposed classes (val split) a class may legitimately have no images here
        super().__init__(str(root), transform=transform, loader=self._load, allow_empty=class_to_idx is not None)
        if indices is not None:
            self.samples = [self.samples[i] for i in indices]
            self.targets = [s[1] for s in self.samples]
            self.imgs = self.samples
        self._skipped = torch.zeros(_SLOTS, dtype=torch.int64).share_memory_()

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        if self._fixed_classes is None:
            return super().find_classes(directory)
        found = {p.name for p in Path(directory).iterdir() if p.is_dir()}
        unknown = sorted(found - set(self._fixed_classes))
        if unknown:
            raise ValueError(
                f"{directory}: class folders {unknown[:5]} are not in the train split; "
                f"train and val must use the same class folder names"
            )
        classes = sorted(self._fixed_classes, key=self._fixed_classes.__getitem__)
        return classes, dict(self._fixed_classes)

    def _load(self, path: str) -> Image.Image:
        with open(path, "rb") as f:
            img = Image.open(f)
            return img.convert(self.mode)  # convert() decodes fully, so truncation surfaces here

    def __getitem__(self, index: int) -> tuple[Any, int] | None:
        try:
            return super().__getitem__(index)
        except DECODE_ERRORS:
            info = get_worker_info()
            self._skipped[0 if info is None else 1 + info.id % (_SLOTS - 1)] += 1
            return None

    @property
    def num_skipped(self) -> int:
        """Unreadable samples met since the last :meth:`reset_skipped` (all workers together)."""
        return int(self._skipped.sum())

    def reset_skipped(self) -> None:
        self._skipped.zero_()


def collate_skip_bad(batch: list[Any]) -> Any:
    """``default_collate`` minus the ``None`` samples of unreadable images; ``None`` if all were bad.

    Use as ``DataLoader(..., collate_fn=collate_skip_bad)`` and skip ``None`` batches in the loop.
    Harmless for datasets that never return ``None``.
    """
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None


def skipped_count(dataset: Any) -> int:
    """Unreadable images skipped by ``dataset`` since the last reset (0 for datasets that never skip)."""
    return int(getattr(dataset, "num_skipped", 0))


def reset_skipped(dataset: Any) -> None:
    """Reset the counter of :func:`skipped_count` (no-op for datasets that never skip)."""
    if hasattr(dataset, "reset_skipped"):
        dataset.reset_skipped()
