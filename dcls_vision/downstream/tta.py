"""Multi-scale + flip test-time augmentation (``python -m dcls_vision.downstream.test ... --tta``).

Segmentation: mmseg's ``TestTimeAug`` + ``SegTTAModel`` (softmax averaged over the views), with the scales of the
ConvNeXt ``_ms`` ADE20K configs: the test pipeline's ``Resize`` scale (2048×512 in the full configs) times
0.5, 0.75, 1.0, 1.25, 1.5, 1.75, each without and with a horizontal flip (12 views). Ratios of the test scale,
as ConvNeXt's ``MultiScaleFlipAug(img_scale=(2048, 512), img_ratios=...)``, not of the raw image (mmseg 1.x's own
``tta_pipeline`` uses ``scale_factor``).

Detection: mmdet 3.3's ``DetTTAModel`` merges boxes only (it asserts that predictions carry no masks), so box
detectors get the same views merged by NMS, and detectors with a mask head (all our Cascade Mask R-CNN configs)
are refused with one line.
"""

from __future__ import annotations

import copy
from typing import Any

from .cli import CliError

TTA_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
DET_META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction")


def _split_at_resize(pipeline: list[dict]) -> tuple[list[dict], dict, list[dict]]:
    """(steps before the test ``Resize``, the ``Resize``, steps after it)."""
    for i, step in enumerate(pipeline):
        if step.get("type") == "Resize":
            return list(pipeline[:i]), dict(step), list(pipeline[i + 1 :])
    kinds = [s.get("type") for s in pipeline]
    raise CliError(f"--tta needs a Resize step in the test pipeline to scale; this config's has {kinds}")


def tta_pipeline(pipeline: list[dict], ratios: tuple[float, ...] = TTA_RATIOS, meta_keys: Any = None) -> list[dict]:
    """The test pipeline as ``TestTimeAug``: ``Resize`` to ratio × its scale (keep ratio), no flip / flip, then the
    steps that followed the resize (annotations, packing), each as its own single-choice stage."""
    before, resize, after = _split_at_resize([dict(s) for s in pipeline])
    scale = resize.get("scale")
    if scale is None:
        raise CliError(f"--tta needs the test Resize to have a fixed `scale`; this config's is {resize}")
    w, h = (scale, scale) if isinstance(scale, int) else scale
    resizes = [dict(type="Resize", scale=(round(w * r), round(h * r)), keep_ratio=True) for r in ratios]
    flips = [dict(type="RandomFlip", prob=0.0, direction="horizontal"), dict(type="RandomFlip", prob=1.0)]
    if meta_keys is not None:
        after = [{**s, "meta_keys": tuple(meta_keys)} if s.get("type") == "PackDetInputs" else s for s in after]
    return [*before, dict(type="TestTimeAug", transforms=[resizes, flips, *[[s] for s in after]])]


def _detector_name(model: dict) -> str:
    return str(model.get("type", "?")).split(".")[-1]


def apply_tta(cfg: Any) -> str:
    """Switch ``cfg`` (a loaded mmengine Config) to multi-scale + flip testing; returns the TTA model type."""
    model = cfg.model
    dataset = cfg.test_dataloader.dataset
    while "pipeline" not in dataset and "dataset" in dataset:  # RepeatDataset & co.
        dataset = dataset.dataset
    if cfg.get("default_scope") == "mmseg":
        dataset.pipeline = tta_pipeline(dataset.pipeline)
        cfg.model = dict(type="SegTTAModel", module=copy.deepcopy(model))
        return "SegTTAModel"
    if cfg.get("default_scope") != "mmdet":
        raise CliError(f"--tta supports mmseg and mmdet configs; this config's default_scope is {cfg.default_scope!r}")
    roi_head = model.get("roi_head") or {}
    if model.get("mask_head") or roi_head.get("mask_head"):
        raise CliError(
            f"--tta is not supported for {_detector_name(model)} with a mask head: mmdet 3.3's DetTTAModel merges "
            "boxes only; allowed: --tta with segmentation configs or box-only detectors"
        )
    dataset.pipeline = tta_pipeline(dataset.pipeline, meta_keys=DET_META_KEYS)
    tta_cfg = dict(nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)
    cfg.model = dict(type="DetTTAModel", module=copy.deepcopy(model), tta_cfg=tta_cfg)
    return "DetTTAModel"
