"""Benchmark DCLS kernel construction (forward + backward): time and peak memory, printed as JSON.

Compares our separable construction with a plain broadcast implementation of the same formulas
(the O(C·K·Πs) way of the reference code, written here) and, when installed, with the ``dcls``
package itself, at the depthwise shapes of ConvNeXt-T. Each measurement runs in a fresh
Peak memory is the high-water mark of live tensor bytes during one build + backward, from the
allocation events of the PyTorch profiler (RSS would mostly measure library and thread start-up).

    python tools/bench_construct.py                       # all channels, gauss 23/26 and bilinear 17/34
    python tools/bench_construct.py --channels 768 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

CONFIGS = {"gauss": (23, 26), "bilinear": (17, 34)}
IMPLS = ("ours", "broadcast", "dcls")


def broadcast_kernel(
    weight: torch.Tensor, positions: torch.Tensor, sigma: torch.Tensor | None, size: int, interpolation: str
) -> torch.Tensor:
    """Same formulas, materialising every element's spread over the whole grid: (C, 1, K, s, s)."""
    grid = torch.arange(size, dtype=weight.dtype)
    rows = positions[0].unsqueeze(-1).unsqueeze(-1) + size // 2 - grid.view(size, 1)
    cols = positions[1].unsqueeze(-1).unsqueeze(-1) + size // 2 - grid.view(1, size)
    if interpolation == "bilinear":
        spread = torch.relu(1 - rows.abs()) * torch.relu(1 - cols.abs())
    else:
        w0 = 0.27 + sigma[0].abs().unsqueeze(-1).unsqueeze(-1)
        w1 = 0.27 + sigma[1].abs().unsqueeze(-1).unsqueeze(-1)
        spread = torch.exp(-0.5 * ((rows / w0) ** 2 + (cols / w1) ** 2))
        spread = spread / (spread.sum(dim=(-2, -1), keepdim=True) + 1e-7)
    return (weight.unsqueeze(-1).unsqueeze(-1) * spread).sum(dim=2)


def _make(channels: int, interpolation: str, impl: str):
    size, count = CONFIGS[interpolation]
    if impl == "ours":
        from dcls_vision.ops import Dcls2d

        layer = Dcls2d(channels, channels, count, size, groups=channels, interpolation=interpolation)
        return layer.parameters(), layer.build_kernel
    if impl == "dcls":
        from DCLS.construct.modules import Dcls2d as RefDcls2d

        version = "v0" if interpolation == "bilinear" else "gauss"
        ref = RefDcls2d(
            channels,
            channels,
            kernel_count=count,
            dilated_kernel_size=size,
            groups=channels,
            padding=size // 2,
            version=version,
            use_implicit_gemm=False,
        )
        return ref.parameters(), lambda: ref.DCK(ref.weight, ref.P, ref.SIG)
    torch.manual_seed(0)
    weight = torch.randn(channels, 1, count, requires_grad=True)
    positions = (torch.randn(2, channels, 1, count) * 0.5).requires_grad_(True)
    sigma = None if interpolation == "bilinear" else torch.full((2, channels, 1, count), 0.23, requires_grad=True)
    params = [p for p in (weight, positions, sigma) if p is not None]
    return params, lambda: broadcast_kernel(weight, positions, sigma, size, interpolation)


def _build_and_backward(build, params) -> None:
    build().square().sum().backward()
    for p in params:
        p.grad = None


def peak_tensor_mb(build, params) -> float:
    """High-water mark of live tensor memory over one build + backward (profiler allocation events)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        _build_and_backward(build, params)
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2**20


def measure(channels: int, interpolation: str, impl: str, repeats: int, warmup: int) -> dict:
    params, build = _make(channels, interpolation, impl)
    params = list(params)
    times = []
    for _ in range(warmup + repeats):
        t0 = time.perf_counter()
        _build_and_backward(build, params)
        times.append(time.perf_counter() - t0)
    return {"median_ms": 1000 * statistics.median(times[warmup:]), "peak_mem_mb": peak_tensor_mb(build, params)}


def run(args: argparse.Namespace) -> dict:
    try:
        import DCLS  # noqa: F401

        impls = IMPLS
    except ImportError:
        impls = IMPLS[:2]
    results = []
    for interpolation in args.interpolations:
        for channels in args.channels:
            row = {
                "interpolation": interpolation,
                "dilated_kernel_size": CONFIGS[interpolation][0],
                "kernel_count": CONFIGS[interpolation][1],
                "channels": channels,
            }
            for impl in impls:
                row[impl] = measure(channels, interpolation, impl, args.repeats, args.warmup)
            for impl in impls[1:]:
                row[f"speedup_vs_{impl}"] = row[impl]["median_ms"] / row["ours"]["median_ms"]
                row[f"memory_ratio_vs_{impl}"] = row[impl]["peak_mem_mb"] / row["ours"]["peak_mem_mb"]
            results.append(row)
    return {
        "benchmark": "dcls kernel construction, forward+backward, depthwise ConvNeXt-T shapes",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "peak_mem_mb": "high-water mark of live tensor bytes during one build + backward",
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--channels", type=int, nargs="+", default=[96, 192, 384, 768])
    parser.add_argument("--interpolations", nargs="+", choices=sorted(CONFIGS), default=["gauss", "bilinear"])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # the dcls package warns about CUDA on every layer
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
