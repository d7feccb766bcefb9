"""Datasets: offline Fashion-MNIST, deterministic subsets, transforms, ImageNet-style folders with bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DataLoader

from dcls_vision.data import build_datasets, collate_skip_bad, reset_skipped, skipped_count, stratified_indices
from dcls_vision.data.fashion_mnist import DEFAULT_SOURCE
from dcls_vision.engine.schema import load_option

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"
AUG = {
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "reprob": 0.25,
    "remode": "pixel",
    "hflip": 0.5,
    "scale": [0.08, 1.0],
    "ratio": [0.75, 1.3333],
    "color_jitter": 0.4,
    "pad_crop": 2,
}
needs_fmnist = pytest.mark.skipif(
    not Path(DEFAULT_SOURCE, "train-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


def fmnist_cfg(root: Path, **overrides: object):
    cfg = load_option(CONFIGS / "fashion_mnist.yaml")  # as composed: on its schema
    cfg.root = str(root)
    return OmegaConf.merge(cfg, overrides)


@pytest.fixture(scope="module")
def fmnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fmnist")


# ----------------------------------------------------------------------------- Fashion-MNIST
@needs_fmnist
def test_fashion_mnist_loads_full_splits_and_transforms(fmnist_root: Path) -> None:
    train, val, num_classes = build_datasets(fmnist_cfg(fmnist_root), AUG)
    assert (len(train), len(val), num_classes) == (60000, 10000, 10)
    assert (fmnist_root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").is_file()
    x, y = train[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and isinstance(y, int)
    xv, yv = val[0]
    raw = val.data[0].float() / 255
    assert torch.allclose(xv, (raw - 0.2860) / 0.3530, atol=1e-5)  # val: only normalisation
    assert 0 <= yv < 10
    batch = next(iter(DataLoader(train, batch_size=16, collate_fn=collate_skip_bad)))
    assert batch[0].shape == (16, 1, 28, 28) and batch[1].dtype == torch.int64
    assert skipped_count(train) == 0
    reset_skipped(train)  # no-op for datasets that never skip


@needs_fmnist
def test_fashion_mnist_subsets_are_deterministic_and_stratified(fmnist_root: Path) -> None:
    cfg = fmnist_cfg(fmnist_root, train_subset=1000, val_subset=200)
    a_train, a_val, _ = build_datasets(cfg, {})
    b_train, b_val, _ = build_datasets(cfg, {})
    assert (len(a_train), len(a_val)) == (1000, 200)
    assert torch.equal(a_train.targets, b_train.targets) and torch.equal(a_train.data, b_train.data)
    assert torch.equal(a_val.data, b_val.data)
    assert torch.bincount(a_train.targets, minlength=10).tolist() == [100] * 10


def test_stratified_indices_properties() -> None:
    targets = [0] * 80 + [1] * 20
    idx = stratified_indices(targets, 10)
    assert idx == sorted(idx) and len(set(idx)) == 10 and idx == stratified_indices(targets, 10)
    assert sum(targets[i] for i in idx) == 2  # 20 % of the subset from class 1
    assert stratified_indices(targets, 10, seed=1) != idx
    for bad in (0, 101, -1, 2.5):
        with pytest.raises(ValueError, match="train_subset"):
            stratified_indices(targets, bad, name="data.train_subset")


def test_fashion_mnist_missing_source_says_apt_get(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        build_datasets(fmnist_cfg(tmp_path / "cache", source=str(tmp_path / "nowhere")), {})
    assert str(tmp_path / "nowhere") in str(err.value)


def test_unknown_dataset_name() -> None:
    with pytest.raises(ValueError, match="data.name='cifar'.*fashion_mnist, imagefolder"):
        build_datasets({"name": "cifar"}, {})


# -------------------------------------------------------------------------------- ImageFolder
def make_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 3) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in classes:
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (root / "train" / classes[0] / "garbage.png").write_bytes(b"this is not an image at all" * 10)
    good = (root / "train" / classes[1] / "0.png").read_bytes()
    (root / "train" / classes[1] / "truncated.png").write_bytes(good[: len(good) // 2])


def folder_cfg(root: Path, **overrides: object):
    cfg = load_option(CONFIGS / "imagenet.yaml")
    cfg.root, cfg.num_classes, cfg.img_size, cfg.num_workers = str(root), 2, 32, 0
    return OmegaConf.merge(cfg, overrides)


def test_imagefolder_skips_and_counts_bad_images_across_workers(tmp_path: Path) -> None:
    make_folder(tmp_path)
    train, val, num_classes = build_datasets(folder_cfg(tmp_path), AUG)
    assert (len(train), len(val), num_classes) == (8, 6, 2)
    loader = DataLoader(train, batch_size=4, num_workers=2, collate_fn=collate_skip_bad)
    for _ in range(2):  # two "epochs": counted per epoch after a reset
        reset_skipped(train)
        seen = 0
        for batch in loader:
            if batch is None:
                continue
            images, labels = batch
            assert images.shape[1:] == (3, 32, 32) and images.dtype == torch.float32
            seen += len(labels)
        assert (seen, skipped_count(train)) == (6, 2)
    x, y = val[0]
    assert x.shape == (3, 32, 32) and y == 0
    assert collate_skip_bad([None, None]) is None


def test_imagefolder_val_uses_train_labels_and_subsets(tmp_path: Path) -> None:
    make_folder(tmp_path, classes=("a", "b", "c"))
    for f in (tmp_path / "val" / "a").iterdir():
        f.unlink()
    (tmp_path / "val" / "a").rmdir()
    train, val, n = build_datasets(
        folder_cfg(tmp_path, num_classes=3, train_subset=5, val_subset=4, in_chans=1, mean=[0.5], std=[0.5]), {}
    )
    assert val.class_to_idx == train.class_to_idx == {"a": 0, "b": 1, "c": 2}
    assert set(val.targets) == {1, 2} and len(val) == 4 and len(train) == 5 and n == 3
    assert val[0][0].shape == (1, 32, 32)


def test_imagefolder_test_img_size_sets_the_val_crop_only(tmp_path: Path) -> None:
    """A3: train at 160, evaluate at 224 (here 24 / 40 on tiny images)."""
    make_folder(tmp_path)
    train, val, _ = build_datasets(folder_cfg(tmp_path, img_size=24, test_img_size=40, crop_pct=1.0), {})
    assert train[0][0].shape == (3, 24, 24)
    assert val[0][0].shape == (3, 40, 40)
    _, val_default, _ = build_datasets(folder_cfg(tmp_path, img_size=24), {})
    assert val_default[0][0].shape == (3, 24, 24)


def test_imagefolder_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"data.root=.*nowhere: folder not found"):
        build_datasets(folder_cfg(tmp_path / "nowhere"), {})
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=r"no 'train' folder found.*root/train/<class>/\*.JPEG"):
        build_datasets(folder_cfg(tmp_path), {})
    (tmp_path / "train" / "empty_class").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="holds no images"):
        build_datasets(folder_cfg(tmp_path), {})
    with pytest.raises(ValueError, match="data.root is not set"):
        build_datasets(load_option(CONFIGS / "imagenet.yaml"), {})


def test_imagefolder_num_classes_mismatch(tmp_path: Path) -> None:
    make_folder(tmp_path)
    with pytest.raises(ValueError, match="data.num_classes=1000 but .* has 2 classes"):
        build_datasets(folder_cfg(tmp_path, num_classes=1000), {})
