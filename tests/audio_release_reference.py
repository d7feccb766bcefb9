"""Networks in the layouts of DCLS-Audio's published AudioSet models, written from that repository's model code
(K-H-Ismail/DCLS-Audio ``models/convnext.py`` and ``models/metaformer.py``: module names, forward order, the
(2,16) one-channel stem, ``replace_depthwise_dcls``), with the public ``dcls`` 0.1.1 ``Dcls2d`` (``version="gauss"``,
one ``P``/``SIG`` per stage shared by its layers, so repeated in the state dict). Tests only: the independent
reference the ``audio-release`` reader must match.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from DCLS.construct.modules import Dcls2d as RefDcls2d
from metaformer_reference import Mlp, SepConv
from release_reference import ReleaseConvNeXtDcls
from torch import Tensor, nn


def ref_dcls(channels: int, count: int, size: int, bias: bool) -> nn.Module:
    """``Dcls2d`` as ``replace_depthwise_dcls`` builds it (models/metaformer.py:646-681)."""
    logging.disable(logging.WARNING)  # Dcls2d logs that the implicit-GEMM kernel is not installed
    try:
        return RefDcls2d(
            channels, channels, kernel_count=count, dilated_kernel_size=size, padding=size // 2, groups=channels,
            version="gauss", bias=bias,
        )  # fmt: skip
    finally:
        logging.disable(logging.NOTSET)


def share_stage(layers: list[nn.Module], dims: int, count: int, size: int) -> None:
    """One trained-looking P (spread over the kernel) and SIG per stage, the same Parameter in every layer."""
    lim = size // 2
    P = nn.Parameter((torch.randn(2, dims, 1, count) * lim / 2).clamp(-lim, lim))
    SIG = nn.Parameter(torch.rand(2, dims, 1, count) + 0.3)
    for layer in layers:
        layer.P, layer.SIG = P, SIG


def perturb(model: nn.Module) -> None:
    """Non-trivial norms, scales and biases, so a swapped tensor shows in the logits."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim <= 1 and not name.endswith((".P", ".SIG")):
                p.add_(torch.randn_like(p) * 0.1)


def audio_convnext(
    depths, dims, count: int = 26, num_classes: int = 527, seed: int = 0, version: str = "gauss"
) -> nn.Module:
    """``convnext_dcls_audio_tiny`` (models/convnext.py:287-309; ``version="v0"`` 17/34: ``_tiny17``, :312-331):
    the ConvNeXt-dcls layout, stem conv (2,16) with bias on one channel."""
    size = 23 if version == "gauss" else 17
    model = ReleaseConvNeXtDcls(
        depths, dims, size=size, count=count, version=version, num_classes=num_classes, seed=seed
    )
    model.downsample_layers[0][0] = nn.Conv2d(1, dims[0], kernel_size=(2, 16), stride=(2, 16))
    perturb(model)
    return model


class LayerNormWithoutBias(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.weight.shape, self.weight, None, self.eps)


class Scale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Downsampling(nn.Module):
    """pre_norm (channels-last) -> conv (channels-first) -> post_norm (channels-last)."""

    def __init__(self, cin: int, cout: int, stem: bool) -> None:
        super().__init__()
        self.pre_norm = nn.Identity() if stem else LayerNormWithoutBias(cin)
        self.conv = (
            nn.Conv2d(cin, cout, (2, 16), (2, 16), bias=False) if stem else nn.Conv2d(cin, cout, 3, 2, 1)
        )  # the audio stem (models/metaformer.py:727-729) has no bias
        self.post_norm = LayerNormWithoutBias(cout) if stem else nn.Identity()
        self.stem = stem

    def forward(self, x: Tensor) -> Tensor:
        x = self.pre_norm(x)
        if not self.stem:
            x = x.permute(0, 3, 1, 2)
        return self.post_norm(self.conv(x).permute(0, 2, 3, 1))


class Block(nn.Module):
    def __init__(self, dim: int, res_scale: bool, count: int, size: int) -> None:
        super().__init__()
        self.norm1, self.token_mixer = (
            LayerNormWithoutBias(dim),
            SepConv(dim, ref_dcls(2 * dim, count, size, bias=False)),
        )
        self.norm2, self.mlp = LayerNormWithoutBias(dim), Mlp(dim)
        self.res_scale1 = Scale(dim) if res_scale else nn.Identity()
        self.res_scale2 = Scale(dim) if res_scale else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = self.res_scale1(x) + self.token_mixer(self.norm1(x))
        return self.res_scale2(x) + self.mlp(self.norm2(x))


class MlpHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(dim, 4 * dim), nn.LayerNorm(4 * dim), nn.Linear(4 * dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(F.relu(self.fc1(x)) ** 2))  # SquaredReLU


class AudioConvFormer(nn.Module):
    """``convformer_dcls_audio_s18`` (models/metaformer.py:706-731): S18, SepConv depthwise -> DCLS gauss."""

    def __init__(self, num_classes: int = 527, count: int = 26, size: int = 23, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        depths, dims = (3, 3, 9, 3), (64, 128, 320, 512)
        self.downsample_layers = nn.ModuleList(
            Downsampling(1 if i == 0 else dims[i - 1], dims[i], stem=i == 0) for i in range(4)
        )
        self.stages = nn.ModuleList()
        for i in range(4):
            blocks = [Block(dims[i], i >= 2, count, size) for _ in range(depths[i])]
            share_stage([b.token_mixer.dwconv for b in blocks], 2 * dims[i], count, size)
            self.stages.append(nn.Sequential(*blocks))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = MlpHead(dims[-1], num_classes)
        perturb(self)

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((1, 2))))


def checkpoint(model: nn.Module, path, **extra) -> None:
    """As DCLS-Audio's utils.save_model writes it: the state dict under ``model`` (plus ``extra`` entries)."""
    torch.save({"model": model.state_dict(), **extra}, path)


__all__ = ["AudioConvFormer", "audio_convnext", "checkpoint"]
