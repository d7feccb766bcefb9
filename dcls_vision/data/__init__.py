"""Datasets and transforms: Fashion-MNIST (offline Debian package) and ImageNet-style folders.

Trainer contract::

    train_ds, val_ds, num_classes = build_datasets(cfg.data, cfg.aug)
    loader = DataLoader(train_ds, ..., collate_fn=collate_skip_bad)   # None batches: skip them
    ... per epoch: n = skipped_count(train_ds); reset_skipped(train_ds)  # "skipped n unreadable images"
"""

from .audio_builder import batch_transform, is_multilabel, multilabel_mixup
from .builder import build_datasets
from .imagefolder import SkipBadImageFolder, collate_skip_bad, reset_skipped, skipped_count
from .subset import stratified_indices

__all__ = [
    "SkipBadImageFolder",
    "batch_transform",
    "is_multilabel",
    "multilabel_mixup",
    "build_datasets",
    "collate_skip_bad",
    "reset_skipped",
    "skipped_count",
    "stratified_indices",
]
