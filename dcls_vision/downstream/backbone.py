"""DCLS backbones for mmdet / mmseg: a registered timm DCLS model giving its four feature scales.

The timm model is kept whole (minus the classifier), so parameter names, stage-shared positions and the
checkpoint layout are those of our trainer: loading a pre-trained run needs no key surgery beyond dropping the
head. As in ConvNeXt's detection/segmentation backbones, each returned scale gets its own LayerNorm.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import timm
import torch
from mmengine.logging import print_log
from mmengine.model import BaseModule
from timm.layers import LayerNorm2d
from torch import Tensor, nn

from dcls_vision.ops import dcls_parameters

from . import layer_decay
from .weights import CHECKPOINT_KEYS, load_backbone_state

DCLS_MODELS = (
    "convnext_tiny_dcls",
    "convnext_tiny_dcls_gauss",
    "convnext_small_dcls",
    "convnext_base_dcls",
    "convformer_s18_dcls",
    "convformer_s18_dcls_gauss",
)
# Gauss variants without a registered name: the ConvNeXt-T-dcls Gauss settings (23 / 26) on S and B.
GAUSS_KWARGS = {"dcls_interpolation": "gauss", "dcls_dilated_kernel_size": 23, "dcls_kernel_count": 26}


def _int_tuple(value: Any, name: str) -> tuple[int, ...]:
    values = tuple(value) if isinstance(value, (list, tuple)) else (value,)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) for v in values):
        raise ValueError(f"{name}={value!r} is invalid; allowed: a non-empty list of stage indices")
    return values


def _checked_kwargs(
    model_name: Any, checkpoint_key: str, drop_path_rate: Any, model_kwargs: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The backbone's arguments, checked before anything is built; returns the extra timm kwargs."""
    if not isinstance(model_name, str) or not timm.is_model(model_name):
        raise ValueError(
            f"model_name={model_name!r} is not a timm model; allowed: {', '.join(DCLS_MODELS)} "
            "(or another timm model with stages)"
        )
    if checkpoint_key not in CHECKPOINT_KEYS:
        raise ValueError(f"checkpoint_key={checkpoint_key!r} is not supported; allowed: {', '.join(CHECKPOINT_KEYS)}")
    if not isinstance(drop_path_rate, (int, float)) or not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(f"drop_path_rate={drop_path_rate!r} is invalid; allowed: a float in [0, 1)")
    kwargs = dict(model_kwargs or {})
    for reserved in ("num_classes", "features_only", "pretrained", "in_chans", "drop_path_rate"):
        if reserved in kwargs:
            raise ValueError(
                f"model_kwargs[{reserved!r}] is set by the backbone; allowed: pass it as an argument "
                "(in_chans, drop_path_rate) or drop it"
            )
    return kwargs


def _checked_stages(
    body: nn.Module, model_name: str, out_indices: Any, frozen_stages: Any
) -> tuple[int, tuple[int, ...]]:
    """Number of stages and the checked ``out_indices`` of a built timm body (which must have ``stages``)."""
    stages = getattr(body, "stages", None)
    if not isinstance(stages, nn.Sequential) or not hasattr(body, "forward_intermediates"):
        raise ValueError(
            f"model_name={model_name!r} has no 'stages' / forward_intermediates; allowed: {', '.join(DCLS_MODELS)}"
        )
    num_stages = len(stages)
    out = _int_tuple(out_indices, "out_indices")
    if list(out) != sorted(set(out)) or out[0] < 0 or out[-1] >= num_stages:
        raise ValueError(f"out_indices={list(out)!r} is invalid; allowed: increasing indices in 0..{num_stages - 1}")
    if isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= num_stages:
        raise ValueError(f"frozen_stages={frozen_stages!r} is invalid; allowed: an int in -1..{num_stages}")
    return num_stages, out


