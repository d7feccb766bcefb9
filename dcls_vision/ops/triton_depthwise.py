"""Triton depthwise 2-D convolution: forward, input gradient and weight gradient (direct, fp32 accumulation).

One candidate of the GPU dispatcher in :mod:`.depthwise`. Every kernel works on a tile of
``BLOCK_P`` pixels (flattened over batch and space) x ``BLOCK_C`` channels and reads tensors through their
strides, so NCHW and channels_last share the code: NCHW uses ``BLOCK_C = 1`` (a program walks contiguous
pixels of one channel), channels_last a block of channels (contiguous in memory). Loads convert to
float32, sums stay in float32 and stores round once to the tensor's dtype (fp32, bf16 or fp16).

* forward: ``out[n,c,o] = b[c] + sum_t x[n,c,o*s - p + t] w[c,t]``, looping over the kernel taps with
  masks for the padding;
* grad_input: the transposed convolution, split by stride phase (program axis 2): input pixels with
  ``(ih + ph) % sh == r`` only meet taps ``i = r, r + sh, ...``, so no tap is wasted at stride 2;
* grad_weight: one program per (channel block, tap, reduction split) sums ``go * x`` over its share of the
  ``N*Ho*Wo`` pixels and adds it to a float32 buffer with ``tl.atomic_add`` (order not deterministic).

Set ``TRITON_INTERPRET=1`` before the first import of triton to run the kernels on CPU tensors (the tests
do so in a subprocess). Block sizes are reasonable defaults, not tuned on a GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.autograd.function import once_differentiable

from .depthwise_algorithms import output_memory_format

__all__ = ["TritonDepthwiseFunction", "triton_depthwise_conv2d"]

_MAX_INT32 = 2**31 - 1


@triton.jit
def _forward_kernel(
    x_ptr,
    w_ptr,
    b_ptr,
    out_ptr,
    C,
    H,
    W,
    HO,
    WO,
    P_TOTAL,
    sxn,
    sxc,
    sxh,
    sxw,
    son,
    soc,
    soh,
    sow,
    KH,
    KW,
    SH,
    SW,
    PH,
    PW,
    HAS_BIAS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok, c_ok = p < P_TOTAL, c < C
    n = p // (HO * WO)
    oh = (p // WO) % HO
    ow = p % WO
    cmask = c_ok[None, :]
    x_base = x_ptr + (n * sxn)[:, None] + (c * sxc)[None, :]
    w_base = w_ptr + c * (KH * KW)
    iw0 = ow * SW - PW
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for i in range(KH):
        ih = oh * SH - PH + i
        h_ok = p_ok & (ih >= 0) & (ih < H)
        x_row = x_base + (ih * sxh)[:, None]
        for j in range(KW):
            iw = iw0 + j
            ok = h_ok & (iw >= 0) & (iw < W)
            xv = tl.load(x_row + (iw * sxw)[:, None], mask=ok[:, None] & cmask, other=0.0)
            wv = tl.load(w_base + (i * KW + j), mask=c_ok, other=0.0)
            acc += xv.to(tl.float32) * wv.to(tl.float32)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=c_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + (n * son + oh * soh + ow * sow)[:, None] + (c * soc)[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _grad_input_kernel(
    go_ptr,
    w_ptr,
    gi_ptr,
    C,
    H,
    W,
    HO,
    WO,
    QH,
    QW,
    P_TOTAL,
    sgn,
    sgc,
    sgh,
    sgw,
    sin,
    sic,
    sih,
    siw,
    KH,
    KW,
    SH,
    SW,
    PH,
    PW,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    # Stride phase (rh, rw): this program's input pixels are ih = rh + SH * qh, iw = rw + SW * qw.
    rh = tl.program_id(2) // SW
    rw = tl.program_id(2) % SW
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    n = p // (QH * QW)
    ih = rh + SH * ((p // QW) % QH)
    iw = rw + SW * (p % QW)
    p_ok = (p < P_TOTAL) & (ih < H) & (iw < W)
    cmask = c_ok[None, :]
    go_base = go_ptr + (n * sgn)[:, None] + (c * sgc)[None, :]
    w_base = w_ptr + c * (KH * KW)
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    # Only taps with (ih + PH - i) % SH == 0 reach this phase: i = i0, i0 + SH, ...
    for i in range((rh + PH) % SH, KH, SH):
        oh = (ih + PH - i) // SH  # exact division: the numerator is a multiple of SH
        h_ok = p_ok & (oh >= 0) & (oh < HO)
        go_row = go_base + (oh * sgh)[:, None]
        for j in range((rw + PW) % SW, KW, SW):
            ow = (iw + PW - j) // SW
            ok = h_ok & (ow >= 0) & (ow < WO)
            g = tl.load(go_row + (ow * sgw)[:, None], mask=ok[:, None] & cmask, other=0.0)
            wv = tl.load(w_base + (i * KW + j), mask=c_ok, other=0.0)
            acc += g.to(tl.float32) * wv.to(tl.float32)[None, :]
    out = gi_ptr + (n * sin + ih * sih + iw * siw)[:, None] + (c * sic)[None, :]
    tl.store(out, acc.to(gi_ptr.dtype.element_ty), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _grad_weight_kernel(
    go_ptr,
    x_ptr,
    gw_ptr,
    C,
    H,
    W,
    HO,
    WO,
    P_TOTAL,
    sgn,
    sgc,
    sgh,
    sgw,
    sxn,
    sxc,
    sxh,
    sxw,
    KH,
    KW,
    SH,
    SW,
    PH,
    PW,
    SPLIT,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    tap = tl.program_id(1)
    i = tap // KW
    j = tap % KW
    c_ok = c < C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    # This program's share of the reduction: pixel blocks split, split + SPLIT, ...
    for start in range(tl.program_id(2) * BLOCK_P, P_TOTAL, SPLIT * BLOCK_P):
        p = start + tl.arange(0, BLOCK_P)
        n = p // (HO * WO)
        oh = (p // WO) % HO
        ow = p % WO
        ih = oh * SH - PH + i
        iw = ow * SW - PW + j
        p_ok = p < P_TOTAL
        x_ok = p_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        g_off = (n * sgn + oh * sgh + ow * sgw)[:, None] + (c * sgc)[None, :]
        x_off = (n * sxn + ih * sxh + iw * sxw)[:, None] + (c * sxc)[None, :]
        g = tl.load(go_ptr + g_off, mask=p_ok[:, None] & c_ok[None, :], other=0.0)
        xv = tl.load(x_ptr + x_off, mask=x_ok[:, None] & c_ok[None, :], other=0.0)
        acc += g.to(tl.float32) * xv.to(tl.float32)
    tl.atomic_add(gw_ptr + c * (KH * KW) + tap, tl.sum(acc, axis=0), mask=c_ok)


def _blocks(x: Tensor) -> tuple[int, int]:
    """(BLOCK_P, BLOCK_C): one channel per program for NCHW, a block of channels for channels_last."""
    c = x.shape[1]
    if x.stride(1) == 1 and c > 1:
        block_c = min(64, triton.next_power_of_2(c))
        return max(16, 1024 // block_c), block_c
    return 256, 1


def _check_size(*tensors: Tensor) -> None:
    """Offsets are 32-bit in the kernels: refuse tensors whose extent does not fit (the dispatcher skips us)."""
    for t in tensors:
        extent = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
        if extent > _MAX_INT32:
            raise ValueError(f"tensor of shape {tuple(t.shape)} is too large for the Triton depthwise kernels")


def _out_size(
    hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> tuple[int, int]:
    return tuple((hw[d] + 2 * padding[d] - kernel[d]) // stride[d] + 1 for d in range(2))


def conv_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """Forward in x's dtype and memory format (float32 accumulation)."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    ho, wo = _out_size((h, w), (kh, kw), stride, padding)
    out = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype, memory_format=output_memory_format(x))
    if out.numel() == 0:
        return out
    _check_size(x, out)
    wc = weight.contiguous()
    bp, bc = _blocks(x)
    p_total = n * ho * wo
    grid = (triton.cdiv(p_total, bp), triton.cdiv(c, bc))
    _forward_kernel[grid](
        x,
        wc,
        bias if bias is not None else wc,
        out,
        c,
        h,
        w,
        ho,
        wo,
        p_total,
        *x.stride(),
        *out.stride(),
        kh,
        kw,
        *stride,
        *padding,
        HAS_BIAS=bias is not None,
        BLOCK_P=bp,
        BLOCK_C=bc,
    )
    return out


