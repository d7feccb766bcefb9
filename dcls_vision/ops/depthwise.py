"""Depthwise 2-D convolution: CPU backward algorithms chosen by measurement, GPU algorithms timed per shape.

On CUDA (float32, bfloat16, float16) :func:`depthwise_conv2d` runs the fastest of :func:`candidates` --
cuDNN on an NCHW or channels_last copy, the Triton kernels of :mod:`.triton_depthwise`, the custom paths
below (FFT at stride 1) -- timed on the first call per (shape, dtype, layout, gradients) and cached in
memory and on disk per GPU model (:mod:`.algo_select`); ``DCLS_DEPTHWISE_ALGO`` forces one algorithm.

PyTorch's CPU depthwise convolution is fast forward (in channels_last) but its weight gradient
(``aten.convolution_backward``) collapses for large kernels: 0.06-1.1 s for one ConvNeXt-T layer with a
17x17 or 23x23 kernel at batch 8 on an idle 2-core machine (5-17 s under load), against 0.01-0.06 s for
the algorithms below.
On CPUs without native bfloat16 (AVX2) a bfloat16 depthwise convolution is also 40-100x slower than a
float32 one. :func:`depthwise_conv2d` keeps the semantics of
``F.conv2d(x, weight, bias, stride, padding, 1, groups=C)`` and, on CPU, routes kernels larger than 7x7
(and every reduced-precision call) through a custom autograd function whose algorithms are picked per
shape by :func:`choose_algorithms`:

* forward: ``"aten"`` (``F.conv2d`` in channels_last) or ``"fft"`` (``torch.fft.rfft2``);
* grad_input: ``"aten"`` (``convolution_backward`` in channels_last), ``"flip"`` (a convolution of the
  zero-inserted output gradient with the flipped kernel) or ``"fft"``;
* grad_weight: ``"aten"``, ``"batch_groups"`` (a grouped convolution of the input with the batch moved
  into channels, ``(1, N*C, H, W)``, and the output gradient as kernel; stride becomes dilation),
  ``"channel_groups"`` (the transpose: groups=C with the batch as each group's N input channels) or
  ``"fft"``.

``python tools/bench_depthwise.py --algorithms`` reprints the measurements behind the thresholds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import algo_select

__all__ = [
    "FORWARD_ALGORITHMS",
    "GRAD_INPUT_ALGORITHMS",
    "GRAD_WEIGHT_ALGORITHMS",
    "candidates",
    "choose_algorithms",
    "depthwise_conv2d",
    "run_algorithm",
    "selection_key",
    "timed_step",
]

Impl = Literal["auto", "custom", "aten"]
Algorithms = tuple[str, str, str]

FORWARD_ALGORITHMS = ("aten", "fft")
GRAD_INPUT_ALGORITHMS = ("aten", "flip", "fft")
GRAD_WEIGHT_ALGORITHMS = ("aten", "batch_groups", "channel_groups", "fft")

# Measured with tools/bench_depthwise.py --algorithms (batch 8, channels_last, 2 threads, idle machine).
# Up to 7x7, float32 stays on plain F.conv2d: there aten's weight gradient and batch_groups are mixed
# (96@56x56: 29 vs 35 ms; 768@7x7: 4.7 vs 2.8 ms) and 7x7 is the ConvNeXt baseline. From 9x9 up
# batch_groups wins everywhere (9x9: 17 vs 46 ms at 96@56x56, 4 vs 23 ms at 768@7x7; 23x23: 45 ms vs 1 s).
_MAX_ATEN_TAPS = 7 * 7
# The FFT's cost depends on the map only, the direct one on map * kernel: the ratio of direct
# multiply-adds to L*log2(L) (L = FFT points) decides. The backward (grad_input and grad_weight sharing
# one FFT of grad_output) pays from ~18 (96@56x56 17x17, ratio 18.4: 49 vs 65 ms for aten + batch_groups;
# 384@14x14 23x23, ratio 17.9: 39 vs 27 ms); the forward only from ~22 (96@56x56 23x23, 25.9: 39 vs 62 ms;
# 17x17: 30 vs 33 ms; 384@14x14 31x31, 18.4: 30 vs 14 ms).
_FFT_RATIO_FORWARD = 22.0
_FFT_RATIO_BACKWARD = 18.0
_REDUCED_DTYPES = (torch.bfloat16, torch.float16)


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Normalise an int or a length-2 sequence to a tuple of two ints."""
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _fft_size(n: int) -> int:
    """Smallest integer >= n whose only prime factors are 2, 3 and 5 (fast sizes for MKL/pocketfft)."""
    m = max(int(n), 1)
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def _fft_shape(hw: tuple[int, int], kernel: tuple[int, int], padding: tuple[int, int]) -> tuple[int, int]:
    """FFT lengths: L >= H + p (and >= Ho, k) suffices, see :func:`_fft_kernel_spectrum`."""
    (h, w), (kh, kw), (ph, pw) = hw, kernel, padding
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    return (_fft_size(max(h + ph, ho, kh)), _fft_size(max(w + pw, wo, kw)))


