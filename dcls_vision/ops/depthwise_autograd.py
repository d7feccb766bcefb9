"""The custom path as an autograd function: forward and backward built from :mod:`.depthwise_algorithms`.

The algorithms to run are given explicitly (``(forward, grad_input, grad_weight)``, chosen by the caller);
this module only converts to the computation dtype, switches autocast off around the computation, falls
back from the stride-1-only FFT at other strides and returns results in the operands' dtype and
``F.conv2d``'s memory format. The backward is written with differentiable ops, so double backward works
too (slowly).
"""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .depthwise_algorithms import (
    Algorithms,
    compute_dtype,
    forward_aten,
    forward_fft,
    grad_fft,
    grad_input_flip,
    grad_weight_batch_groups,
    grad_weight_channel_groups,
    grads_aten,
    output_memory_format,
)

__all__ = ["DepthwiseConv2dFunction", "autocast_off", "custom_forward"]


def autocast_off(device_type: str) -> contextlib.AbstractContextManager[None]:
    """Disable autocast around our own computations (they pick their dtype explicitly)."""
    if device_type in ("cpu", "cuda") and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def custom_forward(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int], algorithm: str
) -> Tensor:
    """Forward in the computation dtype, returned in x's dtype and F.conv2d's memory format."""
    cd = compute_dtype(x.dtype)
    xc, wc = x.to(cd), weight.to(cd)
    bc = None if bias is None else bias.to(cd)
    with autocast_off(x.device.type):
        if algorithm == "fft" and tuple(stride) == (1, 1):
            out = forward_fft(xc, wc, bc, padding)
        else:
            out = forward_aten(xc, wc, bc, stride, padding)
    return out.to(x.dtype).contiguous(memory_format=output_memory_format(x))


class DepthwiseConv2dFunction(torch.autograd.Function):
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
        return custom_forward(x, weight, bias, stride, padding, algorithms[0])

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
        cd = compute_dtype(x.dtype)
        go, xc, wc = grad_out.to(cd), x.to(cd), weight.to(cd)
        gi = gw = gb = None
        with autocast_off(x.device.type):
            fft_x, fft_w = need_x and gi_algo == "fft", need_w and gw_algo == "fft"
            if fft_x or fft_w:
                gi, gw = grad_fft(go, xc, wc, padding, fft_x, fft_w)
            aten_x = need_x and gi is None and gi_algo != "flip"
            aten_w = need_w and gw is None and gw_algo not in ("batch_groups", "channel_groups")
            if aten_x or aten_w:  # one aten call when both gradients come from it
                gi_aten, gw_aten = grads_aten(go, xc, wc, stride, padding, aten_x, aten_w)
                gi = gi_aten if aten_x else gi
                gw = gw_aten if aten_w else gw
            if need_x and gi is None:
                gi = grad_input_flip(go, x.shape, wc, stride, padding)
            if need_w and gw is None:
                if gw_algo == "batch_groups":
                    gw = grad_weight_batch_groups(go, xc, kernel, stride, padding)
                else:
                    gw = grad_weight_channel_groups(go, xc, kernel, stride, padding)
            if need_b and ctx.bias_dtype is not None:
                gb = go.sum((0, 2, 3)).to(ctx.bias_dtype)
        if gi is not None:
            gi = gi.to(x.dtype).contiguous(memory_format=output_memory_format(x))
        if gw is not None:
            gw = gw.to(weight.dtype)
        return gi, gw, gb, None, None, None
