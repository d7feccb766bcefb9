"""ImageNet-C-bar corruptions (dcls_vision.robustness.cbar), make_corrupted's ImageNet-C protocol (resize 256,
centre crop 224) and the one val crop_pct default (issue 15, items 8 and 9). No trained model needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dcls_vision.data.transforms import DEFAULT_CROP_PCT, imagenet_transforms, val_crop_pct
from dcls_vision.robustness.benchmarks import CBAR_SEVERITY_PARAMS, IMAGENET_C_BAR
from dcls_vision.robustness.cbar import CBAR_CORRUPTIONS, corrupt_cbar
from dcls_vision.robustness.transforms import eval_transform

ROOT = Path(__file__).resolve().parents[1]
# additive/masking corruptions whose change grows with the level for one seed (the draws do not depend on it)
MONOTONE = (
    "blue_noise_sample",
    "brownish_noise",
    "checkerboard_cutout",
    "cocentric_sine_waves",
    "perlin_noise",
    "plasma_noise",
    "single_frequency_greyscale",
)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    """A 112x112 RGB image with structure (gradients + a disc), mid-range so changes are not clipped away.

    (Parameters scale with the image side, so 112 px behaves as 224 at a quarter of the cost.)"""
    y, x = np.mgrid[0:112, 0:112]
    img = np.stack((60 + x, 60 + y, 120 + 60 * (((x - 56) ** 2 + (y - 50) ** 2) < 25**2)), axis=-1)
    return img.astype(np.uint8)


def _change(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_the_ten_corruptions_and_released_parameters():
    assert sorted(CBAR_CORRUPTIONS) == sorted(IMAGENET_C_BAR) and len(IMAGENET_C_BAR) == 10
    assert CBAR_SEVERITY_PARAMS["caustic_refraction"] == (2.35, 3.2, 4.9, 6.6, 9.15)  # imagenet_c_bar.csv
    assert CBAR_SEVERITY_PARAMS["inverse_sparkles"] == (1.0, 2.0, 4.0, 9.0, 10.0)


@pytest.mark.parametrize("name", IMAGENET_C_BAR)
def test_corruption_is_seeded_shaped_and_changes_the_image(name, photo):
    level = CBAR_SEVERITY_PARAMS[name][2]
    out = corrupt_cbar(photo, name, level, seed=7)
    assert out.dtype == np.uint8 and out.shape == photo.shape
    assert np.array_equal(out, corrupt_cbar(photo, name, level, seed=7))  # deterministic with a seed
    assert not np.array_equal(out, photo)
    others = [corrupt_cbar(photo, name, level, seed=s) for s in (8, 9)]
    assert any(not np.array_equal(out, o) for o in others)  # the seed matters
    small = corrupt_cbar(photo[:40, :56], name, level, seed=7)  # non-square, small (--no-resize-crop)
    assert small.shape == (40, 56, 3) and small.dtype == np.uint8


@pytest.mark.parametrize("name", IMAGENET_C_BAR)
def test_severity_5_changes_more_than_severity_1(name, photo):
    levels = CBAR_SEVERITY_PARAMS[name]
    changes = np.array([[_change(corrupt_cbar(photo, name, lv, seed=s), photo) for lv in levels] for s in range(3)])
    assert (changes[:, 4] > changes[:, 0]).all(), changes
    if name in MONOTONE:
        assert (np.diff(changes, axis=1) >= -1e-9).all(), changes


def test_corrupt_cbar_refuses_bad_input(photo):
    with pytest.raises(ValueError, match="corruption='fog' is not an ImageNet-C-bar corruption; allowed: "):
        corrupt_cbar(photo, "fog", 1.0, 0)
    with pytest.raises(ValueError, match=r"allowed: uint8 \(H, W, 3\)"):
        corrupt_cbar(photo.astype(np.float32), "sparkles", 1.0, 0)


def _tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "tools" / "make_corrupted.py"), *args, "--no-progress"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_make_corrupted_resizes_and_crops_like_imagenet_c_by_default(tmp_path):
    """ImageNet-C / C-bar corrupt 224x224 centre crops of the 256-resized image: that is now the default."""
    src = tmp_path / "src" / "cls"
    src.mkdir(parents=True)
    rng = np.random.RandomState(0)
    Image.fromarray(rng.randint(0, 255, (300, 400, 3), dtype=np.uint8)).save(src / "wide.png")
    Image.fromarray(rng.randint(0, 255, (28, 28), dtype=np.uint8)).save(src / "tiny.png")
    proc = _tool(
        str(tmp_path / "src"),
        str(tmp_path / "c"),
        "--corruptions",
        "sparkles",
        "--severities",
        "2",
        "--format",
        "png",
        "--workers",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    assert "resized to 256 and centre-cropped to 224" in proc.stdout
    for name in ("wide.png", "tiny.png"):
        assert Image.open(tmp_path / "c" / "sparkles" / "2.00" / "cls" / name).size == (224, 224)
    proc = _tool(
        str(tmp_path / "src"),
        str(tmp_path / "own"),
        "--corruptions",
        "sparkles",
        "--severities",
        "2",
        "--format",
        "png",
        "--workers",
        "1",
        "--no-resize-crop",
    )
    assert proc.returncode == 0, proc.stderr
    assert Image.open(tmp_path / "own" / "sparkles" / "2.00" / "cls" / "wide.png").size == (400, 300)
    assert Image.open(tmp_path / "own" / "sparkles" / "2.00" / "cls" / "tiny.png").size == (28, 28)


def test_resize_crop_matches_torchvision():
    import importlib.util

    from torchvision import transforms as T

    spec = importlib.util.spec_from_file_location("make_corrupted", ROOT / "tools" / "make_corrupted.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    img = Image.fromarray(np.random.RandomState(1).randint(0, 255, (333, 500, 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224)])(img)
    assert np.array_equal(np.asarray(tool.resize_crop(img)), np.asarray(ref))


def test_eval_and_trainer_share_the_val_crop_default():
    """data.crop_pct null: the trainer cropped 0.875 while eval.py used 1.0 (issue 15 item 9)."""
    data = {"name": "imagefolder", "in_chans": 3, "img_size": 32, "interpolation": "bilinear", "crop_pct": None}
    assert val_crop_pct(data) == DEFAULT_CROP_PCT == 0.875 and val_crop_pct({**data, "crop_pct": 0.9}) == 0.9
    img = Image.fromarray(np.random.RandomState(2).randint(0, 255, (48, 64, 3), dtype=np.uint8))
    trainer_val = imagenet_transforms(data, None)[1]
    assert torch.equal(eval_transform(data)(img), trainer_val(img))