def _fft_ratio(x_shape: torch.Size, kernel: tuple[int, int], padding: tuple[int, int]) -> float:
    """Direct-convolution multiply-adds per FFT "unit" (L log2 L); large means the FFT pays."""
    h, w = x_shape[-2:]
    kh, kw = kernel
    ph, pw = padding
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    if ho <= 0 or wo <= 0:
        return 0.0
    lh, lw = _fft_shape((h, w), kernel, padding)
    size = lh * lw
    return (ho * wo * kh * kw) / (size * math.log2(max(size, 2)))


def choose_algorithms(
    x_shape: torch.Size | tuple[int, ...],
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
) -> Algorithms:
    """Pick (forward, grad_input, grad_weight) algorithms for a CPU depthwise conv, from measurements.

    Measured on ConvNeXt-T shapes (batch 8, channels_last): aten's grad_input beats the flipped-kernel
    convolution (equal at stride 1, 4-10x at stride 2, where zero insertion wastes work), so it is kept;
    ``batch_groups`` beats ``channel_groups`` everywhere (2-10x) and aten's grad_weight from 9x9 up, also
    at stride 2 with the stride as dilation (zero-inserting grad_output instead is 1.5-2.5x slower); the
    FFT wins only for large maps with large kernels (see ``_FFT_RATIO_*``).
    """
    kh, kw = kernel
    gw = "aten" if kh * kw <= _MAX_ATEN_TAPS else "batch_groups"
    if tuple(stride) != (1, 1):
        return ("aten", "aten", gw)
    ratio = _fft_ratio(torch.Size(x_shape), kernel, padding)
    fwd = "fft" if ratio >= _FFT_RATIO_FORWARD else "aten"
    if ratio >= _FFT_RATIO_BACKWARD:
        return (fwd, "fft", "fft")  # one FFT of grad_output shared by both gradients
    return (fwd, "aten", gw)


# ----------------------------------------------------------------------------------------------------
# Algorithms: inputs already in the computation dtype; outputs in it too (memory format handled here).
# ----------------------------------------------------------------------------------------------------


