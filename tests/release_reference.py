"""A ConvNeXt-dcls network in the layout of the published releases, written from the issue's description.

Module names follow K-H-Ismail/ConvNeXt-dcls ``models/convnext_dcls.py`` (``downsample_layers``, ``stages.i.j``
with ``dwconv`` / ``norm`` / ``pwconv1`` / ``pwconv2`` / ``gamma``, ``norm``, ``head``); the DCLS convs are the
public ``dcls`` 0.1.1 ``Dcls2d`` (bilinear: ``version="v0"``, the 2022 construction; gauss: ``version="gauss"``),
and each stage holds ONE ``P`` (and ``SIG``) tensor that all its blocks use, so the state dict repeats it under
every block's key, as the release files do. Tests only: it is the independent reference the converter must match.
"""

from __future__ import annotations

import logging

import torch
from DCLS.construct.modules import Dcls2d as RefDcls2d
from torch import Tensor, nn

SIZES = {  # depths, dims of the three releases
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}


class ChannelsFirstLayerNorm(nn.Module):
    """The fork's LayerNorm over channels of an (N, C, H, W) tensor, computed by hand as in the release code."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = nn.Parameter(torch.ones(dim)), nn.Parameter(torch.zeros(dim)), eps

    def forward(self, x: Tensor) -> Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Block(nn.Module):
    def __init__(self, dim: int, P: nn.Parameter, SIG: nn.Parameter | None, size: int, count: int, version: str):
        super().__init__()
        logging.disable(logging.WARNING)  # Dcls2d logs that the implicit-GEMM kernel is not installed
        try:
            self.dwconv = RefDcls2d(
                dim, dim, kernel_count=count, dilated_kernel_size=size, padding=size // 2, groups=dim, version=version
            )
        finally:
            logging.disable(logging.NOTSET)
        self.dwconv.P = P
        if SIG is not None:
            self.dwconv.SIG = SIG
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1, self.act, self.pwconv2 = nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.randn(dim) * 0.5)  # trained layer scales, far from the 1e-6 init

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(self.norm(y))))
        return x + y.permute(0, 3, 1, 2)


class ReleaseConvNeXtDcls(nn.Module):
    """ConvNeXt_dcls of the fork; ``version`` "v0" (bilinear releases) or "gauss" (σ as ``dwconv.SIG``)."""

    def __init__(
        self,
        depths=(3, 3, 9, 3),
        dims=(96, 192, 384, 768),
        size: int = 17,
        count: int = 34,
        version: str = "v0",
        num_classes: int = 1000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        stem = nn.Sequential(nn.Conv2d(3, dims[0], 4, 4), ChannelsFirstLayerNorm(dims[0]))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(3):
            down = nn.Sequential(ChannelsFirstLayerNorm(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, 2))
            self.downsample_layers.append(down)
        lim = size // 2
        self.stages = nn.ModuleList()
        for i in range(4):  # trained-looking positions: spread over the whole dilated kernel, σ away from 0
            P = nn.Parameter((torch.randn(2, dims[i], 1, count) * lim / 2).clamp(-lim, lim))
            SIG = nn.Parameter(torch.rand(2, dims[i], 1, count) + 0.1) if version == "gauss" else None
            blocks = [Block(dims[i], P, SIG, size, count, version) for _ in range(depths[i])]
            self.stages.append(nn.Sequential(*blocks))
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)
        with torch.no_grad():  # non-trivial norms and biases, so a swapped key shows in the logits
            for name, p in self.named_parameters():
                if name.endswith("bias") or (name.endswith("weight") and p.ndim == 1):
                    p.add_(torch.randn_like(p) * 0.1)

    def forward(self, x: Tensor) -> Tensor:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        return self.head(self.norm(x.mean((-2, -1))))


def release_file(model: nn.Module, path, **extra) -> None:
    """Save as the releases are saved: ``{"model": state_dict}`` (plus ``extra`` entries)."""
    torch.save({"model": model.state_dict(), **extra}, path)


__all__ = ["SIZES", "ReleaseConvNeXtDcls", "release_file"]
