"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (no download, ever).

The package ships the four IDX ``.gz`` files; torchvision's ``FashionMNIST(root, download=False)``
reads them gunzipped from ``root/FashionMNIST/raw/``, so we fill that cache once (atomically, so
concurrent ranks don't see half-written files). Images go to the transform as uint8 tensors
(1, 28, 28) instead of PIL images: the tensor transforms of :mod:`.transforms` cost a few µs per
sample, which matters when a whole training run must fit in minutes on two CPU cores.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torchvision.datasets import FashionMNIST

DEFAULT_SOURCE = "/usr/share/datasets/fashion-mnist"
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def prepare_fashion_mnist(root: Path, source: Path) -> Path:
    """Gunzip the IDX files from ``source`` into ``root/FashionMNIST/raw`` (skipped when already there)."""
    raw = root / "FashionMNIST" / "raw"
    missing = [name for name in IDX_FILES if not (raw / name).is_file()]
    if not missing:
        return raw
    absent = [f"{name}.gz" for name in missing if not (source / f"{name}.gz").is_file()]
    if absent:
        raise FileNotFoundError(
            f"data.source={source}: missing {', '.join(absent)}; expected the Fashion-MNIST IDX .gz files "
            f"(install them with `apt-get install dataset-fashion-mnist`, or set data.source)"
        )
    try:
        raw.mkdir(parents=True, exist_ok=True)
        for name in missing:
            fd, tmp = tempfile.mkstemp(dir=raw, prefix=f".{name}.")
            with os.fdopen(fd, "wb") as out, gzip.open(source / f"{name}.gz", "rb") as src:
                shutil.copyfileobj(src, out)
            os.replace(tmp, raw / name)
    except OSError as err:
        raise OSError(
            f"data.root={root}: cannot write the Fashion-MNIST cache to {raw} ({err}); "
            f"set data.root to a writable folder"
        ) from err
    return raw


class FashionMNISTTensor(FashionMNIST):
    """torchvision's FashionMNIST handing uint8 tensors (1, H, W) to the transform."""

    def __init__(
        self, root: Path, train: bool, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        super().__init__(str(root), train=train, transform=transform, download=False)

    @property
    def raw_folder(self) -> str:  # torchvision derives it from the class name
        return os.path.join(self.root, "FashionMNIST", "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, "FashionMNIST", "processed")

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        img = self.data[index].unsqueeze(0)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])