def _channels_last(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _memory_format(x: Tensor) -> torch.memory_format:
    """The format F.conv2d's output would have: channels_last for a channels_last (not NCHW) input."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays; everything else computes in float32 (bf16 depthwise is 40-100x slower on AVX2)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _forward_aten(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """``F.conv2d`` on a channels_last copy (6-30x faster than NCHW on CPU for kernels > 7x7)."""
    return F.conv2d(_channels_last(x), weight, bias, stride, padding, 1, x.shape[1])


def _fft_kernel_spectrum(weight: Tensor, size: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """Spectrum of the kernel placed at circular offset -p: ``rfft2(wz)`` with ``wz[(u-p) % L] = w[u]``.

    With the unpadded map at offset 0 in a zero buffer of length L >= H + p (and >= Ho, k), every index
    a window touches outside the map (``[-p, 0)`` wraps to ``[L-p, L)``, and ``[H, H+p)``) lands on a
    zero, so the circular correlation equals the zero-padded one and no padding copy is needed.
    """
    kh, kw = weight.shape[-2:]
    wz = weight.new_zeros((weight.shape[0], size[0], size[1]))
    wz[:, :kh, :kw] = weight[:, 0]
    wz = torch.roll(wz, shifts=(-padding[0], -padding[1]), dims=(-2, -1))
    return torch.fft.rfft2(wz)


def _forward_fft(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
    """Stride-1 correlation as a circular one: ``irfft2(X * conj(W))``."""
    h, w = x.shape[-2:]
    kh, kw = weight.shape[-2:]
    ph, pw = padding
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    size = _fft_shape((h, w), (kh, kw), padding)
    wf = _fft_kernel_spectrum(weight, size, padding)
    # rfft2 of a channels_last tensor is ~3x slower than an NCHW copy followed by rfft2.
    xf = torch.fft.rfft2(x.contiguous(), s=size) * wf.conj()
    if bias is not None:  # a constant is the DC bin alone: saves a pass over the output
        xf[:, :, 0, 0] += bias * (size[0] * size[1])
    return torch.fft.irfft2(xf, s=size)[..., :ho, :wo]


def _grads_aten(
    go: Tensor,
    x: Tensor,
    weight: Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    need_input: bool,
    need_weight: bool,
) -> tuple[Tensor | None, Tensor | None]:
    """aten's input and/or weight gradient in one call, run channels_last (NCHW is ~10x slower).

    The weight gradient is fine up to 7x7 but takes 0.06-1.1 s per ConvNeXt-T layer from 17x17 on CPU.
    """
    grads = torch.ops.aten.convolution_backward(
        _channels_last(go),
        _channels_last(x),
        weight,
        None,
        list(stride),
        list(padding),
        [1, 1],
        False,
        [0, 0],
        x.shape[1],
        [need_input, need_weight, False],
    )
    return grads[0], grads[1]


def _grad_input_flip(
    go: Tensor, x_shape: torch.Size, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """Full convolution of the (zero-inserted) output gradient with the flipped kernel, channels_last."""
    n, c, h, w = x_shape
    kh, kw = weight.shape[-2:]
    sh, sw = stride
    ph, pw = padding
    ho, wo = go.shape[-2:]
    if (sh, sw) != (1, 1):
        dil = go.new_zeros((n, c, (ho - 1) * sh + 1, (wo - 1) * sw + 1))
        dil[:, :, ::sh, ::sw] = go
        go = dil
    gh, gw = go.shape[-2:]
    # grad_input[m] is index m + p of the full convolution; negative pads crop.
    top, left = kh - 1 - ph, kw - 1 - pw
    bottom, right = h + kh - 1 - top - gh, w + kw - 1 - left - gw
    go = F.pad(_channels_last(go), (left, right, top, bottom))
    return F.conv2d(_channels_last(go), weight.flip(-1, -2), None, 1, 0, 1, c)


def _padded_input(
    x: Tensor, kernel: tuple[int, int], out_hw: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """NCHW zero buffer of exactly the padded extent the windows touch, input copied in (one pass)."""
    n, c, h, w = x.shape
    need_h = (out_hw[0] - 1) * stride[0] + kernel[0]
    need_w = (out_hw[1] - 1) * stride[1] + kernel[1]
    ph, pw = padding
    hh, ww = min(h, need_h - ph), min(w, need_w - pw)
    xp = x.new_zeros((n, c, need_h, need_w))
    if hh > 0 and ww > 0:
        xp[:, :, ph : ph + hh, pw : pw + ww] = x[:, :, :hh, :ww]
    return xp


def _grad_weight_batch_groups(
    go: Tensor, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """Grouped conv of the input with the batch moved into channels, the output gradient as kernel.

    ``(1, N*C, H', W') * (N*C, 1, Ho, Wo)`` with dilation = stride gives ``(1, N*C, kh, kw)``; the sum
    over the batch is a small reduction. NCHW is 2-5x faster than channels_last for this convolution.
    """
    n, c = x.shape[:2]
    ho, wo = go.shape[-2:]
    xp = _padded_input(x, kernel, (ho, wo), stride, padding)
    xi = xp.view(1, n * c, xp.shape[-2], xp.shape[-1])
    g = go.contiguous().view(n * c, 1, ho, wo)
    r = F.conv2d(xi, g, None, 1, 0, stride, n * c)
    return r.view(n, c, kernel[0], kernel[1]).sum(0).unsqueeze(1)


def _grad_weight_channel_groups(
    go: Tensor, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """Transpose of ``batch_groups``: groups=C, the batch as each group's N input channels."""
    n, c = x.shape[:2]
    ho, wo = go.shape[-2:]
    xp = _padded_input(x, kernel, (ho, wo), stride, padding)
    xi = xp.transpose(0, 1).reshape(1, c * n, xp.shape[-2], xp.shape[-1])
    g = go.transpose(0, 1).contiguous()
    r = F.conv2d(xi, g, None, 1, 0, stride, c)
    return r.view(c, 1, kernel[0], kernel[1])


def _grad_fft(
    go: Tensor, x: Tensor, weight: Tensor, padding: tuple[int, int], need_input: bool, need_weight: bool
) -> tuple[Tensor | None, Tensor | None]:
    """Stride-1 input/weight gradients sharing one FFT of the output gradient.

    grad_input is the circular convolution of grad_output with the shifted kernel; grad_weight the
    circular correlation of the input with grad_output, summed over the batch in the frequency domain
    and rolled back by p (see :func:`_fft_kernel_spectrum` for why no wrap-around occurs).
    """
    h, w = x.shape[-2:]
    kh, kw = weight.shape[-2:]
    ph, pw = padding
    size = _fft_shape((h, w), (kh, kw), padding)
    gf = torch.fft.rfft2(go.contiguous(), s=size)  # NCHW: see _forward_fft
    gi = gw = None
    if need_weight:
        xf = torch.fft.rfft2(x.contiguous(), s=size)
        corr = torch.fft.irfft2((xf * gf.conj()).sum(0), s=size)
        gw = torch.roll(corr, shifts=(ph, pw), dims=(-2, -1))[:, :kh, :kw].unsqueeze(1)
    if need_input:
        gi = torch.fft.irfft2(gf * _fft_kernel_spectrum(weight, size, padding), s=size)[..., :h, :w]
    return gi, gw


# ----------------------------------------------------------------------------------------------------
# Autograd function and public entry point.
# ----------------------------------------------------------------------------------------------------


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Disable autocast around our own computations (they pick their dtype explicitly)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int], algorithm: str
) -> Tensor:
    """Forward in the computation dtype, returned in x's dtype and F.conv2d's memory format."""
    cd = _compute_dtype(x.dtype)
    xc, wc = x.to(cd), weight.to(cd)
    bc = None if bias is None else bias.to(cd)
    with _autocast_off(x.device.type):
        if algorithm == "fft" and tuple(stride) == (1, 1):
            out = _forward_fft(xc, wc, bc, padding)
        else:
            out = _forward_aten(xc, wc, bc, stride, padding)
    return out.to(x.dtype).contiguous(memory_format=_memory_format(x))


