"""Draw a fine-tuned model's predictions: ``python -m dcls_vision.downstream.demo CONFIG CKPT IMAGE... --out DIR``.

Detectors: boxes, masks and class/score labels (mmdet's ``DetLocalVisualizer``); segmentors: the class map blended
over the image (mmseg's ``SegLocalVisualizer``). One PNG per input, ``DIR/<image stem>.png``, drawn off-screen
(matplotlib Agg). Classes and palette come from the checkpoint (``meta.dataset_meta``, written by
``dcls_vision.downstream.train``), else from the config's test set. Exit codes: 0 done, 2 bad argument.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.utils.io import atomic_write_bytes

from .cli import CliError, run

PROG = "python -m dcls_vision.downstream.demo"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("config", help="the mmengine config the checkpoint was fine-tuned with")
    parser.add_argument("checkpoint", help="a checkpoint written by `dcls_vision.downstream.train` (iter_N.pth ...)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files to draw predictions on")
    parser.add_argument("--out", required=True, help="output folder (created); one <image stem>.png per image")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--score-thr", type=float, default=0.3, help="detection: draw boxes above this score (0.3)")
    parser.add_argument("--alpha", type=float, default=0.5, help="segmentation: opacity of the class map (0.5)")
    return parser.parse_args(argv)


def _check(args: argparse.Namespace) -> list[Path]:
    for name in ("config", "checkpoint"):
        if not Path(getattr(args, name)).is_file():
            raise CliError(f"{name} {getattr(args, name)!r} does not exist; allowed: an existing file")
    images = [Path(p) for p in args.images]
    for p in images:
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            raise CliError(f"image {str(p)!r} is not an image file; allowed: existing {', '.join(IMAGE_SUFFIXES)}")
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        raise CliError(f"images {stems} share a file stem; allowed: images with distinct names (outputs are stem.png)")
    if not 0.0 <= args.score_thr <= 1.0 or not 0.0 <= args.alpha <= 1.0:
        raise CliError(f"--score-thr {args.score_thr} / --alpha {args.alpha}: allowed: values in [0, 1]")
    return images


def _model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(model with the checkpoint's weights, its inference function, default scope)."""
    from mmengine.config import Config

    from . import mm  # noqa: F401  (registrations)

    cfg = Config.fromfile(args.config)
    cfg.model.backbone.checkpoint = None  # the fine-tuned weights come from the checkpoint
    scope = cfg.get("default_scope")
    if scope == "mmdet":
        from mmdet.apis import inference_detector, init_detector

        model, infer = init_detector(cfg, args.checkpoint, device=args.device), inference_detector
    elif scope == "mmseg":
        from mmseg.apis import inference_model, init_model

        model, infer = init_model(cfg, args.checkpoint, device=args.device), inference_model
    else:
        raise CliError(f"config {args.config!r} has default_scope {scope!r}; allowed: mmdet, mmseg")
    meta = dict(cfg.test_dataloader.dataset.get("metainfo") or {})
    if meta and not (model.dataset_meta or {}).get("classes"):
        model.dataset_meta = meta
    return model, infer, scope


def _visualizer(scope: str, model: Any, alpha: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display: drawn off-screen
    if scope == "mmdet":
        from mmdet.visualization import DetLocalVisualizer as Vis
    else:
        from mmseg.visualization import SegLocalVisualizer as Vis
    kwargs = {} if scope == "mmdet" else {"alpha": alpha}
    vis = Vis(name=f"dcls_demo_{os.getpid()}_{id(model)}", **kwargs)
    vis.dataset_meta = model.dataset_meta
    return vis


def _write_png(image_bgr: Any, path: Path) -> None:
    """Encode, then write atomically (no half-written PNG if interrupted)."""
    import cv2

    ok, data = cv2.imencode(".png", image_bgr)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    atomic_write_bytes(path, data.tobytes())


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    images = _check(args)
    import mmcv

    model, infer, scope = _model(args)
    vis = _visualizer(scope, model, args.alpha)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in images:
        image = mmcv.imread(str(path), channel_order="rgb")
        result = infer(model, str(path))
        extra = {"pred_score_thr": args.score_thr} if scope == "mmdet" else {"with_labels": True}
        vis.add_datasample(path.stem, image, data_sample=result, draw_gt=False, show=False, **extra)
        target = out / f"{path.stem}.png"
        _write_png(vis.get_image()[..., ::-1], target)
        written.append(target)
        print(target, flush=True)
    return written


if __name__ == "__main__":
    run(main, None)
