"""DCLS layers: convolutions whose kernel elements sit at learnable, real-valued positions.

A layer keeps ``kernel_count`` weights per (out, in/groups) pair, their positions (and, for
triangle/gauss, widths σ) along the learned axes; the dense kernel is built by interpolation
(:mod:`dcls_vision.ops.interpolation`) and fed to an ordinary convolution. This module holds the layer
(set-up, kernel construction and cache, forward, export to a plain convolution) and its variants;
argument checks live in :mod:`.dcls_args`, whole-model helpers in :mod:`.dcls_model`.

Conventions (one for every variant): ``positions[m]`` is an offset from the kernel centre
``floor(s/2)`` along the m-th learned spatial axis of the *input* (axis 0 = H for 2-D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dcls_args import check_counts, check_learned_axes, int_tuple, positive, resolve_padding
from .depthwise import depthwise_conv2d
from .interpolation import SIGMA_INIT, check_interpolation, construct_kernel, construct_rounded_kernel

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_MODULE = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: Tensor) -> Tensor:
    """The tensor's bits as integers, so equality is exact (NaN equals itself, -0.0 differs from 0.0)."""
    return t.view(_INT_OF_SIZE[t.element_size()]) if t.element_size() in _INT_OF_SIZE else t


class _Pad(nn.Module):
    """F.pad as a module, for exported convolutions with asymmetric (even-kernel) padding."""

    def __init__(self, pad: tuple[int, ...], mode: str) -> None:
        super().__init__()
        self.pad, self.mode = pad, mode

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pad, mode=self.mode)

    def extra_repr(self) -> str:
        return f"pad={self.pad}, mode={self.mode!r}"


