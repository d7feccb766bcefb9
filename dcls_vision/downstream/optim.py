"""Optimizer-wrapper constructor for fine-tuning DCLS backbones: LR decay that keeps the DCLS rules.

The public DCLS detection/segmentation code (the ConvNeXt-dcls fork of ConvNeXt's
``LearningRateDecayOptimizerConstructor``, for mmdet and mmseg) keeps weight decay 0 for the positions and loses
only their 5× LR: ``.P`` tensors get ``no_decay_dcls`` groups with weight decay 0, but the ``scale = 5`` it sets
is overwritten by the layer's decay scale (docs/design.md §2.1). Here the groups are those of ConvNeXt's recipe
(see :mod:`.layer_decay`), split by identity (``dcls_parameters``, shared tensors once) into ``decay``
(``weight_decay``), ``no_decay`` (ndim ≤ 1 and biases: 0) and ``positions`` / ``sigma`` (``pos_lr_scale`` × the
layer's LR, weight decay 0) by the trainer's own :func:`dcls_vision.engine.optim.param_groups` (the rule lives in
:func:`~dcls_vision.engine.optim.param_rule`), given the backbone's layer ids.

``paramwise_cfg`` keys: ``decay_rate`` (default 1.0 = no decay), ``decay_type`` (``layer_wise`` /
``stage_wise``), ``num_layers`` (default from the backbone: 6 for T / S18, 12 for S / B), ``pos_lr_scale`` (default
:data:`~dcls_vision.engine.optim.POSITION_LR_SCALE`).
A stage-shared positions tensor gets the id of the first block that uses it (as the trainer does).
"""

from __future__ import annotations

from typing import Any

from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from torch import nn

from dcls_vision.engine.optim import POSITION_LR_SCALE, param_groups

from . import layer_decay

PARAMWISE_KEYS = ("decay_rate", "decay_type", "num_layers", "pos_lr_scale")


class DclsOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """Layer-/stage-wise LR decay; DCLS positions and σ at ``pos_lr_scale`` × LR with weight decay 0."""

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: dict | None = None) -> None:
        cfg = dict(paramwise_cfg or {})
        unknown = sorted(set(cfg) - set(PARAMWISE_KEYS))
        if unknown:
            raise ValueError(
                f"paramwise_cfg key(s) {unknown} not supported by DclsOptimWrapperConstructor; "
                f"allowed: {', '.join(PARAMWISE_KEYS)}"
            )
        rate = cfg.setdefault("decay_rate", 1.0)
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < rate <= 1.0:
            raise ValueError(f"paramwise_cfg.decay_rate={rate!r} is invalid; allowed: a float in (0, 1]")
        layer_decay.check_decay_type(cfg.setdefault("decay_type", "layer_wise"))
        num = cfg.setdefault("num_layers", None)
        if num is not None and (isinstance(num, bool) or not isinstance(num, int) or num < 4):
            raise ValueError(
                f"paramwise_cfg.num_layers={num!r} is invalid; allowed: an int >= 4, or None (from the "
                "backbone's depths)"
            )
        scale = cfg.setdefault("pos_lr_scale", POSITION_LR_SCALE)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale <= 0:
            raise ValueError(f"paramwise_cfg.pos_lr_scale={scale!r} is invalid; allowed: a float > 0")
        super().__init__(optim_wrapper_cfg, paramwise_cfg=None)
        self.paramwise_cfg = cfg  # non-empty, so the base class always calls add_params

    def add_params(self, params: list[dict], module: nn.Module, **kwargs: Any) -> None:
        """Append one group per (layer id, kind) to ``params``."""
        cfg = self.paramwise_cfg
        rate, decay_type, pos_scale = float(cfg["decay_rate"]), cfg["decay_type"], float(cfg["pos_lr_scale"])
        backbone = getattr(module, "backbone", None)
        has_ids = hasattr(backbone, "layer_id")
        if rate != 1.0 and not has_ids:
            raise ValueError(
                f"paramwise_cfg.decay_rate={rate} needs a backbone with layer ids; "
                f"{type(backbone).__name__} has none; allowed: a Dcls* backbone, or decay_rate=1.0"
            )
        num_layers = cfg["num_layers"]
        if num_layers is None:
            num_layers = backbone.default_num_layers() if has_ids else 0

        def layer_id_fn(name: str) -> int:
            if has_ids and name.startswith("backbone."):
                return backbone.layer_id(name[len("backbone.") :], decay_type, num_layers)
            return num_layers + 1

        ordered = param_groups(
            module,
            self.base_lr,
            float(self.base_wd or 0.0),
            layer_id_fn=layer_id_fn,
            layer_scale_fn=lambda lid: layer_decay.lr_scale(lid, rate, num_layers),
            pos_lr_scale=pos_scale,
            no_weight_decay=(),
            sort_by_layer=True,
        )
        for g in ordered:  # mmengine's convention: ``lr`` already scaled, the name under ``group_name``
            g["lr"] = self.base_lr * g["lr_scale"]
            g["group_name"] = g.pop("name")
        summary = ", ".join(
            f"{g['group_name']}: {len(g['params'])} tensors lr×{g['lr_scale']:.4g} wd {g['weight_decay']}"
            for g in ordered
        )
        print_log(
            f"DclsOptimWrapperConstructor ({decay_type}, rate {rate}, num_layers {num_layers}, positions/σ "
            f"×{pos_scale}): {summary}",
            logger="current",
        )
        params.extend(ordered)
