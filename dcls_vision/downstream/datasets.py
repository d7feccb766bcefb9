"""Small real-format datasets made offline from the images bundled with scikit-image.

No detection/segmentation data ships with any package, and nothing may be downloaded, so the tests (and a
user trying the pipeline) build files in the exact on-disk formats mmdet and mmseg read:

- :func:`make_coco`: COCO instance segmentation in COCO 2017's layout (``train2017/``, ``val2017/`` JPEGs and
  ``annotations/instances_{train,val}2017.json`` with RLE masks, boxes and areas from the masks).
- :func:`make_ade`: ADE20K layout (``images/{training,validation}/*.jpg``, ``annotations/...*.png`` label
  maps; 0 = "other", ignored with ``reduce_zero_label``).
- :func:`make_image_folder`: an ImageNet-style folder for ``python train.py data=imagenet`` (pre-training a
  small backbone with our trainer).

Images are crops of the bundled photos (astronaut, coffee, chelsea, ...) with random shapes pasted on top
(exact masks from ``skimage.draw``); a shape's class is its geometry (rectangle, ellipse, triangle).
CLI: ``python -m dcls_vision.downstream.datasets {coco,ade,folder} OUT [--num-train N] [--num-val N] [--size S]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

SHAPES = ("rectangle", "ellipse", "triangle")
ADE_CLASSES = ("scene", *SHAPES)  # label ids 1..4 in the png; 0 = other (ignored with reduce_zero_label)
ADE_PALETTE = ((120, 120, 120), (180, 120, 120), (6, 230, 230), (80, 50, 50))
_PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
    "camera",
    "brick",
    "grass",
    "gravel",
    "moon",
)
_FOLDER_CLASSES = ("astronaut", "coffee", "chelsea", "rocket")


def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image photo as HxWx3 uint8 (grey ones replicated)."""
    from skimage import data

    img = np.asarray(getattr(data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


def _check_size(size: int | Sequence[int], name: str = "size") -> tuple[int, int]:
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 32 for v in hw):
        raise ValueError(f"{name}={size!r} is invalid; allowed: an int or (height, width) of ints >= 32")
    return hw  # type: ignore[return-value]


def _check_count(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name}={value!r} is invalid; allowed: an int >= {minimum}")
    return value


def _crop(rng: np.random.Generator, photo: np.ndarray, hw: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """A random crop covering ``scale`` of the photo's short side, resized to ``hw``."""
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(*scale))
    ch, cw = max(8, min(h, int(side * hw[0] / max(hw)))), max(8, min(w, int(side * hw[1] / max(hw))))
    y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    patch = Image.fromarray(photo[y : y + ch, x : x + cw]).resize((hw[1], hw[0]), Image.BILINEAR)
    return np.asarray(patch)


def _shape_mask(rng: np.random.Generator, kind: str, hw: tuple[int, int]) -> np.ndarray:
    """Boolean mask of one random shape, 15-45 % of the short side, fully inside the image."""
    from skimage import draw

    h, w = hw
    size = rng.uniform(0.15, 0.45) * min(h, w)
    cy, cx = rng.uniform(size / 2 + 1, h - size / 2 - 1), rng.uniform(size / 2 + 1, w - size / 2 - 1)
    mask = np.zeros(hw, dtype=bool)
    if kind == "rectangle":
        ry, rx = size / 2 * rng.uniform(0.6, 1.0), size / 2 * rng.uniform(0.6, 1.0)
        rr, cc = draw.rectangle((cy - ry, cx - rx), (cy + ry, cx + rx), shape=hw)
    elif kind == "ellipse":
        rr, cc = draw.ellipse(
            cy,
            cx,
            size / 2 * rng.uniform(0.6, 1.0),
            size / 2 * rng.uniform(0.6, 1.0),
            shape=hw,
            rotation=rng.uniform(0, np.pi),
        )
    else:
        angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 2 * np.pi / 3, 4 * np.pi / 3])
        rr, cc = draw.polygon(cy + size / 2 * np.sin(angles), cx + size / 2 * np.cos(angles), shape=hw)
    mask[rr.astype(int), cc.astype(int)] = True
    return mask