class _DclsNd(nn.Module):
    """Shared implementation of every DCLS variant (``n_dims`` spatial dims, ``n_learned`` learned)."""

    n_dims: int
    n_learned: int

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        dilated_kernel_size: int | Sequence[int],
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str | None = None,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        interpolation: str = "gauss",
        *,
        dense_kernel_size: int | Sequence[int] = (),
        learned_axes: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        n, m = self.n_dims, self.n_learned
        check_counts(in_channels, out_channels, kernel_count, groups, padding_mode)
        self.interpolation = check_interpolation(interpolation)
        self.dilated_kernel_size = positive(
            int_tuple(dilated_kernel_size, m, "dilated_kernel_size"), "dilated_kernel_size", dilated_kernel_size
        )
        dense = () if n == m else int_tuple(dense_kernel_size, n - m, "dense_kernel_size")
        self.dense_kernel_size = positive(dense, "dense_kernel_size", dense_kernel_size)
        self.learned_axes = check_learned_axes(learned_axes, n, m)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_count, self.groups, self.padding_mode = kernel_count, groups, padding_mode
        self.stride = positive(int_tuple(stride, n, "stride"), "stride", stride)
        self.kernel_size = self._kernel_size()
        self.padding = resolve_padding(padding, self.kernel_size)

        factory = {"device": device, "dtype": dtype}
        shape = (out_channels, in_channels // groups, *self.dense_kernel_size, kernel_count)
        self.weight = nn.Parameter(torch.empty(shape, **factory))
        self.positions = nn.Parameter(torch.empty((m, *shape), **factory))
        if interpolation == "bilinear":
            self.register_parameter("sigma", None)
        else:
            self.sigma = nn.Parameter(torch.empty((m, *shape), **factory))
        self.bias = nn.Parameter(torch.empty(out_channels, **factory)) if bias else None
        self._kernel_cache: tuple[tuple, tuple[Tensor, ...], Tensor] | None = None
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up
    def _kernel_size(self) -> tuple[int, ...]:
        learned, dense = iter(self.dilated_kernel_size), iter(self.dense_kernel_size)
        return tuple(next(learned) if a in self.learned_axes else next(dense) for a in range(self.n_dims))

    def reset_parameters(self) -> None:
        """Reference initialisation: kaiming-uniform weights, positions ~ N(0, 0.5) clamped, σ constant."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound)
        with torch.no_grad():
            self.positions.normal_(0.0, 0.5)
            self.clamp_()
            if self.sigma is not None:
                self.sigma.fill_(SIGMA_INIT[self.interpolation])

    # -------------------------------------------------------- trainer interface
    def position_limits(self) -> list[tuple[int, int]]:
        """Per learned axis, the offsets that keep an element inside the dilated kernel."""
        return [(-(s // 2), s - 1 - s // 2) for s in self.dilated_kernel_size]

    @torch.no_grad()
    def clamp_(self) -> _DclsNd:
        """Clamp positions into the dilated kernel (call after every optimizer step)."""
        for m, (lo, hi) in enumerate(self.position_limits()):
            self.positions[m].clamp_(lo, hi)
        return self

    def dcls_parameters(self) -> dict[str, list[nn.Parameter]]:
        """The parameters a trainer treats specially (higher LR, no weight decay)."""
        return {"positions": [self.positions], "sigma": [] if self.sigma is None else [self.sigma]}

    # -------------------------------------------------------------- the kernel
    def _params(self) -> tuple[Tensor, ...]:
        return tuple(p for p in (self.weight, self.positions, self.sigma) if p is not None)

    def build_kernel(self) -> Tensor:
        """Construct the dense kernel (O, I/g, *kernel_size) with autograd."""
        weight, positions, sigma = self.weight, self.positions, self.sigma
        if weight.dtype in (torch.float16, torch.bfloat16):  # interpolate in fp32; tails underflow in half
            weight, positions = weight.float(), positions.float()
            sigma = None if sigma is None else sigma.float()
        kernel = construct_kernel(
            weight, positions, sigma, self.dilated_kernel_size, self.interpolation, self.learned_axes
        )
        return kernel.to(self.weight.dtype)

    def dense_kernel(self) -> Tensor:
        """The kernel for this forward pass: rebuilt while training, cached otherwise.

        The cache holds a copy of the parameters it was built from and is reused only while every
        DCLS parameter is bit-for-bit equal to that copy (same dtype, device and shape). Version
        counters and data pointers are not enough: fused optimizer steps, writes through ``.data`` and
        ``vector_to_parameters`` on a reused buffer change values without them. The comparison reads
        C·K·(1+2M) numbers, far fewer than the C·Πs of the kernel it saves building. When gradients
        w.r.t. the DCLS parameters are needed, the cache is never used.
        """
        params = self._params()
        if (
            self.training
            or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and any(p.requires_grad for p in params))
        ):
            return self.build_kernel()
        with torch.no_grad():
            if not self._cache_matches(params):
                kernel = self.build_kernel()
                self._kernel_cache = (self._cache_key(params), tuple(p.detach().clone() for p in params), kernel)
            return self._kernel_cache[2]

    @staticmethod
    def _cache_key(params: tuple[Tensor, ...]) -> tuple:
        return (torch.is_inference_mode_enabled(), *((p.dtype, p.device, p.shape) for p in params))

    def _cache_matches(self, params: tuple[Tensor, ...]) -> bool:
        """Whether the cached kernel was built from parameters bit-for-bit equal to ``params`` (NaN included)."""
        if self._kernel_cache is None:
            return False
        key, saved, _ = self._kernel_cache
        return key == self._cache_key(params) and all(
            torch.equal(_bits(p), _bits(s)) for p, s in zip(params, saved, strict=True)
        )

    def train(self, mode: bool = True) -> _DclsNd:
        self._kernel_cache = None
        return super().train(mode)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in (self.n_dims + 1, self.n_dims + 2):
            raise ValueError(
                f"{type(self).__name__} expects input of rank {self.n_dims + 2} (N, C, ...) "
                f"or {self.n_dims + 1} (C, ...), got shape {tuple(x.shape)}"
            )
        channels = x.shape[-self.n_dims - 1]
        if channels != self.in_channels:
            raise ValueError(
                f"input has {channels} channels (shape {tuple(x.shape)}), {type(self).__name__} expects "
                f"in_channels={self.in_channels}"
            )
        if not (x.is_floating_point() or x.is_complex()):
            raise TypeError(f"input dtype={x.dtype} is not supported; allowed: floating-point tensors")

    def _symmetric_padding(self) -> tuple[int, ...] | None:
        if self.padding_mode == "zeros" and all(lo == hi for lo, hi in self.padding):
            return tuple(lo for lo, _ in self.padding)
        return None

    def _pad_arg(self) -> tuple[int, ...]:
        """Padding in F.pad order (last axis first)."""
        return tuple(v for lo, hi in reversed(self.padding) for v in (lo, hi))

    def _conv(self, x: Tensor, kernel: Tensor) -> Tensor:
        padding = self._symmetric_padding()
        if padding is None:
            x = F.pad(x, self._pad_arg(), mode="constant" if self.padding_mode == "zeros" else self.padding_mode)
            padding = (0,) * self.n_dims
        if self.n_dims == 2 and self.groups == self.in_channels == self.out_channels:
            # PyTorch's CPU depthwise backward collapses for large kernels; this routes around it
            return depthwise_conv2d(x, kernel, self.bias, self.stride, padding)
        return _CONV[self.n_dims](x, kernel, self.bias, self.stride, padding, 1, self.groups)

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        return self._conv(x, self.dense_kernel())

    # ------------------------------------------------------------------- export
    @torch.no_grad()
    def rounded_kernel(self) -> Tensor:
        """Sparse kernel: each weight at its rounded position, no spread (SNN-delay inference)."""
        return construct_rounded_kernel(self.weight, self.positions, self.dilated_kernel_size, self.learned_axes)

    @torch.no_grad()
    def to_conv(self, rounded: bool = False) -> nn.Module:
        """An equivalent plain ``nn.ConvNd`` (``nn.Sequential(pad, conv)`` for even kernels).

        ``rounded=True`` snaps positions to integers (the sparse kernel of the SNN-delay setting).
        """
        kernel = self.rounded_kernel() if rounded else self.build_kernel()
        padding = self._symmetric_padding()
        conv_padding_mode = "zeros"
        if padding is None and all(lo == hi for lo, hi in self.padding):
            padding, conv_padding_mode = tuple(lo for lo, _ in self.padding), self.padding_mode
        conv = _CONV_MODULE[self.n_dims](
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            padding if padding is not None else 0,
            1,
            self.groups,
            self.bias is not None,
            conv_padding_mode,
            device=kernel.device,
            dtype=kernel.dtype,
        )
        conv.weight.copy_(kernel)
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        if padding is not None:
            return conv
        mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
        return nn.Sequential(_Pad(self._pad_arg(), mode), conv)

    def extra_repr(self) -> str:
        s = (
            f"{self.in_channels}, {self.out_channels}, kernel_count={self.kernel_count}, "
            f"dilated_kernel_size={self.dilated_kernel_size}"
        )
        if self.dense_kernel_size:
            s += f", dense_kernel_size={self.dense_kernel_size}, learned_axes={self.learned_axes}"
        s += f", stride={self.stride}, padding={self.padding}, interpolation={self.interpolation!r}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


class Dcls1d(_DclsNd):
    """1-D DCLS: positions learned along the single spatial axis (e.g. SNN synaptic delays)."""

    n_dims, n_learned = 1, 1


class Dcls2d(_DclsNd):
    """2-D DCLS, the drop-in for ``nn.Conv2d`` (positions[0] moves along H, positions[1] along W)."""

    n_dims, n_learned = 2, 2


class Dcls3d(_DclsNd):
    """3-D DCLS: positions learned along D, H and W."""

    n_dims, n_learned = 3, 3


class _DclsNMd(_DclsNd):
    """N-d kernel learned along M axes (``learned_axes``, default the first M), dense along the rest."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_count: int,
        dilated_kernel_size: int | Sequence[int],
        dense_kernel_size: int | Sequence[int] = 1,
        stride: int | Sequence[int] = 1,
        padding: int | Sequence[int] | str | None = None,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        interpolation: str = "gauss",
        *,
        learned_axes: Sequence[int] | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_count,
            dilated_kernel_size,
            stride,
            padding,
            groups,
            bias,
            padding_mode,
            interpolation,
            dense_kernel_size=dense_kernel_size,
            learned_axes=learned_axes,
            device=device,
            dtype=dtype,
        )


class Dcls2_1d(_DclsNMd):
    """2-D kernel, positions learned along one axis (default H), dense along the other."""

    n_dims, n_learned = 2, 1


class Dcls3_1d(_DclsNMd):
    """3-D kernel, positions learned along one axis (default D, e.g. time), dense along the others."""

    n_dims, n_learned = 3, 1


class Dcls3_2d(_DclsNMd):
    """3-D kernel, positions learned along two axes (default D, H), dense along the third."""

    n_dims, n_learned = 3, 2


DclsLayer = _DclsNd
