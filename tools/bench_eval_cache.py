"""Benchmark the eval-mode kernel cache of DCLS layers: cache hit vs rebuild, and what the check costs.

Runs the 18 depthwise DCLS layers of convnext_tiny_dcls_gauss (Dcls2d(C, C, 26, 23, groups=C) at the
feature-map sizes of a 224 px input) in eval under ``torch.no_grad`` and prints JSON with medians over
repeats, per pass over all layers:

* ``hit``: ``layer(x)`` with the cache valid (bitwise parameter check + convolution);
* ``rebuild``: the kernel built on every forward (what an invalid or disabled cache costs);
* ``check``: the cache check alone (bit-for-bit comparison with the saved parameter copy);
* ``build``, ``conv``: kernel construction alone, convolution alone (= the exported plain conv).

The five take turns within each repeat, so load from other jobs spreads over all of them alike.

    python tools/bench_eval_cache.py --batch 1 32 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

from dcls_vision.ops import Dcls2d

STAGES = ((96, 3, 56), (192, 3, 28), (384, 9, 14), (768, 3, 7))  # channels, depth, feature map at 224 px


def _layers() -> list[tuple[Dcls2d, int]]:
    torch.manual_seed(0)
    return [
        (Dcls2d(c, c, 26, 23, groups=c, interpolation="gauss").eval(), size)
        for c, depth, size in STAGES
        for _ in range(depth)
    ]


def _interleaved_ms(fns: dict, repeats: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median and minimum per function, the functions taking turns in each repeat (fair under load)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(1000 * (time.perf_counter() - t0))
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t)} for name, t in times.items()}


def measure(batch: int, repeats: int, warmup: int) -> dict:
    layers = _layers()
    inputs = [torch.randn(batch, layer.in_channels, size, size) for layer, size in layers]
    kernels = [layer.build_kernel().detach() for layer, _ in layers]
    pairs = list(zip([layer for layer, _ in layers], inputs, kernels))

    def hit():
        for layer, x, _ in pairs:
            layer(x)

    def rebuild():
        for layer, x, _ in pairs:
            layer._conv(x, layer.build_kernel())

    def check():
        for layer, _, _ in pairs:
            assert layer._cache_matches(layer._params())

    def build():
        for layer, _, _ in pairs:
            layer.build_kernel()

    def conv():
        for layer, x, kernel in pairs:
            layer._conv(x, kernel)

    with torch.no_grad():
        hit()  # fills the caches
        fns = {"hit": hit, "rebuild": rebuild, "check": check, "build": build, "conv": conv}
        row: dict = {"batch": batch, **_interleaved_ms(fns, repeats, warmup)}
    for stat in ("median_ms", "min_ms"):
        row[f"rebuild_over_hit_{stat[:-3]}"] = row["rebuild"][stat] / row["hit"][stat]
        row[f"check_share_of_hit_{stat[:-3]}"] = row["check"][stat] / row["hit"][stat]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    results = [measure(batch, args.repeats, args.warmup) for batch in args.batch]
    print(
        json.dumps(
            {
                "benchmark": "eval forward of the 18 DCLS layers of convnext_tiny_dcls_gauss (23/26) at 224 px, "
                "ms per pass over all layers, median of repeats",
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpus": os.cpu_count(),
                "device": "cpu",
                "repeats": args.repeats,
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