def _scene(
    rng: np.random.Generator, photos: dict[str, np.ndarray], hw: tuple[int, int], max_objects: int, min_area: int
) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """An image and its visible instances (class index into SHAPES, mask); later shapes occlude earlier ones."""
    names = list(photos)
    while True:
        image = _crop(rng, photos[names[rng.integers(len(names))]], hw, (0.5, 1.0)).copy()
        placed: list[tuple[int, np.ndarray]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            cls = int(rng.integers(len(SHAPES)))
            mask = _shape_mask(rng, SHAPES[cls], hw)
            texture = _crop(rng, photos[names[rng.integers(len(names))]], hw, (0.2, 0.5)).astype(np.float32)
            tint = rng.uniform(0, 255, size=3).astype(np.float32)
            image[mask] = (0.4 * texture[mask] + 0.6 * tint).astype(np.uint8)
            placed = [(c, m & ~mask) for c, m in placed] + [(cls, mask)]
        instances = [(c, m) for c, m in placed if m.sum() >= min_area]
        if instances:
            return image, instances


def _scene_setup(
    root: str | Path, size: int | Sequence[int], num_train: int, num_val: int, max_objects: int, seed: int
) -> tuple[Path, tuple[int, int], np.random.Generator, dict[str, np.ndarray]]:
    """Checked arguments of :func:`make_coco` / :func:`make_ade`, their random generator and the photos."""
    hw = _check_size(size)
    for value, name in ((num_train, "num_train"), (num_val, "num_val"), (max_objects, "max_objects")):
        _check_count(value, name)
    return Path(root), hw, np.random.default_rng(seed), {name: _photo(name) for name in _PHOTOS}


def make_coco(
    root: str | Path,
    num_train: int = 8,
    num_val: int = 4,
    size: int | Sequence[int] = 160,
    max_objects: int = 3,
    seed: int = 0,
) -> dict[str, Path]:
    """Write a COCO-format instance-segmentation set under ``root``; returns its paths.

    Layout (COCO 2017's): ``root/{train,val}2017/*.jpg`` and ``root/annotations/instances_{train,val}2017.json``;
    categories
    ``rectangle``, ``ellipse``, ``triangle`` (ids 1-3); masks as compressed RLE; ``bbox`` and ``area`` from the
    mask (``pycocotools``), ``iscrowd = 0``.
    """
    from pycocotools import mask as mask_utils

    root, hw, rng, photos = _scene_setup(root, size, num_train, num_val, max_objects, seed)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(SHAPES)]
    paths: dict[str, Path] = {"root": root}
    ann_id = 1
    for split, count in (("train2017", num_train), ("val2017", num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            image, instances = _scene(rng, photos, hw, max_objects, min_area=64)
            name = f"{image_id:012d}.jpg"
            Image.fromarray(image).save(root / split / name, quality=95)
            images.append({"id": image_id, "file_name": name, "height": hw[0], "width": hw[1]})
            for cls, mask in instances:
                rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
                annotations.append(
                    {
                        "id": ann_id,
                        "image_id": image_id,
                        "category_id": cls + 1,
                        "iscrowd": 0,
                        "segmentation": {
                            "size": [int(v) for v in rle["size"]],
                            "counts": rle["counts"].decode("ascii"),
                        },
                        "area": float(mask_utils.area(rle)),
                        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    }
                )
                ann_id += 1
        ann_file = root / "annotations" / f"instances_{split}.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(
            json.dumps(
                {
                    "info": {"description": f"dcls-vision offline shapes ({split})"},
                    "licenses": [],
                    "images": images,
                    "annotations": annotations,
                    "categories": categories,
                }
            )
        )
        paths[f"{split[:-4]}_ann"], paths[f"{split[:-4]}_img"] = ann_file, root / split
    return paths


def make_ade(
    root: str | Path,
    num_train: int = 8,
    num_val: int = 4,
    size: int | Sequence[int] = 128,
    max_objects: int = 3,
    seed: int = 0,
) -> dict[str, Path]:
    """Write an ADE20K-layout semantic-segmentation set under ``root``; returns its paths.

    ``images/{training,validation}/ADE_{train,val}_XXXXXXXX.jpg`` and the same names as ``.png`` label maps
    under ``annotations/``: 1 = scene, 2-4 = rectangle/ellipse/triangle, 0 = other (a 3-px border band, as
    ADE's unlabelled pixels; ``reduce_zero_label=True`` maps it to 255 = ignore and the rest to 0-3).
    """
    root, hw, rng, photos = _scene_setup(root, size, num_train, num_val, max_objects, seed)
    paths: dict[str, Path] = {"root": root}
    for split, tag, count in (("training", "train", num_train), ("validation", "val", num_val)):
        img_dir, ann_dir = root / "images" / split, root / "annotations" / split
        img_dir.mkdir(parents=True, exist_ok=True)
        ann_dir.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, instances = _scene(rng, photos, hw, max_objects, min_area=16)
            label = np.ones(hw, dtype=np.uint8)
            for cls, mask in instances:
                label[mask] = cls + 2
            label[:3], label[-3:], label[:, :3], label[:, -3:] = 0, 0, 0, 0
            stem = f"ADE_{tag}_{i + 1:08d}"
            Image.fromarray(image).save(img_dir / f"{stem}.jpg", quality=95)
            Image.fromarray(label).save(ann_dir / f"{stem}.png")
        paths[f"{tag}_img"], paths[f"{tag}_ann"] = img_dir, ann_dir
    return paths


def make_image_folder(
    root: str | Path, num_per_class: int = 16, num_val_per_class: int = 4, size: int = 64, seed: int = 0
) -> dict[str, Path]:
    """Write an ImageNet-style folder (``root/{train,val}/<photo>/*.jpg``): one class per bundled photo.

    Samples are random crops (30-80 % of the short side) of the photo; 4 classes. Enough for a real
    pre-training run of a tiny backbone with ``python train.py data=imagenet data.root=ROOT``.
    """
    _check_size(size)
    _check_count(num_per_class, "num_per_class")
    _check_count(num_val_per_class, "num_val_per_class")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for name in _FOLDER_CLASSES:
        photo = _photo(name)
        for split, count in (("train", num_per_class), ("val", num_val_per_class)):
            out = root / split / name
            out.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(_crop(rng, photo, (size, size), (0.3, 0.8))).save(out / f"{name}_{i:04d}.jpg")
    return {"root": root, "train": root / "train", "val": root / "val"}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dcls_vision.downstream.datasets", description=__doc__.split("\n")[0]
    )
    parser.add_argument("kind", choices=("coco", "ade", "folder"))
    parser.add_argument("out", type=Path)
    parser.add_argument("--num-train", type=int, default=None, help="images (per class for 'folder')")
    parser.add_argument("--num-val", type=int, default=None)
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    kwargs = {"seed": args.seed}
    if args.size is not None:
        kwargs["size"] = args.size
    try:
        if args.kind == "folder":
            if args.num_train is not None:
                kwargs["num_per_class"] = args.num_train
            if args.num_val is not None:
                kwargs["num_val_per_class"] = args.num_val
            paths = make_image_folder(args.out, **kwargs)
        else:
            for key in ("num_train", "num_val"):
                if getattr(args, key) is not None:
                    kwargs[key] = getattr(args, key)
            paths = (make_coco if args.kind == "coco" else make_ade)(args.out, **kwargs)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(json.dumps({k: str(v) for k, v in paths.items()}))


if __name__ == "__main__":
    main()
