"""Multi-scale + flip test-time augmentation (``python -m dcls_vision.downstream.test ... --tta [PROTOCOL]``).

Segmentation: mmseg's ``TestTimeAug`` + ``SegTTAModel`` (softmax averaged over the views, at the original image
size), 6 ratios 0.5, 0.75, 1.0, 1.25, 1.5, 1.75 of the test pipeline's ``Resize`` scale (2048×512 in the full
configs; ratios of the test scale, as ``MultiScaleFlipAug(img_scale=(2048, 512), img_ratios=...)``, not of the raw
image), each without and with a horizontal flip (12 views). The two published "mIoU (ms+flip)" columns differ in
how each view is resized and inferred, so each is a protocol:

- ``convnext`` (the default): ConvNeXt's ``upernet_convnext_*_512_160k_ade20k_ms.py`` is its ``_ss`` config without
  the slide ``test_cfg`` (facebookresearch/ConvNeXt ``semantic_segmentation/configs/convnext/
  upernet_convnext_tiny_512_160k_ade20k_ss.py:33`` vs ``..._ms.py:15-33``), so the base model's
  ``test_cfg=dict(mode='whole')`` (``configs/_base_/models/upernet_convnext.py:41``) applies: whole-image inference
  on each view, resized with ``Resize(keep_ratio=True)`` (long side ≤ 2048·r, short side ≤ 512·r).
- ``convnext-dcls``: the ConvNeXt-dcls fork's ``_ms`` configs keep the slide ``test_cfg`` (K-H-Ismail/ConvNeXt-dcls
  ``.../upernet_convnext_dcls_tiny_512_160k_ade20k_ms.py:36``) and resize with BEiT's
  ``SETR_Resize(setr_multi_scale=True)`` (``:72-81``): short side max(512, 512·r), no long-side cap, so the 0.5 and
  0.75 views are the 1.0 view (:class:`~dcls_vision.downstream.transforms.DclsShortSideResize`).

Detection: mmdet 3.3's ``DetTTAModel`` merges boxes only (it asserts that predictions carry no masks), so box
detectors get the ratio views (as ``convnext``) merged by NMS, and detectors with a mask head (all our Cascade Mask
R-CNN configs) are refused with one line.
"""

from __future__ import annotations

import copy
from typing import Any

from .cli import CliError, innermost_dataset

TTA_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
DET_META_KEYS = ("img_id", "img_path", "ori_shape", "img_shape", "scale_factor", "flip", "flip_direction")
PROTOCOLS = {
    "convnext": "whole-image inference, Resize(keep_ratio) to ratio x the test scale (ConvNeXt's _ms configs)",
    "convnext-dcls": "the config's test_cfg (slide), short side max(crop, ratio x short), no long-side cap "
    "(the ConvNeXt-dcls fork's _ms configs, BEiT's SETR_Resize)",
}
DEFAULT_PROTOCOL = "convnext"


def _split_at_resize(pipeline: list[dict]) -> tuple[list[dict], dict, list[dict]]:
    """(steps before the test ``Resize``, the ``Resize``, steps after it)."""
    for i, step in enumerate(pipeline):
        if step.get("type") == "Resize":
            return list(pipeline[:i]), dict(step), list(pipeline[i + 1 :])
    kinds = [s.get("type") for s in pipeline]
    raise CliError(f"--tta needs a Resize step in the test pipeline to scale; this config's has {kinds}")


def view_resizes(scale: Any, ratios: tuple[float, ...], min_short: int | None = None) -> list[dict]:
    """One resize per ratio of the test ``scale`` (W, H), as ``MultiScaleFlipAug`` scales it (``int(W·r)``,
    ``int(H·r)``): mmcv's ``Resize(keep_ratio=True)``, or with ``min_short`` the fork's short-side resize."""
    w, h = (scale, scale) if isinstance(scale, int) else scale
    scales = [(int(w * r), int(h * r)) for r in ratios]
    if min_short is None:
        return [dict(type="Resize", scale=s, keep_ratio=True) for s in scales]
    return [dict(type="DclsShortSideResize", scale=s, min_short=min_short) for s in scales]


def tta_pipeline(
    pipeline: list[dict],
    ratios: tuple[float, ...] = TTA_RATIOS,
    meta_keys: Any = None,
    min_short: int | None = None,
) -> list[dict]:
    """The test pipeline as ``TestTimeAug``: the view resizes (:func:`view_resizes`), no flip / flip, then the
    steps that followed the resize (annotations, packing), each as its own single-choice stage."""
    before, resize, after = _split_at_resize([dict(s) for s in pipeline])
    scale = resize.get("scale")
    if scale is None:
        raise CliError(f"--tta needs the test Resize to have a fixed `scale`; this config's is {resize}")
    resizes = view_resizes(scale, ratios, min_short)
    flips = [dict(type="RandomFlip", prob=0.0, direction="horizontal"), dict(type="RandomFlip", prob=1.0)]
    if meta_keys is not None:
        after = [{**s, "meta_keys": tuple(meta_keys)} if s.get("type") == "PackDetInputs" else s for s in after]
    return [*before, dict(type="TestTimeAug", transforms=[resizes, flips, *[[s] for s in after]])]


def _detector_name(model: dict) -> str:
    return str(model.get("type", "?")).split(".")[-1]


def _crop_short_side(cfg: Any) -> int:
    """The slide window's side that the fork's resize keeps as the smallest short side (``crop_size[0]``)."""
    crop = (cfg.model.get("test_cfg") or {}).get("crop_size") or cfg.get("crop_size")
    if not crop:
        raise CliError("--tta convnext-dcls needs a crop_size (test_cfg or config); this config has none")
    return int(crop[0] if isinstance(crop, (list, tuple)) else crop)


def _segmentation(cfg: Any, dataset: Any, protocol: str) -> str:
    model = copy.deepcopy(cfg.model)
    if protocol == "convnext":
        model.test_cfg = dict(mode="whole")
        dataset.pipeline = tta_pipeline(dataset.pipeline)
    else:
        dataset.pipeline = tta_pipeline(dataset.pipeline, min_short=_crop_short_side(cfg))
    cfg.model = dict(type="SegTTAModel", module=model)
    return "SegTTAModel"


def apply_tta(cfg: Any, protocol: str = DEFAULT_PROTOCOL) -> str:
    """Switch ``cfg`` (a loaded mmengine Config) to multi-scale + flip testing by ``protocol`` (:data:`PROTOCOLS`);
    returns the TTA model type."""
    if protocol not in PROTOCOLS:
        raise CliError(f"--tta {protocol!r} is not a protocol; allowed: {', '.join(PROTOCOLS)}")
    dataset = innermost_dataset(cfg.test_dataloader.dataset)
    if cfg.get("default_scope") == "mmseg":
        return _segmentation(cfg, dataset, protocol)
    if cfg.get("default_scope") != "mmdet":
        raise CliError(f"--tta supports mmseg and mmdet configs; this config's default_scope is {cfg.default_scope!r}")
    model = cfg.model
    if protocol != DEFAULT_PROTOCOL:
        raise CliError(f"--tta {protocol} is an ADE20K segmentation protocol; allowed for detectors: --tta")
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
