"""``build_datasets(data_cfg, aug_cfg)``: the one entry point the trainer uses."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from .audio_builder import build_audioset
from .fashion_mnist import DEFAULT_SOURCE, FashionMNISTTensor, prepare_fashion_mnist
from .imagefolder import SkipBadImageFolder
from .paths import resolve_path
from .spike_builder import build_spikes
from .subset import stratified_indices
from .transforms import imagenet_transforms, small_image_transforms

NAMES = ("fashion_mnist", "imagefolder", "audioset", "spikes")
IMAGE_HINT = "root/{split}/<class>/*.JPEG"


def _subset(cfg: Mapping[str, Any], key: str, targets: Any) -> list[int] | None:
    n = cfg.get(key)
    return None if n is None else stratified_indices(targets, n, name=f"data.{key}")


def _check_classes(cfg: Mapping[str, Any], found: int, where: str) -> int:
    expected = cfg.get("num_classes")
    if expected is not None and int(expected) != found:
        raise ValueError(f"data.num_classes={expected} but {where} has {found} classes; fix one of them")
    return found


def _fashion_mnist(cfg: Mapping[str, Any], aug_cfg: Mapping[str, Any] | None) -> tuple[Dataset, Dataset, int]:
    root = resolve_path(cfg.get("root") or "data", "data.root")
    source = resolve_path(cfg.get("source") or DEFAULT_SOURCE, "data.source")
    prepare_fashion_mnist(root, source)
    train_tf, val_tf = small_image_transforms(cfg, aug_cfg)
    train = FashionMNISTTensor(root, train=True, transform=train_tf)
    val = FashionMNISTTensor(root, train=False, transform=val_tf)
    for ds, key in ((train, "train_subset"), (val, "val_subset")):
        indices = _subset(cfg, key, ds.targets)
        if indices is not None:
            ds.data, ds.targets = ds.data[indices], ds.targets[indices]
    return train, val, _check_classes(cfg, len(train.classes), f"Fashion-MNIST ({root})")


def _split_dir(root: Path, name: str, key: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise FileNotFoundError(
            f"data.root={root}: no '{name}' folder found (data.{key}={name!r}); "
            f"expected an ImageNet-style folder {IMAGE_HINT.format(split=name)}"
        )
    return path


def _imagefolder_split(path: Path, root: Path, **kwargs: Any) -> SkipBadImageFolder:
    try:
        return SkipBadImageFolder(path, **kwargs)
    except FileNotFoundError as err:  # torchvision: no class folder / no valid file
        raise FileNotFoundError(
            f"data.root={root}: {path} holds no images ({err}); "
            f"expected an ImageNet-style folder {IMAGE_HINT.format(split=path.name)}"
        ) from err


def _imagefolder(cfg: Mapping[str, Any], aug_cfg: Mapping[str, Any] | None) -> tuple[Dataset, Dataset, int]:
    root = resolve_path(cfg.get("root"), "data.root")
    if not root.is_dir():
        raise FileNotFoundError(
            f"data.root={root}: folder not found; expected an ImageNet-style folder "
            f"{IMAGE_HINT.format(split='train')} and root/val/<class>/*.JPEG"
        )
    train_dir = _split_dir(root, str(cfg.get("train_dir") or "train"), "train_dir")
    val_dir = _split_dir(root, str(cfg.get("val_dir") or "val"), "val_dir")
    mode = "L" if int(cfg.get("in_chans") or 3) == 1 else "RGB"
    train_tf, val_tf = imagenet_transforms(cfg, aug_cfg)
    train = _imagefolder_split(train_dir, root, transform=train_tf, mode=mode)
    val = _imagefolder_split(val_dir, root, transform=val_tf, class_to_idx=train.class_to_idx, mode=mode)
    for ds, key in ((train, "train_subset"), (val, "val_subset")):
        indices = _subset(cfg, key, ds.targets)
        if indices is not None:
            ds.samples = [ds.samples[i] for i in indices]
            ds.targets = [s[1] for s in ds.samples]
            ds.imgs = ds.samples
    return train, val, _check_classes(cfg, len(train.classes), str(train_dir))


def build_datasets(
    data_cfg: Mapping[str, Any], aug_cfg: Mapping[str, Any] | None = None
) -> tuple[Dataset, Dataset, int]:
    """(train dataset, val dataset, number of classes) for ``data_cfg.name``; see configs/data/*.yaml.

    Samples are ``(image tensor, int label)``; imagefolder samples are ``None`` for unreadable images,
    so load them with ``collate_fn=collate_skip_bad`` (harmless for fashion_mnist) and report
    ``skipped_count(ds)`` per epoch.
    """
    name = data_cfg.get("name")
    if name == "fashion_mnist":
        return _fashion_mnist(data_cfg, aug_cfg)
    if name == "imagefolder":
        return _imagefolder(data_cfg, aug_cfg)
    if name == "audioset":  # multi-hot targets; batches need data.audio_builder.batch_transform on the device
        return build_audioset(data_cfg, aug_cfg)
    if name == "spikes":  # (T, channels) time-major frames for the SNN recipes
        return build_spikes(data_cfg)
    raise ValueError(f"data.name={name!r} is not supported; allowed: {', '.join(NAMES)}")
