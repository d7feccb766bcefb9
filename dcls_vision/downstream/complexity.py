"""Whole detectors / segmentors from their configs, at the thesis' sizes, for FLOPs and throughput tools.

What one inference is, for counting (the convention of the thesis' numbers, mmdet/mmseg 2.x/0.x ``get_flops``):

- segmentor: ``EncoderDecoder`` in ``tensor`` mode: backbone + decode head on the whole 2048×512 image (no
  auxiliary head, which is dropped at test time; no sliding window);
- detector: backbone + neck + RPN head, then the RoI head's box branch on 1000 proposals and its mask branch
  on the first 100, every cascade stage (mmdet 2.x ``forward_dummy``): proposals are fixed boxes, so the count
  does not depend on what an untrained RPN keeps after NMS.

Throughput instead times the real ``predict`` path (slide inference where the config says so, NMS, masks).
Sizes are (width, height), the models see (N, 3, height, width).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cli import CliError

THESIS_SIZES = {"mmdet": (1280, 800), "mmseg": (2048, 512)}  # (W, H): COCO 1280×800, ADE20K 2048×512
NUM_PROPOSALS, NUM_MASK_ROIS = 1000, 100


def load_model(config: str | Path, backbone: str | None = None) -> tuple[nn.Module, Any]:
    """The config's whole model (random weights: costs do not depend on them), in eval mode, and the config.

    The backbone's ``checkpoint`` is dropped: nothing is read from disk. ``backbone``: a timm model name that
    replaces the config's backbone (``DclsBackbone``), e.g. ``convnext_tiny`` for the baseline of a -dcls config.
    """
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from . import mm  # noqa: F401  (registrations)

    if not Path(config).is_file():
        raise CliError(f"config {str(config)!r} does not exist; allowed: an mmengine config file (configs/downstream/)")
    cfg = Config.fromfile(str(config))
    if backbone:
        keep = {k: cfg.model.backbone[k] for k in ("out_indices", "drop_path_rate") if k in cfg.model.backbone}
        cfg.model.backbone = dict(type="DclsBackbone", model_name=backbone, **keep)
    scope = cfg.get("default_scope")
    if scope not in THESIS_SIZES:
        raise CliError(f"config {str(config)!r} has default_scope {scope!r}; allowed: mmdet, mmseg")
    cfg.model.backbone.checkpoint = None
    init_default_scope(scope)
    from mmengine.model import revert_sync_batchnorm
    from mmengine.registry import MODELS

    model = revert_sync_batchnorm(MODELS.build(cfg.model)).eval()  # SyncBN needs a process group
    return model, cfg


def input_shape(cfg: Any, size: tuple[int, int] | None = None, batch: int = 1) -> tuple[int, int, int, int]:
    """(N, 3, H, W) at ``size`` (W, H) or the thesis' size of the config's task."""
    w, h = size or THESIS_SIZES[cfg.default_scope]
    return (batch, 3, h, w)


def _fixed_proposals(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` deterministic boxes (x1, y1, x2, y2) inside the image, 8 px to a fifth of its side."""
    h, w = x.shape[-2:]
    g = torch.Generator().manual_seed(0)
    side = torch.tensor([w, h], dtype=torch.float32)
    xy = torch.rand(n, 2, generator=g) * side * 0.8
    wh = torch.rand(n, 2, generator=g) * side * 0.2 + 8
    return torch.cat([xy, xy + wh], 1).to(x)


def detector_forward(model: nn.Module, x: torch.Tensor) -> list[Any]:
    """Backbone + neck + RPN head, then box heads on 1000 proposals and mask heads on 100 (every stage)."""
    from mmdet.structures.bbox import bbox2roi

    feats = model.extract_feat(x)
    outs: list[Any] = [model.rpn_head(feats)] if getattr(model, "with_rpn", False) else []
    head = model.roi_head
    stages = list(range(head.num_stages)) if hasattr(head, "num_stages") else [None]
    rois = torch.cat([bbox2roi([_fixed_proposals(x[i], NUM_PROPOSALS)]) for i in range(x.shape[0])])
    mask_rois = torch.cat([rois[rois[:, 0] == i][:NUM_MASK_ROIS] for i in range(x.shape[0])])
    for stage in stages:
        args = () if stage is None else (stage,)
        if head.with_bbox:
            outs.append(head._bbox_forward(*args, feats, rois))
        if head.with_mask:
            outs.append(head._mask_forward(*args, feats, mask_rois))
    return outs


def segmentor_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """Backbone + decode head on the whole image (``tensor`` mode; the auxiliary head is training-only), each
    called as a module so that the counter attributes their FLOPs."""
    return model.decode_head(model.extract_feat(x))


def counting(cfg: Any) -> tuple[Any, str]:
    """(forward, device) for :func:`dcls_vision.analysis.flops.analyse`: meta tensors for segmentors, CPU for
    detectors (mmcv's RoIAlign has no meta kernel)."""
    return (detector_forward, "cpu") if cfg.default_scope == "mmdet" else (segmentor_forward, "meta")


def data_samples(cfg: Any, shape: tuple[int, int, int, int]) -> list[Any]:
    """Test-time data samples for a batch of ``shape`` images already at their test size (no rescale, no pad)."""
    n, _, h, w = shape
    meta = dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w))
    if cfg.default_scope == "mmdet":
        from mmdet.structures import DetDataSample

        return [DetDataSample(metainfo={**meta, "scale_factor": (1.0, 1.0)}) for _ in range(n)]
    from mmseg.structures import SegDataSample

    return [SegDataSample(metainfo={**meta, "padding_size": [0, 0, 0, 0]}) for _ in range(n)]
