"""Benchmark CPU depthwise convolution: ``F.conv2d`` vs ``depthwise_conv2d``, printed as JSON.

Shapes are the depthwise layers of ConvNeXt-T (96@56², 192@28², 384@14², 768@7²) with bias, input,
weight and bias all requiring grad, as in training. Times are medians over ``--repeats`` runs after one
warm-up; a run slower than ``--budget`` seconds (aten's large-kernel weight gradient takes 5-20 s) is
not repeated, and its warm-up time is reported (``"samples": 0``).

``--algorithms`` instead times every forward / grad_input / grad_weight algorithm of the custom path
separately: the measurements behind ``choose_algorithms``.

    python tools/bench_depthwise.py                        # kernels 7, 17, 23, batch 8, channels_last
    python tools/bench_depthwise.py --kernels 9 13 --algorithms --threads 2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dcls_vision.ops import depthwise as dw
from dcls_vision.ops import depthwise_algorithms as algos

SHAPES = ((96, 56), (192, 28), (384, 14), (768, 7))
PARTS = ("forward", "backward", "total")


def measure(fn: Callable[[], object], repeats: int, budget: float) -> dict[str, float | int]:
    """Median wall and process-CPU milliseconds of ``fn`` after a warm-up; slow calls are not repeated.

    CPU time is reported too because wall time on a shared machine mostly measures the other tenants.
    """
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    first, first_cpu = time.perf_counter() - t0, time.process_time() - c0
    wall: list[float] = []
    cpu: list[float] = []
    if first <= budget:
        start = time.perf_counter()
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if time.perf_counter() - start > budget:
                break
    return {
        "ms": round(1000 * (statistics.median(wall) if wall else first), 2),
        "cpu_ms": round(1000 * (statistics.median(cpu) if cpu else first_cpu), 2),
        "samples": len(wall),
    }


def make_inputs(
    channels: int, size: int, kernel: int, batch: int, channels_last: bool, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Input, weight and bias that require grad; input in the requested memory format."""
    x = torch.randn(batch, channels, size, size, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(channels, 1, kernel, kernel, dtype=dtype) / kernel).requires_grad_()
    b = torch.randn(channels, dtype=dtype).requires_grad_()
    return x.requires_grad_(), w, b


def bench_pair(channels: int, size: int, kernel: int, args: argparse.Namespace) -> dict[str, object]:
    """Forward / backward / total of F.conv2d and depthwise_conv2d on one layer shape."""
    x, w, b = make_inputs(channels, size, kernel, args.batch, args.channels_last, torch.float32)
    pad = kernel // 2
    fns: dict[str, Callable[..., torch.Tensor]] = {
        "F.conv2d": lambda: F.conv2d(x, w, b, 1, pad, 1, channels),
        "depthwise_conv2d": lambda: dw.depthwise_conv2d(x, w, b, 1, pad),
    }
    row: dict[str, object] = {"channels": channels, "size": size, "kernel": kernel}
    for name, fwd in fns.items():
        out = fwd()
        go = torch.randn_like(out)
        f = measure(fwd, args.repeats, args.budget)
        bwd = measure(
            lambda out=out, go=go: torch.autograd.grad(out, (x, w, b), go, retain_graph=True), args.repeats, args.budget
        )
        row[name] = {
            "forward_ms": f["ms"],
            "backward_ms": bwd["ms"],
            "total_ms": round(f["ms"] + bwd["ms"], 2),
            "forward_cpu_ms": f["cpu_ms"],
            "backward_cpu_ms": bwd["cpu_ms"],
            "total_cpu_ms": round(f["cpu_ms"] + bwd["cpu_ms"], 2),
            "samples": min(f["samples"], bwd["samples"]),
        }
    if kernel * kernel > algos.MAX_ATEN_TAPS:
        row["algorithms"] = list(algos.choose_algorithms(x.shape, (kernel, kernel), (1, 1), (pad, pad)))
    else:
        row["algorithms"] = "F.conv2d"
    ref, ours = row["F.conv2d"], row["depthwise_conv2d"]
    row["speedup"] = {k: round(ref[f"{k}_ms"] / max(ours[f"{k}_ms"], 1e-9), 2) for k in PARTS}
    row["speedup_cpu"] = {k: round(ref[f"{k}_cpu_ms"] / max(ours[f"{k}_cpu_ms"], 1e-9), 2) for k in PARTS}
    return row


