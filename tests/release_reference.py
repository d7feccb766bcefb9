"""A ConvNeXt-dcls network in the layout of the published releases, written from the issue's description.

Three bilinear kernel constructions, each written here from the rule of the code it stands for (DCLS repository):
``Cuda2022Dcls2d`` the ``cuda`` branch (87ea108, 2022-10-06; ``dcls_construct_2d_cuda_kernel.cu``: floor of
P + s//2 clamped to [0, s-1], rests from the clamped position, P[0] on rows, the four neighbours inside the kernel
get (1-rh)(1-rw), rh(1-rw), (1-rh)rw, rh rw times the weight), ``TransposedDcls2d`` the torch construction of
dcls 0.0.2-0.0.5 (b5e3521 ``modules.py``: P[0] compared with the column index, no clamp, cells outside dropped),
and ``dcls`` 0.1.1 ``Dcls2d`` itself (``version="v0"``: rows, no clamp; "gauss").

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
from torch.nn import functional as F

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


class LoopDcls2d(nn.Module):
    """A depthwise DCLS conv whose kernel is built element group by element group (one kernel-count index at a
    time, with explicit bounds checks), following one of the two historical rules described above."""

    def __init__(self, dim: int, count: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.weight = nn.Parameter(torch.randn(dim, 1, count) * 0.2)
        self.bias = nn.Parameter(torch.randn(dim) * 0.1)
        self.P = nn.Parameter(torch.zeros(2, dim, 1, count))

    def cell_indices(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def kernel(self) -> Tensor:
        dim, s = self.weight.shape[0], self.size
        out = torch.zeros(dim, s, s)
        channels = torch.arange(dim)
        for k in range(self.weight.shape[-1]):
            row, col, rest_row, rest_col = self.cell_indices(k)
            w = self.weight[:, 0, k]
            for dr, dc, share in (
                (0, 0, (1 - rest_row) * (1 - rest_col)),
                (1, 0, rest_row * (1 - rest_col)),
                (0, 1, (1 - rest_row) * rest_col),
                (1, 1, rest_row * rest_col),
            ):
                r, c = row + dr, col + dc
                ok = (r >= 0) & (r < s) & (c >= 0) & (c < s)
                out.index_put_((channels[ok], r[ok], c[ok]), (w * share)[ok], accumulate=True)
        return out[:, None]

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.kernel(), self.bias, padding=self.size // 2, groups=x.shape[1])


class Cuda2022Dcls2d(LoopDcls2d):
    """The 2022 CUDA construction (the releases' training code): P[0] on rows, clamped into the kernel."""

    def cell_indices(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        half, top = self.size // 2, self.size - 1
        p_row, p_col = self.P[0, :, 0, k] + half, self.P[1, :, 0, k] + half
        row, col = p_row.floor().clamp(0, top), p_col.floor().clamp(0, top)
        return row.long(), col.long(), p_row.clamp(0, top) - row, p_col.clamp(0, top) - col


class TransposedDcls2d(LoopDcls2d):
    """dcls 0.0.2-0.0.5: P[0] along the columns (W), P[1] along the rows, no clamp."""

    def cell_indices(self, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        half = self.size // 2
        p_col, p_row = self.P[0, :, 0, k] + half, self.P[1, :, 0, k] + half
        row, col = p_row.floor(), p_col.floor()
        return row.long(), col.long(), p_row - row, p_col - col


LOOP_LAYERS = {"cuda2022": Cuda2022Dcls2d, "v0-transposed": TransposedDcls2d}


class Block(nn.Module):
    def __init__(self, dim: int, P: nn.Parameter, SIG: nn.Parameter | None, size: int, count: int, version: str):
        super().__init__()
        if version in LOOP_LAYERS:
            self.dwconv = LOOP_LAYERS[version](dim, count, size)
        else:
            logging.disable(logging.WARNING)  # Dcls2d logs that the implicit-GEMM kernel is not installed
            try:
                self.dwconv = RefDcls2d(
                    dim,
                    dim,
                    kernel_count=count,
                    dilated_kernel_size=size,
                    padding=size // 2,
                    groups=dim,
                    version=version,
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
    """ConvNeXt_dcls of the fork; ``version``: "cuda2022" (the releases' construction), "v0" (dcls 0.1.1, no
    clamp), "v0-transposed" (dcls 0.0.2-0.0.5) or "gauss" (σ as ``dwconv.SIG``)."""

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


def push_positions(model: ReleaseConvNeXtDcls, count: int, high: float, low: float) -> int:
    """Move ``count`` position values of every stage past the kernel border (half to ``high``, half to ``low``),
    as EMA positions of the fork can sit (EMA updated before the clamp); returns how many values moved."""
    moved = 0
    with torch.no_grad():
        for stage in model.stages:
            flat = stage[0].dwconv.P.view(-1)  # the stage's one P tensor, shared by its blocks
            idx = torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(moved))[:count]
            flat[idx[: count // 2]] = high
            flat[idx[count // 2 :]] = low
            moved += count
    return moved


def release_file(model: nn.Module, path, **extra) -> None:
    """Save as the releases are saved: ``{"model": state_dict}`` (plus ``extra`` entries)."""
    torch.save({"model": model.state_dict(), **extra}, path)


__all__ = ["SIZES", "Cuda2022Dcls2d", "ReleaseConvNeXtDcls", "TransposedDcls2d", "push_positions", "release_file"]
