"""Draw a fine-tuned model's predictions: ``python -m dcls_vision.downstream.demo CONFIG CKPT IMAGE... --out DIR``.

Detectors: boxes, masks and class/score labels (mmdet's ``DetLocalVisualizer``); segmentors: the class map blended
over the image (mmseg's ``SegLocalVisualizer``). One PNG per input, ``DIR/<image stem>.png``, drawn off-screen
(matplotlib Agg). Classes and palette come from the checkpoint (``meta.dataset_meta``, written by
``dcls_vision.downstream.train``), else from the config's test set (its ``metainfo``, else its dataset class'),
never from mmdet/mmseg's guesses (COCO / Cityscapes names). The checkpoint is read with ``weights_only=True`` and
must fit the config's model exactly. Exit codes: 0 done, 2 bad argument (one line: an image that does not decode,
a checkpoint that is not a fine-tuned model of this config, an ``--out`` that is a file, a missing OpenMMLab extra).
"""

from __future__ import annotations

import argparse
import os
import warnings
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
    _check_out(Path(args.out), stems)
    return images


def _check_out(out: Path, stems: list[str]) -> None:
    """``--out`` is a directory (made if missing) where each ``<stem>.png`` can be written."""
    if out.exists() and not out.is_dir():
        raise CliError(f"--out {str(out)!r} is an existing file; allowed: a directory (created if missing)")
    for stem in stems:
        if (out / f"{stem}.png").is_dir():
            raise CliError(f"--out {str(out)!r} holds a directory {stem}.png; allowed: a directory without it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CliError(
            f"--out {str(out)!r} cannot be created ({err.strerror}); allowed: a writable directory"
        ) from None


def _decode(path: Path) -> Any:
    """The image as mmcv reads it (RGB array), after PIL has decoded the whole file: a corrupt file or a non-image
    with an image suffix is one line (PIL raises quietly where libpng/cv2 would print their own messages)."""
    import mmcv
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise CliError(
            f"image {str(path)!r} cannot be decoded ({err}); allowed: a readable {', '.join(IMAGE_SUFFIXES)} image"
        ) from None
    return mmcv.imread(str(path), channel_order="rgb")


def _read_checkpoint(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state dict, meta) of a checkpoint of ``dcls_vision.downstream.train``, read with ``weights_only=True``."""
    from dcls_vision.utils.io import load_checkpoint

    allowed = "allowed: a checkpoint written by python -m dcls_vision.downstream.train (iter_N.pth)"
    try:
        obj = load_checkpoint(path)
    except Exception as err:  # not a torch file, or pickled objects beyond tensors
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CliError(f"checkpoint {path!r} cannot be read with weights_only=True ({first}); {allowed}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("state_dict"), dict):
        found = f"keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else f"a {type(obj).__name__}"
        ours = isinstance(obj, dict) and "model" in obj and "config" in obj
        hint = " (a backbone of python train.py: fine-tune it with dcls_vision.downstream.train first)" if ours else ""
        raise CliError(f"checkpoint {path!r} has no 'state_dict' (found {found}){hint}; {allowed}")
    return obj["state_dict"], dict(obj.get("meta") or {})


def _load_weights(model: Any, state: dict[str, Any], path: str) -> None:
    """All of the model's weights from ``state``, nothing else (mmengine's loader would warn and go on)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CliError(
            f"checkpoint {path!r} does not fit the config's model ({len(missing)} missing, e.g. {missing[:2]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:2]}); allowed: a checkpoint fine-tuned with this config"
        )


def _dataset_meta(cfg: Any, meta: dict[str, Any]) -> dict[str, Any]:
    """Classes and palette: the checkpoint's ``dataset_meta``, else the config's test set (metainfo or class)."""
    if (meta.get("dataset_meta") or {}).get("classes"):
        return dict(meta["dataset_meta"])
    from .cli import innermost_dataset

    dataset = innermost_dataset(cfg.test_dataloader.dataset)
    info = dict(dataset.get("metainfo") or {})
    if not info.get("classes"):
        registry = __import__(f"{cfg.default_scope}.registry", fromlist=["DATASETS"]).DATASETS
        cls = registry.get(dataset.get("type"))
        info = {**dict(getattr(cls, "METAINFO", {}) or {}), **info}
    if not info.get("classes"):
        raise CliError(
            "no class names: neither the checkpoint's meta nor the config's test set has them; allowed: a "
            "config whose test dataset names its classes (metainfo=dict(classes=...))"
        )
    return info


def _num_classes(model: Any) -> int | None:
    head = getattr(model, "decode_head", None) or getattr(getattr(model, "roi_head", None), "bbox_head", None)
    if isinstance(head, (list, tuple)) or hasattr(head, "__getitem__"):
        head = head[0]
    return getattr(head, "num_classes", None)


def _model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(model with the checkpoint's weights, its inference function, default scope)."""
    from mmengine.config import Config

    from . import mm  # noqa: F401  (registrations)

    cfg = Config.fromfile(args.config)
    cfg.model.backbone.checkpoint = None  # the fine-tuned weights come from the checkpoint
    scope = cfg.get("default_scope")
    if scope not in ("mmdet", "mmseg"):
        raise CliError(f"config {args.config!r} has default_scope {scope!r}; allowed: mmdet, mmseg")
    state, meta = _read_checkpoint(args.checkpoint)
    with warnings.catch_warnings():  # no checkpoint given to the builders: their default-classes warnings
        warnings.simplefilter("ignore")
        if scope == "mmdet":
            from mmdet.apis import inference_detector as infer
            from mmdet.apis import init_detector

            model = init_detector(cfg, None, device=args.device)
        else:
            from mmseg.apis import inference_model as infer
            from mmseg.apis import init_model

            model = init_model(cfg, None, device=args.device)
    _load_weights(model, state, args.checkpoint)
    model.dataset_meta = _dataset_meta(cfg, meta)
    n = _num_classes(model)
    if n is not None and n != len(model.dataset_meta["classes"]):
        raise CliError(
            f"{len(model.dataset_meta['classes'])} class names for a model of {n} classes; allowed: a checkpoint "
            "whose meta, or a config whose test set, names the model's classes"
        )
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
    decoded = {p: _decode(p) for p in images}  # before the model is built: a bad file is one line, not a traceback
    model, infer, scope = _model(args)
    vis = _visualizer(scope, model, args.alpha)
    out = Path(args.out)
    written = []
    for path in images:
        image = decoded[path]
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