def bench_algorithms(channels: int, size: int, kernel: int, args: argparse.Namespace) -> dict[str, object]:
    """Each forward / grad_input / grad_weight algorithm of the custom path, timed on its own."""
    x, w, b = make_inputs(channels, size, kernel, args.batch, args.channels_last, torch.float32)
    x, w, b = x.detach(), w.detach(), b.detach()
    p, s, k = (kernel // 2, kernel // 2), (1, 1), (kernel, kernel)
    out = F.conv2d(x, w, b, s, p, 1, channels)
    go = torch.randn_like(out)
    if args.channels_last:
        go = go.contiguous(memory_format=torch.channels_last)
    cands: dict[str, Callable[[], object]] = {
        "forward/aten": lambda: algos.forward_aten(x, w, b, s, p),
        "forward/fft": lambda: algos.forward_fft(x, w, b, p),
        "grad_input/aten": lambda: algos.grads_aten(go, x, w, s, p, True, False)[0],
        "grad_input/flip": lambda: algos.grad_input_flip(go, x.shape, w, s, p),
        "grad_input/fft": lambda: algos.grad_fft(go, x, w, p, True, False),
        "grad_weight/aten": lambda: algos.grads_aten(go, x, w, s, p, False, True)[1],
        "grad_weight/batch_groups": lambda: algos.grad_weight_batch_groups(go, x, k, s, p),
        "grad_weight/channel_groups": lambda: algos.grad_weight_channel_groups(go, x, k, s, p),
        "grad_weight/fft": lambda: algos.grad_fft(go, x, w, p, False, True),
        "grad_both/fft": lambda: algos.grad_fft(go, x, w, p, True, True),
    }
    row: dict[str, object] = {
        "channels": channels,
        "size": size,
        "kernel": kernel,
        "fft_ratio": round(algos.fft_ratio(x.shape, k, p), 2),
        "chosen": list(algos.choose_algorithms(x.shape, k, s, p)),
    }
    for name, fn in cands.items():
        if args.only and not any(name.startswith(o) for o in args.only):
            continue
        m = measure(fn, args.repeats, args.budget)
        row[name] = {"ms": m["ms"], "cpu_ms": m["cpu_ms"]}
    return row


def main() -> None:
    """Parse flags, run the benchmark, print JSON."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--kernels", type=int, nargs="+", default=[7, 17, 23])
    ap.add_argument(
        "--channels", type=int, nargs="+", default=None, help="restrict to these ConvNeXt-T stages (96 192 384 768)"
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget", type=float, default=2.0, help="seconds per measurement before repeats stop")
    ap.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument(
        "--algorithms",
        action="store_true",
        help="time each algorithm of the custom path instead of F.conv2d vs depthwise_conv2d",
    )
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        help="with --algorithms: only names starting with these (e.g. grad_weight/ forward/fft)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for channels, size in SHAPES:
        if args.channels and channels not in args.channels:
            continue
        for kernel in args.kernels:
            fn = bench_algorithms if args.algorithms else bench_pair
            rows.append(fn(channels, size, kernel, args))
    report: dict[str, object] = {
        "config": {
            "batch": args.batch,
            "kernels": args.kernels,
            "repeats": args.repeats,
            "budget_s": args.budget,
            "channels_last": args.channels_last,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
        },
        "results": rows,
    }
    if not args.algorithms:
        sums: dict[str, dict[str, float]] = {}
        for key in ("F.conv2d", "depthwise_conv2d"):
            for part in PARTS:
                for unit in ("ms", "cpu_ms"):
                    sums.setdefault(key, {})[f"{part}_{unit}"] = round(sum(r[key][f"{part}_{unit}"] for r in rows), 1)
        report["sum"] = sums
        ref, ours = sums["F.conv2d"], sums["depthwise_conv2d"]
        report["sum_speedup"] = {k: round(ref[f"{k}_ms"] / max(ours[f"{k}_ms"], 1e-9), 2) for k in PARTS}
        report["sum_speedup_cpu"] = {k: round(ref[f"{k}_cpu_ms"] / max(ours[f"{k}_cpu_ms"], 1e-9), 2) for k in PARTS}
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
