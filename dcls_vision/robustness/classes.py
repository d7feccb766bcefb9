"""Class folder names in the model's output order, and the 200-class ImageNet-A/-R subsets shipped with timm.

A checkpoint stores its data config but not its class names, so they are derived from that config:
ImageNet-style folders use the sorted class folders of the training split (torchvision's ImageFolder order),
or timm's sorted 1000 ImageNet synsets when that split is not reachable; Fashion-MNIST uses its label order
with file-system-safe names (``T-shirt_top``, ``Trouser``, ...). A ``classes`` file overrides both.
"""

from __future__ import annotations

import pkgutil
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dcls_vision.data.paths import resolve_path
from dcls_vision.utils.errors import UserError

SUBSETS = ("imagenet_a", "imagenet_r")


class ClassListError(UserError):
    """The checkpoint's class names cannot be worked out, or a benchmark's classes do not fit them."""


def _timm_info(name: str) -> list[str]:
    data = pkgutil.get_data("timm.data", f"_info/{name}")
    if data is None:
        raise ClassListError(f"timm.data/_info/{name} is missing from the installed timm; reinstall timm")
    return data.decode().split()


def imagenet_synsets() -> list[str]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted, as ImageFolder orders them)."""
    return _timm_info("imagenet_synsets.txt")


def subset_synsets(subset: str) -> tuple[list[str], list[int]]:
    """(wnids, indices into the 1000 ImageNet classes) of ``imagenet_a`` or ``imagenet_r``, from timm's files."""
    if subset not in SUBSETS:
        raise ValueError(f"subset={subset!r} is not supported; allowed: {', '.join(SUBSETS)}")
    wnids = _timm_info(f"{subset}_synsets.txt")
    indices = [int(i) for i in _timm_info(f"{subset}_indices.txt")]
    if len(wnids) != len(indices):
        raise ClassListError(f"timm's {subset} files disagree: {len(wnids)} synsets, {len(indices)} indices")
    return wnids, indices


def folder_name(label: str) -> str:
    """A class label as a folder name: '/' and whitespace become '_' ("T-shirt/top" -> "T-shirt_top")."""
    return re.sub(r"[\s/\\]+", "_", label.strip())


def fashion_mnist_classes() -> list[str]:
    from torchvision.datasets import FashionMNIST

    return [folder_name(c) for c in FashionMNIST.classes]


def read_class_file(path: str) -> list[str]:
    """One class folder name per line, in the model's output order (blank lines and ``#`` comments ignored)."""
    p = resolve_path(path, "classes")
    if not p.is_file():
        raise ClassListError(
            f"classes={path!r}: file not found; allowed: a text file with one class folder "
            f"name per line in the model's output order, or null"
        )
    names = [line.split("#", 1)[0].strip() for line in p.read_text().splitlines()]
    names = [n for n in names if n]
    if len(set(names)) != len(names):
        raise ClassListError(f"classes={path!r}: duplicate class names")
    return names


def checkpoint_classes(data_cfg: Mapping[str, Any], override: str | None = None) -> list[str]:
    """Class folder names in output order for a model trained with ``data_cfg`` (see the module docstring)."""
    num_classes = data_cfg.get("num_classes")
    if override:
        names = read_class_file(override)
    elif data_cfg.get("name") == "fashion_mnist":
        names = fashion_mnist_classes()
    else:
        names = _imagefolder_classes(data_cfg, num_classes)
    if num_classes is not None and len(names) != int(num_classes):
        where = f"classes={override!r}" if override else f"data.name={data_cfg.get('name')!r}"
        raise ClassListError(
            f"{where} gives {len(names)} classes but the checkpoint has data.num_classes="
            f"{num_classes}; pass classes=<file> with one class folder name per line"
        )
    return names


def _imagefolder_classes(data_cfg: Mapping[str, Any], num_classes: Any) -> list[str]:
    root, train_dir = data_cfg.get("root"), data_cfg.get("train_dir") or "train"
    if root not in (None, "", "???"):
        train = resolve_path(str(root), "data.root") / str(train_dir)
        if train.is_dir():
            return sorted(p.name for p in train.iterdir() if p.is_dir())
    if num_classes is not None and int(num_classes) == 1000:
        return imagenet_synsets()
    raise ClassListError(
        f"cannot tell the checkpoint's class names: its training folder {root}/{train_dir} is not "
        f"reachable and data.num_classes={num_classes} is not ImageNet-1k's 1000; pass "
        f"classes=<file> with one class folder name per line in output order"
    )


def subset_logit_indices(classes: Sequence[str], subset: str) -> tuple[list[str], list[int]]:
    """(subset wnids, the model output columns holding them) for ImageNet-A/-R.

    For ImageNet-1k models (sorted synsets) the columns are exactly timm's ``<subset>_indices.txt``; other class
    lists are matched by wnid, so a model lacking some of the 200 classes is reported, not silently mis-sliced.
    """
    wnids, indices = subset_synsets(subset)
    position = {name: i for i, name in enumerate(classes)}
    if list(classes) == imagenet_synsets():
        return wnids, indices
    missing = [w for w in wnids if w not in position]
    if missing:
        raise ClassListError(
            f"the model's {len(classes)} classes do not include {len(missing)} of the "
            f"{len(wnids)} {subset} synsets (e.g. {', '.join(missing[:3])}); {subset} needs an "
            f"ImageNet-1k classifier"
        )
    return wnids, [position[w] for w in wnids]


def class_folders(path: Path) -> list[str]:
    """Sub-folder names of ``path`` (the class folders of an ImageNet-style split)."""
    return sorted(p.name for p in path.iterdir() if p.is_dir())