class _DepthwiseConv2dFunction(torch.autograd.Function):
    """Depthwise conv whose forward/backward algorithms are given explicitly (see module docstring).

    The backward is written with differentiable ops, so double backward works too (slowly).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
        algorithms: Algorithms,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        ctx.padding = padding
        ctx.algorithms = algorithms
        ctx.bias_dtype = None if bias is None else bias.dtype
        return _forward(x, weight, bias, stride, padding, algorithms[0])

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding = ctx.stride, ctx.padding
        _, gi_algo, gw_algo = ctx.algorithms
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        kernel = (weight.shape[-2], weight.shape[-1])
        if tuple(stride) != (1, 1):  # the FFT paths are stride-1 only
            gi_algo = "aten" if gi_algo == "fft" else gi_algo
            gw_algo = "batch_groups" if gw_algo == "fft" else gw_algo
        cd = _compute_dtype(x.dtype)
        go, xc, wc = grad_out.to(cd), x.to(cd), weight.to(cd)
        gi = gw = gb = None
        with _autocast_off(x.device.type):
            fft_x, fft_w = need_x and gi_algo == "fft", need_w and gw_algo == "fft"
            if fft_x or fft_w:
                gi, gw = _grad_fft(go, xc, wc, padding, fft_x, fft_w)
            aten_x = need_x and gi is None and gi_algo != "flip"
            aten_w = need_w and gw is None and gw_algo not in ("batch_groups", "channel_groups")
            if aten_x or aten_w:  # one aten call when both gradients come from it
                gi_aten, gw_aten = _grads_aten(go, xc, wc, stride, padding, aten_x, aten_w)
                gi = gi_aten if aten_x else gi
                gw = gw_aten if aten_w else gw
            if need_x and gi is None:
                gi = _grad_input_flip(go, x.shape, wc, stride, padding)
            if need_w and gw is None:
                if gw_algo == "batch_groups":
                    gw = _grad_weight_batch_groups(go, xc, kernel, stride, padding)
                else:
                    gw = _grad_weight_channel_groups(go, xc, kernel, stride, padding)
            if need_b and ctx.bias_dtype is not None:
                gb = go.sum((0, 2, 3)).to(ctx.bias_dtype)
        if gi is not None:
            gi = gi.to(x.dtype).contiguous(memory_format=_memory_format(x))
        if gw is not None:
            gw = gw.to(weight.dtype)
        return gi, gw, gb, None, None, None


def _autocast_cast(device_type: str, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Autocast's rule for lower-precision ops (cast floating tensors except float64), applied by hand."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )


# ----------------------------------------------------------------------------------------------------
# Measured dispatch (CUDA, or any device when DCLS_DEPTHWISE_ALGO forces an algorithm).
# ----------------------------------------------------------------------------------------------------


def _needs_grad(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[bool, bool, bool]:
    if not torch.is_grad_enabled():
        return (False, False, False)
    return (x.requires_grad, weight.requires_grad, bias is not None and bias.requires_grad)


def _triton_usable(device: torch.device) -> bool:
    """Triton runs CUDA tensors, or CPU tensors under its interpreter (TRITON_INTERPRET=1, set before import)."""
    if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        return False
    return importlib.util.find_spec("triton") is not None


def candidates(device: torch.device, stride: tuple[int, int]) -> list[str]:
    """Algorithms timed for a call: cuDNN/aten in both layouts, Triton where it runs, the custom paths."""
    names = ["aten_nchw", "aten_cl"]
    if _triton_usable(device):
        names.append("triton")
    names.append("custom")
    if tuple(stride) == (1, 1):
        names.append("fft")
    return names


def run_algorithm(
    name: str, x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """One algorithm of :data:`algo_select.ALGORITHMS` on operands of one dtype; F.conv2d's output format."""
    fmt = _memory_format(x)
    if name in ("aten_nchw", "aten_cl"):
        layout = torch.channels_last if name == "aten_cl" else torch.contiguous_format
        out = F.conv2d(x.contiguous(memory_format=layout), weight, bias, stride, padding, 1, x.shape[1])
        return out.contiguous(memory_format=fmt)
    if name == "triton":
        if not _triton_usable(x.device):
            raise algo_select.AlgorithmError(
                f"algorithm 'triton' needs a CUDA tensor (or TRITON_INTERPRET=1), got device {x.device}"
            )
        from .triton_depthwise import triton_depthwise_conv2d

        return triton_depthwise_conv2d(x, weight, bias, stride, padding)
    if name == "fft":
        return _DepthwiseConv2dFunction.apply(x, weight, bias, stride, padding, ("fft", "fft", "fft"))
    if name == "custom":
        kernel = (weight.shape[-2], weight.shape[-1])
        algorithms = choose_algorithms(x.shape, kernel, stride, padding)
        return _DepthwiseConv2dFunction.apply(x, weight, bias, stride, padding, algorithms)
    raise algo_select.AlgorithmError(f"algorithm {name!r} is invalid; allowed: {', '.join(algo_select.ALGORITHMS)}")


