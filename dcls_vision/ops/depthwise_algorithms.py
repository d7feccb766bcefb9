"""The custom path's depthwise-convolution algorithms and the measured rule that picks them per shape.

PyTorch's CPU depthwise convolution is fast forward (in channels_last) but its weight gradient
(``aten.convolution_backward``) collapses for large kernels: 0.06-1.1 s for one ConvNeXt-T layer with a
17x17 or 23x23 kernel at batch 8 on an idle 2-core machine (5-17 s under load), against 0.01-0.06 s for
the algorithms below. On CPUs without native bfloat16 (AVX2) a bfloat16 depthwise convolution is also
40-100x slower than a float32 one, so reduced precision computes in float32 (:func:`compute_dtype`).
:func:`choose_algorithms` picks, per shape, from measurements:

* forward: ``"aten"`` (``F.conv2d`` in channels_last) or ``"fft"`` (``torch.fft.rfft2``);
* grad_input: ``"aten"`` (``convolution_backward`` in channels_last), ``"flip"`` (a convolution of the
  zero-inserted output gradient with the flipped kernel) or ``"fft"``;
* grad_weight: ``"aten"``, ``"batch_groups"`` (a grouped convolution of the input with the batch moved
  into channels, ``(1, N*C, H, W)``, and the output gradient as kernel; stride becomes dilation),
  ``"channel_groups"`` (the transpose: groups=C with the batch as each group's N input channels) or
  ``"fft"``.

Every algorithm takes operands already in the computation dtype and returns in it (memory format handled
here); :mod:`.depthwise_autograd` wires them into an autograd function.
``python tools/bench_depthwise.py --algorithms`` reprints the measurements behind the thresholds.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "FORWARD_ALGORITHMS",
    "GRAD_INPUT_ALGORITHMS",
    "GRAD_WEIGHT_ALGORITHMS",
    "MAX_ATEN_TAPS",
    "Algorithms",
    "choose_algorithms",
    "compute_dtype",
    "fft_ratio",
    "forward_aten",
    "forward_fft",
    "grad_fft",
    "grad_input_flip",
    "grad_weight_batch_groups",
    "grad_weight_channel_groups",
    "grads_aten",
    "output_memory_format",
]

Algorithms = tuple[str, str, str]

FORWARD_ALGORITHMS = ("aten", "fft")
GRAD_INPUT_ALGORITHMS = ("aten", "flip", "fft")
GRAD_WEIGHT_ALGORITHMS = ("aten", "batch_groups", "channel_groups", "fft")

# Measured with tools/bench_depthwise.py --algorithms (batch 8, channels_last, 2 threads, idle machine).
# Up to 7x7, float32 stays on plain F.conv2d: there aten's weight gradient and batch_groups are mixed
# (96@56x56: 29 vs 35 ms; 768@7x7: 4.7 vs 2.8 ms) and 7x7 is the ConvNeXt baseline. From 9x9 up
# batch_groups wins everywhere (9x9: 17 vs 46 ms at 96@56x56, 4 vs 23 ms at 768@7x7; 23x23: 45 ms vs 1 s).
MAX_ATEN_TAPS = 7 * 7
# The FFT's cost depends on the map only, the direct one on map * kernel: the ratio of direct
# multiply-adds to L*log2(L) (L = FFT points) decides. The backward (grad_input and grad_weight sharing
# one FFT of grad_output) pays from ~18 (96@56x56 17x17, ratio 18.4: 49 vs 65 ms for aten + batch_groups;
# 384@14x14 23x23, ratio 17.9: 39 vs 27 ms); the forward only from ~22 (96@56x56 23x23, 25.9: 39 vs 62 ms;
# 17x17: 30 vs 33 ms; 384@14x14 31x31, 18.4: 30 vs 14 ms).
_FFT_RATIO_FORWARD = 22.0
_FFT_RATIO_BACKWARD = 18.0


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


def fft_ratio(x_shape: torch.Size, kernel: tuple[int, int], padding: tuple[int, int]) -> float:
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
    gw = "aten" if kh * kw <= MAX_ATEN_TAPS else "batch_groups"
    if tuple(stride) != (1, 1):
        return ("aten", "aten", gw)
    ratio = fft_ratio(torch.Size(x_shape), kernel, padding)
    fwd = "fft" if ratio >= _FFT_RATIO_FORWARD else "aten"
    if ratio >= _FFT_RATIO_BACKWARD:
        return (fwd, "fft", "fft")  # one FFT of grad_output shared by both gradients
    return (fwd, "aten", gw)


def _channels_last(t: Tensor) -> Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def output_memory_format(x: Tensor) -> torch.memory_format:
    """The format F.conv2d's output would have: channels_last for a channels_last (not NCHW) input."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays; everything else computes in float32 (bf16 depthwise is 40-100x slower on AVX2)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def forward_aten(
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


def forward_fft(x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
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


def grads_aten(
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


def grad_input_flip(
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


def grad_weight_batch_groups(
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


def grad_weight_channel_groups(
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


def grad_fft(
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
    gf = torch.fft.rfft2(go.contiguous(), s=size)  # NCHW: see forward_fft
    gi = gw = None
    if need_weight:
        xf = torch.fft.rfft2(x.contiguous(), s=size)
        corr = torch.fft.irfft2((xf * gf.conj()).sum(0), s=size)
        gw = torch.roll(corr, shifts=(ph, pw), dims=(-2, -1))[:, :kh, :kw].unsqueeze(1)
    if need_input:
        gi = torch.fft.irfft2(gf * _fft_kernel_spectrum(weight, size, padding), s=size)[..., :h, :w]
    return gi, gw