def conv_grad_input(go: Tensor, x: Tensor, weight: Tensor, stride: tuple[int, int], padding: tuple[int, int]) -> Tensor:
    """Input gradient, in x's dtype and memory format."""
    n, c, h, w = x.shape
    kh, kw = weight.shape[-2:]
    ho, wo = go.shape[-2:]
    gi = torch.empty_like(x, memory_format=output_memory_format(x))
    if gi.numel() == 0:
        return gi
    _check_size(go, gi)
    sh, sw = stride
    qh, qw = triton.cdiv(h, sh), triton.cdiv(w, sw)
    bp, bc = _blocks(x)
    p_total = n * qh * qw
    grid = (triton.cdiv(p_total, bp), triton.cdiv(c, bc), sh * sw)
    _grad_input_kernel[grid](
        go,
        weight.contiguous(),
        gi,
        c,
        h,
        w,
        ho,
        wo,
        qh,
        qw,
        p_total,
        *go.stride(),
        *gi.stride(),
        kh,
        kw,
        sh,
        sw,
        *padding,
        BLOCK_P=bp,
        BLOCK_C=bc,
    )
    return gi


def conv_grad_weight(
    go: Tensor, x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> Tensor:
    """Weight gradient ``(C, 1, kh, kw)`` in float32 (summed in float32 over batch and pixels)."""
    n, c, h, w = x.shape
    kh, kw = kernel
    ho, wo = go.shape[-2:]
    gw = torch.zeros((c, 1, kh, kw), device=x.device, dtype=torch.float32)
    p_total = n * ho * wo
    if p_total == 0 or c == 0:
        return gw
    _check_size(go, x)
    bp, bc = _blocks(x)
    programs = triton.cdiv(c, bc) * kh * kw
    # enough programs to fill a large GPU (~1024), each still summing a few pixel blocks
    split = max(1, min(triton.cdiv(1024, programs), triton.cdiv(p_total, 4 * bp)))
    grid = (triton.cdiv(c, bc), kh * kw, split)
    _grad_weight_kernel[grid](
        go,
        x,
        gw,
        c,
        h,
        w,
        ho,
        wo,
        p_total,
        *go.stride(),
        *x.stride(),
        kh,
        kw,
        *stride,
        *padding,
        split,
        BLOCK_P=bp,
        BLOCK_C=bc,
    )
    return gw


class TritonDepthwiseFunction(torch.autograd.Function):
    """Depthwise conv with Triton kernels; tensors keep their (reduced) dtype, sums are float32.

    ``custom_fwd``/``custom_bwd`` make the backward run under the forward's autocast state; the caller
    casts to the autocast dtype first, so nothing is silently up-cast to float32.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        stride: tuple[int, int],
        padding: tuple[int, int],
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.conv = (tuple(stride), tuple(padding), bias is not None)
        return conv_forward(x, weight, bias, tuple(stride), tuple(padding))

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, go: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        stride, padding, has_bias = ctx.conv
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        gi = conv_grad_input(go, x, weight, stride, padding) if need_x else None
        gw = None
        if need_w:
            gw = conv_grad_weight(go, x, tuple(weight.shape[-2:]), stride, padding).to(weight.dtype)
        gb = go.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype) if need_b and has_bias else None
        return gi, gw, gb, None, None


def triton_depthwise_conv2d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
) -> Tensor:
    """``F.conv2d(x, weight, bias, stride, padding, 1, C)`` for 4-D x of one floating dtype, via Triton."""
    return TritonDepthwiseFunction.apply(x, weight, bias, stride, padding)