def selection_key(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    need: tuple[bool, bool, bool],
) -> str:
    """Cache key: shape, dtype, layout, stride, padding, bias and which gradients are computed."""
    layout = "cl" if _memory_format(x) == torch.channels_last else "nchw"
    grads = "".join(t for t, n in zip("xwb", need) if n) or "none"
    shape = "x".join(map(str, x.shape))
    kernel = "x".join(map(str, weight.shape[-2:]))
    return (
        f"{str(x.dtype).removeprefix('torch.')}|{layout}|{shape}|k{kernel}|s{stride[0]}x{stride[1]}"
        f"|p{padding[0]}x{padding[1]}|bias{int(bias is not None)}|grad_{grads}"
    )


def timed_step(
    name: str,
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    need: tuple[bool, bool, bool],
) -> Callable[[], None]:
    """What the timer runs for ``name``: the forward, plus the needed gradients when training."""
    xs, ws = x.detach().requires_grad_(need[0]), weight.detach().requires_grad_(need[1])
    bs = None if bias is None else bias.detach().requires_grad_(need[2])
    if not any(need):

        def forward() -> None:
            with torch.no_grad():
                run_algorithm(name, xs, ws, bs, stride, padding)

        return forward
    leaves = [t for t, n in zip((xs, ws, bs), need) if n]
    ho = (x.shape[2] + 2 * padding[0] - weight.shape[2]) // stride[0] + 1
    wo = (x.shape[3] + 2 * padding[1] - weight.shape[3]) // stride[1] + 1
    go = torch.randn((x.shape[0], x.shape[1], ho, wo), device=x.device, dtype=x.dtype)
    go = go.contiguous(memory_format=_memory_format(x))

    def forward_backward() -> None:
        with torch.enable_grad():
            torch.autograd.grad(run_algorithm(name, xs, ws, bs, stride, padding), leaves, go)

    return forward_backward


