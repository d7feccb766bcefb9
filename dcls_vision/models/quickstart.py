"""Small ConvNeXt-like nets for 28x28 grey images: DCLS-gauss depthwise convs vs a dense baseline.

The thesis' small-image study in a form that trains in minutes on a laptop CPU: a stride-2 stem
(28 -> 14), one stage of ConvNeXt blocks at 14x14 whose depthwise conv is either a DCLS-gauss
layer (dilated size 13, positions and sigma shared across the stage) or a dense k x k conv, then
global pooling and a linear head. ``kernel_count`` of the DCLS net is chosen so that both nets
have the same number of parameters: per channel the stage holds ``depth * K`` weights plus one
shared set of ``2 * K`` positions and ``2 * K`` widths, against ``depth * k**2`` dense weights.

Defaults (dim 32, depth 3, dense 7x7 vs DCLS 13x13 with K=21): 30.9k parameters each. Width is
kept small on purpose: a whole Fashion-MNIST run must fit in minutes on two CPU cores, where the
MLP matmuls and the depthwise-conv backward dominate. Blocks permute to NHWC for LayerNorm and the
MLP, which is free for channels_last inputs.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, LayerNorm2d, Mlp, trunc_normal_
from timm.models import register_model
from torch import Tensor, nn

from dcls_vision.ops import Dcls2d, share_positions

from .hub import load_pretrained_source

__all__ = ["QuickstartNet", "matched_kernel_count"]

POOLS = ("avg", "max")  # max: tagging a short event (a word) in a long map, as the audio quickstart nets


def matched_kernel_count(depth: int, dense_kernel_size: int) -> int:
    """DCLS-gauss kernel_count whose stage parameter count matches ``depth`` dense k x k depthwise convs.

    Per channel: DCLS ``depth*K`` weights + ``4*K`` shared positions/σ vs dense ``depth*k²``.
    """
    return max(1, round(depth * dense_kernel_size**2 / (depth + 4)))


class Block(nn.Module):
    """ConvNeXt block: depthwise conv -> LayerNorm -> MLP (x4, GELU) -> layer scale -> drop path."""

    def __init__(
        self,
        dim: int,
        conv_dw: nn.Module,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        ls_init_value: float | None = 1e-6,
    ) -> None:
        super().__init__()
        self.conv_dw = conv_dw
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU)
        self.gamma = nn.Parameter(ls_init_value * torch.ones(dim)) if ls_init_value is not None else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # NHWC view (free when x is channels_last)
        x = self.mlp(self.norm(x))
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))


class QuickstartNet(nn.Module):
    """Stem (conv ``stem_kernel_size`` stride 2 + LN) -> ``depth`` blocks at ``dim`` channels -> pool -> LN -> head.

    ``dcls=True`` uses ``Dcls2d`` (gauss, ``dilated_kernel_size``, ``kernel_count``; positions and σ
    shared across the stage), otherwise a dense ``dense_kernel_size`` depthwise conv.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 1,
        dim: int = 32,
        depth: int = 3,
        dcls: bool = True,
        dilated_kernel_size: int = 13,
        kernel_count: int | None = None,
        dense_kernel_size: int = 7,
        interpolation: str = "gauss",
        mlp_ratio: float = 4.0,
        ls_init_value: float | None = 1.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        global_pool: str = "avg",
        stem_kernel_size: int = 3,
        **kwargs: object,
    ) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"unexpected arguments for QuickstartNet: {', '.join(sorted(kwargs))}")
        if global_pool not in POOLS:
            raise ValueError(f"global_pool={global_pool!r} is not supported; allowed: 'avg', 'max'")
        self.num_classes, self.in_chans, self.global_pool = num_classes, in_chans, global_pool
        self.num_features = self.head_hidden_size = dim
        self.drop_rate = drop_rate
        self.kernel_count = kernel_count or matched_kernel_count(depth, dense_kernel_size)
        stem = nn.Conv2d(in_chans, dim, stem_kernel_size, stride=2, padding=(stem_kernel_size - 1) // 2)
        self.stem = nn.Sequential(stem, LayerNorm2d(dim, eps=1e-6))

        def make_conv() -> nn.Module:
            if dcls:
                return Dcls2d(dim, dim, self.kernel_count, dilated_kernel_size, groups=dim, interpolation=interpolation)
            return nn.Conv2d(dim, dim, dense_kernel_size, padding=dense_kernel_size // 2, groups=dim)

        rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.stages = nn.Sequential(
            *[Block(dim, make_conv(), mlp_ratio, rates[i], ls_init_value) for i in range(depth)]
        )
        if dcls:
            share_positions([b.conv_dw for b in self.stages])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------- timm interface
    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        blocks = r"^stages\.(\d+)" if coarse else [(r"^stages\.(\d+)", None), (r"^norm", (99999,))]
        return {"stem": r"^stem", "blocks": blocks}

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        """Positions and σ are handled by the trainer (no decay, 5x LR); listed here too for plain timm optimizers."""
        return {n for n, _ in self.named_parameters() if n.endswith((".positions", ".sigma"))}

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        if enable:
            raise NotImplementedError("gradient checkpointing is not supported by the quickstart nets")

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None and global_pool not in POOLS:
            raise ValueError(f"global_pool={global_pool!r} is not supported; allowed: 'avg', 'max'")
        self.global_pool = global_pool or self.global_pool
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    # ------------------------------------------------------------------------ forward
    def forward_features(self, x: Tensor) -> Tensor:
        """Unpooled features (N, dim, H/2, W/2)."""
        return self.stages(self.stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = x.amax((2, 3)) if self.global_pool == "max" else x.mean((2, 3))
        x = self.head_drop(self.norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg() -> dict[str, object]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (1, 28, 28),
        "pool_size": (14, 14),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": (0.2860,),
        "std": (0.3530,),
        "first_conv": "stem.0",
        "classifier": "head",
    }


def _create(name: str, pretrained: bool, defaults: dict[str, object], kwargs: dict[str, object]) -> QuickstartNet:
    """``pretrained=True`` only from a ``local-dir:`` / ``hf-hub:`` source (:func:`.hub.load_pretrained_source`)."""
    source = kwargs.pop("pretrained_cfg", None)  # passed by timm.create_model (a Hub source: its file / id)
    for key in ("pretrained_cfg_overlay", "cache_dir", "pretrained_model_args"):
        kwargs.pop(key, None)
    model = QuickstartNet(**{**defaults, **kwargs})
    model.pretrained_cfg = model.default_cfg = _cfg()
    if pretrained:
        load_pretrained_source(model, name, source)
    return model


@register_model
def dcls_quickstart(pretrained: bool = False, **kwargs: object) -> QuickstartNet:
    """Quickstart net with DCLS-gauss depthwise convs (dilated 13, stage-shared positions)."""
    return _create("dcls_quickstart", pretrained, {"dcls": True}, kwargs)


@register_model
def dcls_quickstart_baseline(pretrained: bool = False, **kwargs: object) -> QuickstartNet:
    """The same net with dense depthwise convs, parameter count matched to ``dcls_quickstart``."""
    return _create("dcls_quickstart_baseline", pretrained, {"dcls": False}, kwargs)


@register_model
def dcls_kernel_study(pretrained: bool = False, **kwargs: object) -> QuickstartNet:
    """The net of the thesis' kernel-size study (Fig. 6.1): stem conv 2x2 stride 2, then three identical
    DCLS-gauss ConvNeXt blocks (positions and σ shared), as the stem and first stage of ConvNeXt-T-dcls-gauss.

    ``kernel_count`` stays at 21 for every ``dilated_kernel_size`` (the count whose parameters equal three dense
    7x7 depthwise convs), so only the size moves; ``dilated_kernel_size="dense"`` is that dense 7x7 baseline,
    which lets one sweep over the size hold the baseline too (``model.kwargs.dilated_kernel_size=dense,3,7,...``;
    not None: timm.create_model drops None arguments).
    """
    size = kwargs.get("dilated_kernel_size", 13)
    dense = size == "dense"
    if isinstance(size, str) and not dense:
        raise ValueError(
            f"dilated_kernel_size={size!r} is not supported; allowed: an int (the dilated kernel size) or 'dense'"
        )
    if dense:
        kwargs = {k: v for k, v in kwargs.items() if k != "dilated_kernel_size"}
    return _create("dcls_kernel_study", pretrained, {"dcls": not dense, "stem_kernel_size": 2}, kwargs)
