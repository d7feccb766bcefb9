"""A ConvFormer in the MetaFormer repository's layout, written here from that code's description.

Module names and computations follow sail-sg/metaformer ``metaformer_baselines.py`` (``convformer_s18``):
``downsample_layers.N`` = ``Downsampling`` (``pre_norm`` / ``conv`` / ``post_norm``: a 7x7 stride-4 stem with a
channels-last LayerNorm after it, then 3x3 stride-2 convs with one before them, LayerNorms without bias, eps 1e-6),
blocks ``stages.i.j`` with ``norm1``, ``token_mixer`` (``SepConv``: Linear ``pwconv1``, StarReLU ``act1``,
depthwise 7x7 ``dwconv``, Linear ``pwconv2``, no biases), ``norm2``, ``mlp`` (Linear ``fc1``, StarReLU, Linear
``fc2``, no biases), ``res_scale1`` / ``res_scale2`` in the last two stages; ``norm`` (nn.LayerNorm) after global
average pooling and ``head`` = ``MlpHead`` (``fc1``, squared ReLU, ``norm``, ``fc2``). Channels-last inside.
Tests only: the layout timm's metaformer checkpoint_filter_fn must map.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class BiaslessLayerNorm(nn.Module):
    """LayerNorm over the last axis with a scale and no bias (the repository's LayerNormGeneral(bias=False))."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.eps = nn.Parameter(1 + 0.1 * torch.randn(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        centred = x - x.mean(-1, keepdim=True)
        return centred / torch.sqrt(centred.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class StarReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale, self.bias = nn.Parameter(torch.tensor([0.9])), nn.Parameter(torch.tensor([0.05]))

    def forward(self, x: Tensor) -> Tensor:
        return self.scale * torch.relu(x) ** 2 + self.bias


class Downsampling(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, first: bool) -> None:
        super().__init__()
        if not first:
            self.pre_norm = BiaslessLayerNorm(cin)
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding)
        if first:
            self.post_norm = BiaslessLayerNorm(cout)
        self.first = first

    def forward(self, x: Tensor) -> Tensor:  # channels-last in (except the image), channels-last out
        if not self.first:
            x = self.pre_norm(x).permute(0, 3, 1, 2)
        x = self.conv(x).permute(0, 2, 3, 1)
        return self.post_norm(x) if self.first else x


class SepConv(nn.Module):
    """``dwconv``: the 7x7 depthwise conv of the repository, or a DCLS layer over ``2 * dim`` channels."""

    def __init__(self, dim: int, dwconv: nn.Module | None = None) -> None:
        super().__init__()
        med = 2 * dim
        self.pwconv1, self.act1 = nn.Linear(dim, med, bias=False), StarReLU()
        self.dwconv = dwconv if dwconv is not None else nn.Conv2d(med, med, 7, padding=3, groups=med, bias=False)
        self.pwconv2 = nn.Linear(med, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = self.act1(self.pwconv1(x)).permute(0, 3, 1, 2)
        return self.pwconv2(self.dwconv(x).permute(0, 2, 3, 1))


class Mlp(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            nn.Linear(dim, 4 * dim, bias=False),
            StarReLU(),
            nn.Linear(4 * dim, dim, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Scale(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(1 + 0.1 * torch.randn(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Block(nn.Module):
    def __init__(self, dim: int, res_scale: bool) -> None:
        super().__init__()
        self.norm1, self.token_mixer = BiaslessLayerNorm(dim), SepConv(dim)
        self.norm2, self.mlp = BiaslessLayerNorm(dim), Mlp(dim)
        if res_scale:
            self.res_scale1, self.res_scale2 = Scale(dim), Scale(dim)
        self.res_scale = res_scale

    def forward(self, x: Tensor) -> Tensor:
        keep1 = self.res_scale1(x) if self.res_scale else x
        x = keep1 + self.token_mixer(self.norm1(x))
        keep2 = self.res_scale2(x) if self.res_scale else x
        return keep2 + self.mlp(self.norm2(x))


class MlpHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(dim, 4 * dim), nn.LayerNorm(4 * dim), nn.Linear(4 * dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(torch.relu(self.fc1(x)) ** 2))


class MetaFormerConvFormer(nn.Module):
    """ConvFormer (MetaFormer repository layout); res_scale in the last two stages as the repository's default."""

    def __init__(self, depths=(1, 1, 2, 1), dims=(16, 32, 48, 64), num_classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        ins = (3, *dims[:-1])
        self.downsample_layers = nn.ModuleList(
            Downsampling(ins[i], dims[i], 7 if i == 0 else 3, 4 if i == 0 else 2, 2 if i == 0 else 1, i == 0)
            for i in range(4)
        )
        self.stages = nn.ModuleList(
            nn.Sequential(*[Block(dims[i], res_scale=i >= 2) for _ in range(depths[i])]) for i in range(4)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = MlpHead(dims[-1], num_classes)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("bias") and "act" not in name:
                    p.add_(0.1 * torch.randn_like(p))

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((1, 2))))


__all__ = ["MetaFormerConvFormer"]