def _dispatch(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    forced: str | None,
    selector: algo_select.AlgoSelector | None = None,
) -> Tensor:
    """Run the forced algorithm, else the measured fastest for this key (timed on its first call)."""
    device = x.device
    if forced is not None:
        name = forced
    elif torch.compiler.is_compiling() or (device.type == "cuda" and torch.cuda.is_current_stream_capturing()):
        return F.conv2d(x, weight, bias, stride, padding, 1, x.shape[1])  # no timing while tracing/capturing
    else:
        selector = selector if selector is not None else algo_select.selector_for(device)
        need = _needs_grad(x, weight, bias)
        key = selection_key(x, weight, bias, stride, padding, need)
        with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
            name = selector.choose(
                key, candidates(device, stride), lambda n: timed_step(n, x, weight, bias, stride, padding, need)
            )
    return run_algorithm(name, x, weight, bias, stride, padding)


def depthwise_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    *,
    impl: Impl = "auto",
    algorithms: Algorithms | None = None,
) -> Tensor:
    """Same result as ``F.conv2d(x, weight, bias, stride, padding, 1, groups=x.shape[1])``, faster.

    ``impl="auto"``: on CUDA (float32/bf16/fp16) the fastest of :func:`candidates`, measured on the first
    call per shape and cached (:mod:`.algo_select`); ``DCLS_DEPTHWISE_ALGO`` forces one on any device.
    On CPU float64 and float32 kernels up to 7x7 go to ``F.conv2d``; other CPU calls (kernels from 8x8, or
    bfloat16/float16, e.g. under autocast) go through the custom autograd function when a gradient is
    needed, else through its forward alone. Reduced precision computes in float32 there and returns the
    reduced dtype, like ``F.conv2d`` under autocast. ``impl="custom"``/``"aten"`` force a path;
    ``algorithms`` forces the custom path's ``(forward, grad_input, grad_weight)`` algorithms (see
    ``*_ALGORITHMS``) instead of :func:`choose_algorithms`.
    """
    if impl not in ("auto", "custom", "aten"):
        raise ValueError(f"impl must be 'auto', 'custom' or 'aten', got {impl!r}")
    stride = _pair(stride)
    padding = _pair(padding)
    if x.dim() == 3:
        return depthwise_conv2d(x.unsqueeze(0), weight, bias, stride, padding, impl=impl, algorithms=algorithms)[0]
    groups = x.shape[1] if x.dim() == 4 else 1
    supported = x.dim() == 4 and weight.dim() == 4 and weight.shape[0] == groups and weight.shape[1] == 1
    if impl == "aten" or not supported:
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)

    device_type = x.device.type
    x_, weight_, bias_ = _autocast_cast(device_type, x, weight, bias)
    if x_.dtype != weight_.dtype or (bias_ is not None and bias_.dtype != x_.dtype) or not x_.is_floating_point():
        return F.conv2d(x, weight, bias, stride, padding, 1, groups)  # aten raises its own error

    kernel = (weight.shape[-2], weight.shape[-1])
    if algorithms is None:
        if impl == "auto":
            forced = algo_select.forced_algorithm()
            if x_.dtype != torch.float64 and (forced is not None or device_type == "cuda"):
                with _autocast_off(device_type):
                    return _dispatch(x_, weight_, bias_, stride, padding, forced)
            if device_type != "cpu" or x_.dtype == torch.float64:
                return F.conv2d(x, weight, bias, stride, padding, 1, groups)
            if x_.dtype not in _REDUCED_DTYPES and kernel[0] * kernel[1] <= _MAX_ATEN_TAPS:
                return F.conv2d(x, weight, bias, stride, padding, 1, groups)
            if not any(_needs_grad(x_, weight_, bias_)):
                return _forward(
                    x_, weight_, bias_, stride, padding, choose_algorithms(x.shape, kernel, stride, padding)[0]
                )
        algorithms = choose_algorithms(x.shape, kernel, stride, padding)
    else:
        algorithms = tuple(algorithms)
        allowed = (FORWARD_ALGORITHMS, GRAD_INPUT_ALGORITHMS, GRAD_WEIGHT_ALGORITHMS)
        if len(algorithms) != 3 or any(a not in ok for a, ok in zip(algorithms, allowed)):
            raise ValueError(f"invalid algorithms {algorithms!r}; choose from {allowed}")
    with _autocast_off(device_type):
        return _DepthwiseConv2dFunction.apply(x_, weight_, bias_, stride, padding, algorithms)