class DclsBackbone(BaseModule):
    """Multi-scale backbone from a timm DCLS model (``model_name``: one of :data:`DCLS_MODELS` or any timm model
    with ``stages`` and ``forward_intermediates``).

    Args:
        out_indices: stages whose outputs are returned (strides 4, 8, 16, 32); the stages after the last one are
            removed, and their tensors in ``checkpoint`` are skipped (only those).
        drop_path_rate: stochastic depth of the timm model (linearly increasing per block).
        frozen_stages: k >= 1 freezes the stem and stages 0..k-1 with their downsample layers (eval mode, no
            gradients); -1 and 0 freeze nothing (mmpretrain's ConvNeXt semantics).
        out_norm: a LayerNorm per returned scale (ConvNeXt's detection/segmentation backbones).
        checkpoint: a file written by our trainer (``last.pth``, ``best.pth``, ``best_ema.pth``) or a state
            dict, loaded in :meth:`init_weights` (the runner calls it) with ``weights_only=True``.
        checkpoint_key: ``model`` or ``ema`` (``last.pth`` holds both; ``best_ema.pth`` keeps EMA weights in ``model``).
        model_kwargs: more ``timm.create_model`` kwargs (``dims``, ``depths``, ``dcls_interpolation``, ...).
    """

    def __init__(
        self,
        model_name: str = "convnext_tiny_dcls",
        out_indices: Sequence[int] = (0, 1, 2, 3),
        drop_path_rate: float = 0.0,
        frozen_stages: int = -1,
        out_norm: bool = True,
        checkpoint: str | None = None,
        checkpoint_key: str = "model",
        in_chans: int = 3,
        model_kwargs: Mapping[str, Any] | None = None,
        init_cfg: Any = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        import dcls_vision.models  # noqa: F401  (registers the DCLS models with timm)

        kwargs = _checked_kwargs(model_name, checkpoint_key, drop_path_rate, model_kwargs)
        body = timm.create_model(
            model_name,
            pretrained=False,
            num_classes=0,
            in_chans=in_chans,
            drop_path_rate=float(drop_path_rate),
            **kwargs,
        )
        num_stages, out = _checked_stages(body, model_name, out_indices, frozen_stages)
        body.prune_intermediate_layers(list(out), prune_norm=True, prune_head=True)
        self.pruned_prefixes = tuple(f"stages.{i}." for i in range(out[-1] + 1, num_stages))
        self.body = body
        self.model_name = model_name
        self.out_indices = out
        self.frozen_stages = frozen_stages
        self.checkpoint, self.checkpoint_key = checkpoint, checkpoint_key
        self.first_conv = (getattr(body, "pretrained_cfg", None) or {}).get("first_conv")
        info = body.feature_info
        self.out_channels = [int(info[i]["num_chs"]) for i in out]
        self.strides = [int(info[i]["reduction"]) for i in out]
        self.depths = [len(getattr(stage, "blocks", ())) for stage in body.stages]
        self.norms = nn.ModuleList(LayerNorm2d(c) if out_norm else nn.Identity() for c in self.out_channels)
        self._freeze()

    # ------------------------------------------------------------------------------------------- forward
    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        feats = self.body.forward_intermediates(x, indices=list(self.out_indices), intermediates_only=True)
        return tuple(norm(f) for norm, f in zip(self.norms, feats))

    # ------------------------------------------------------------------------------------ frozen stages
    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages <= 0:
            return []
        stem = [m for name, m in self.body.named_children() if name.startswith("stem")]
        return stem + list(self.body.stages[: self.frozen_stages])

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DclsBackbone:
        super().train(mode)
        self._freeze()  # frozen stages stay in eval mode (drop path off, norms fixed)
        return self

    # ------------------------------------------------------------------------------------- weights
    def init_weights(self) -> None:
        """mmengine's init, then the pre-trained checkpoint (if any), mapped to this model."""
        super().init_weights()
        if self.checkpoint is None:
            return
        report = load_backbone_state(
            self.checkpoint,
            self.body,
            key=self.checkpoint_key,
            first_conv=self.first_conv,
            skip_prefixes=self.pruned_prefixes,
        )
        if report["trained_as"] and report["trained_as"] != self.model_name:
            print_log(
                f"DclsBackbone: {self.checkpoint} was trained as {report['trained_as']!r}, loaded into "
                f"{self.model_name!r} (shapes match)",
                logger="current",
            )
        print_log(
            f"DclsBackbone: loaded {report['loaded']} tensors from {self.checkpoint} [{self.checkpoint_key}]; "
            f"dropped {len(report['dropped'])} classifier tensors, {len(report['skipped'])} of stages removed by "
            f"out_indices={list(self.out_indices)}; adapted: {report['adapted'] or 'none'}",
            logger="current",
        )
        self._freeze()

    # ----------------------------------------------------------------------------- optimizer interface
    def layer_id(self, name: str, decay_type: str, num_layers: int) -> int:
        """LR-decay layer id of parameter ``name`` (relative to this module); see :mod:`.layer_decay`."""
        if name.startswith("body."):
            return layer_decay.layer_id(name[len("body.") :], decay_type, num_layers)
        return num_layers + 1  # the per-scale norms belong with the neck (ConvNeXt's convention)

    def default_num_layers(self) -> int:
        return layer_decay.default_num_layers(self.depths)

    def dcls_parameters(self) -> dict[str, list[torch.nn.Parameter]]:
        return dcls_parameters(self)


class DclsConvNeXt(DclsBackbone):
    """ConvNeXt-dcls by ``arch`` (tiny / small / base) and ``interpolation`` (bilinear 17/34 or 17/40, gauss 23/26)."""

    ARCHS = ("tiny", "small", "base")

    def __init__(self, arch: str = "tiny", interpolation: str = "bilinear", **kwargs: Any) -> None:
        if arch not in self.ARCHS:
            raise ValueError(f"arch={arch!r} is not supported; allowed: {', '.join(self.ARCHS)}")
        if interpolation not in ("bilinear", "gauss"):
            raise ValueError(f"interpolation={interpolation!r} is not supported; allowed: bilinear, gauss")
        name = f"convnext_{arch}_dcls"
        model_kwargs = dict(kwargs.pop("model_kwargs", None) or {})
        if interpolation == "gauss":
            if arch == "tiny":
                name = "convnext_tiny_dcls_gauss"
            else:
                model_kwargs = {**GAUSS_KWARGS, **model_kwargs}
        super().__init__(model_name=name, model_kwargs=model_kwargs, **kwargs)


class DclsConvFormer(DclsBackbone):
    """ConvFormer-S18-dcls (``interpolation``: bilinear 17/40 or gauss 23/26)."""

    def __init__(self, arch: str = "s18", interpolation: str = "bilinear", **kwargs: Any) -> None:
        if arch != "s18":
            raise ValueError(f"arch={arch!r} is not supported; allowed: s18")
        if interpolation not in ("bilinear", "gauss"):
            raise ValueError(f"interpolation={interpolation!r} is not supported; allowed: bilinear, gauss")
        name = "convformer_s18_dcls" + ("_gauss" if interpolation == "gauss" else "")
        super().__init__(model_name=name, **kwargs)
