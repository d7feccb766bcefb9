"""Depthwise 2-D convolution's entry point: which algorithm runs for which device, dtype and shape.

:func:`depthwise_conv2d` keeps the semantics of ``F.conv2d(x, weight, bias, stride, padding, 1, groups=C)``.
On CUDA (float32, bfloat16, float16) it runs the fastest of :func:`candidates` -- cuDNN on an NCHW or
channels_last copy, the Triton kernels of :mod:`.triton_depthwise`, the custom path of
:mod:`.depthwise_autograd` (FFT at stride 1) -- timed on the first call per (shape, dtype, layout,
gradients) and cached in memory and on disk per GPU model (:mod:`.algo_select`); ``DCLS_DEPTHWISE_ALGO``
forces one algorithm. On CPU, kernels larger than 7x7 (and every reduced-precision call) take the custom
path with the algorithms :func:`~.depthwise_algorithms.choose_algorithms` picks from measurements, since
PyTorch's own CPU weight gradient collapses for large kernels (see :mod:`.depthwise_algorithms`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from . import algo_select
from .depthwise_algorithms import (
    FORWARD_ALGORITHMS,
    GRAD_INPUT_ALGORITHMS,
    GRAD_WEIGHT_ALGORITHMS,
    MAX_ATEN_TAPS,
    Algorithms,
    choose_algorithms,
    output_memory_format,
)
from .depthwise_autograd import DepthwiseConv2dFunction, autocast_off, custom_forward

__all__ = ["candidates", "depthwise_conv2d", "run_algorithm", "selection_key", "timed_step"]

Impl = Literal["auto", "custom", "aten"]
_REDUCED_DTYPES = (torch.bfloat16, torch.float16)


def _pair(v: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    """Normalise an int or a length-2 sequence to a tuple of two ints."""
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _autocast_cast(device_type: str, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """Autocast's rule for lower-precision ops (cast floating tensors except float64), applied by hand."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(
        t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t for t in tensors
    )


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
    fmt = output_memory_format(x)
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
        return DepthwiseConv2dFunction.apply(x, weight, bias, stride, padding, ("fft", "fft", "fft"))
    if name == "custom":
        kernel = (weight.shape[-2], weight.shape[-1])
        algorithms = choose_algorithms(x.shape, kernel, stride, padding)
        return DepthwiseConv2dFunction.apply(x, weight, bias, stride, padding, algorithms)
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
    layout = "cl" if output_memory_format(x) == torch.channels_last else "nchw"
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
    go = go.contiguous(memory_format=output_memory_format(x))

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
    ``*_ALGORITHMS`` in :mod:`.depthwise_algorithms`) instead of :func:`choose_algorithms`.
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
                with autocast_off(device_type):
                    return _dispatch(x_, weight_, bias_, stride, padding, forced)
            if device_type != "cpu" or x_.dtype == torch.float64:
                return F.conv2d(x, weight, bias, stride, padding, 1, groups)
            if x_.dtype not in _REDUCED_DTYPES and kernel[0] * kernel[1] <= MAX_ATEN_TAPS:
                return F.conv2d(x, weight, bias, stride, padding, 1, groups)
            if not any(_needs_grad(x_, weight_, bias_)):
                return custom_forward(
                    x_, weight_, bias_, stride, padding, choose_algorithms(x.shape, kernel, stride, padding)[0]
                )
        algorithms = choose_algorithms(x.shape, kernel, stride, padding)
    else:
        algorithms = tuple(algorithms)
        allowed = (FORWARD_ALGORITHMS, GRAD_INPUT_ALGORITHMS, GRAD_WEIGHT_ALGORITHMS)
        if len(algorithms) != 3 or any(a not in ok for a, ok in zip(algorithms, allowed)):
            raise ValueError(f"invalid algorithms {algorithms!r}; choose from {allowed}")
    with autocast_off(device_type):
        return DepthwiseConv2dFunction.apply(x_, weight_, bias_, stride, padding, algorithms)
