"""GPU benchmark of the depthwise path: every candidate per ConvNeXt-T layer, kernel construction, whole models.

Three parts, one JSON (``bench_gpu.json``, also on stdout) and one PNG (``bench_gpu.png``) in ``--out``:

* layers: per ConvNeXt-T depthwise shape (96@56², 192@28², 384@14², 768@7²) and kernel size, the forward
  and forward+backward time of every candidate of ``dcls_vision.ops.depthwise.candidates`` (cuDNN NCHW /
  channels_last, Triton, custom, FFT), timed with CUDA events, and the one the dispatcher would pick;
* construction: DCLS kernel construction (gauss 23/26, bilinear 17/34) per channel count: bytes allocated
  per build and per build+backward as multiples of the kernel's bytes (``torch.cuda.memory_stats``) and
  the number of device synchronisations (``torch.cuda.set_sync_debug_mode``); both should be small;
* models: ConvNeXt-T baseline vs ``convnext_tiny_dcls`` vs ``convnext_tiny_dcls_gauss`` (bf16 AMP,
  channels_last, batch 128 @ 224 by default): train-step and inference images/s, peak memory, ratios to
  the first model, all in one run.

    python tools/bench_gpu.py                         # needs CUDA; ~10 min on one GPU
    python tools/bench_gpu.py --device cpu --tiny     # the same code on CPU with tiny shapes (a smoke run)
"""

from __future__ import annotations

import argparse
import platform
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import add_out_arg, make_parser, non_negative_int, positive_int, run_tool, write_json

LAYERS = ((96, 56), (192, 28), (384, 14), (768, 7))
KERNELS = (7, 17, 23)
MODELS = ("convnext_tiny", "convnext_tiny_dcls", "convnext_tiny_dcls_gauss")
CONSTRUCTIONS = (("gauss", 23, 26), ("bilinear", 17, 34))
# --tiny: the same code paths on shapes a CPU runs in seconds
TINY = {
    "layers": ((8, 12), (16, 6)),
    "kernels": (3, 6),
    "models": ("dcls_quickstart_baseline", "dcls_quickstart"),
    "constructions": (("gauss", 7, 5), ("bilinear", 5, 4)),
    "batch": 2,
    "img_size": None,
}


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("bench_gpu.py", __doc__)
    parser.add_argument("--device", default="cuda", help="cuda or cuda:N (default), or cpu for a --tiny smoke run")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes and quickstart models (tests, smoke runs)")
    parser.add_argument("--batch", type=positive_int, default=128, help="batch for layers and models (default 128)")
    parser.add_argument("--img-size", type=positive_int, default=224, help="model input side (default 224)")
    parser.add_argument("--amp", choices=("bf16", "fp16", "none"), default="bf16", help="autocast / layer dtype")
    parser.add_argument("--kernels", nargs="+", type=positive_int, default=None, metavar="K")
    parser.add_argument("--models", nargs="+", default=None, metavar="NAME", help="first one is the baseline")
    parser.add_argument(
        "--parts", nargs="+", choices=("layers", "construction", "models"), default=["layers", "construction", "models"]
    )
    parser.add_argument("--warmup", type=non_negative_int, default=3)
    parser.add_argument("--repeats", type=positive_int, default=10)
    add_out_arg(parser, "bench_gpu")
    return parser


def _timer(device: Any, warmup: int, repeats: int) -> Callable[[str, Callable[[], object]], float]:
    from dcls_vision.ops.algo_select import CudaEventTimer, PerfCounterTimer

    return CudaEventTimer(warmup, repeats) if device.type == "cuda" else PerfCounterTimer(warmup, repeats)


def layer_rows(
    device: Any,
    dtype: Any,
    batch: int,
    layers: Sequence[tuple[int, int]],
    kernels: Sequence[int],
    timer: Callable[[str, Callable[[], object]], float],
) -> list[dict[str, Any]]:
    """Forward and forward+backward ms of every candidate per (channels, size, kernel), channels_last."""
    import torch

    from dcls_vision.ops import depthwise as dw

    rows = []
    for channels, size in layers:
        for k in kernels:
            g = torch.Generator().manual_seed(0)
            x = torch.randn(batch, channels, size, size, generator=g).to(device, dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            w = (torch.randn(channels, 1, k, k, generator=g) / k).to(device, dtype)
            b = torch.randn(channels, generator=g).to(device, dtype)
            pad = (k // 2, k // 2)
            row: dict[str, Any] = {
                "channels": channels,
                "size": size,
                "kernel": k,
                "fwd_ms": {},
                "fwd_bwd_ms": {},
                "errors": {},
            }
            for name in dw.candidates(device, (1, 1)):
                for part, need in (("fwd_ms", (False,) * 3), ("fwd_bwd_ms", (True,) * 3)):
                    try:
                        step = dw.timed_step(name, x, w, b, (1, 1), pad, need)
                        row[part][name] = 1e3 * timer(name, step)
                    except Exception as e:  # noqa: BLE001 -- recorded, as the dispatcher skips it
                        row["errors"][f"{name} {part[:-3]}"] = f"{type(e).__name__}: {str(e)[:200]}"
            for part in ("fwd_ms", "fwd_bwd_ms"):
                times = row[part]
                row[f"pick_{part[:-3]}"] = min(times, key=times.__getitem__) if times else None
            rows.append(row)
    return rows


def _allocated(device: Any, fn: Callable[[], Any]) -> tuple[int, int]:
    """(bytes allocated in total during fn, synchronisations); CPU: profiler allocations, syncs not counted."""
    import torch

    if device.type != "cuda":
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn()
        events = prof.profiler.kineto_results.events()
        return sum(max(e.nbytes(), 0) for e in events if e.name() == "[memory]"), -1
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0)
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize(device)
    after = torch.cuda.memory_stats(device).get("allocated_bytes.all.allocated", 0)
    syncs = sum("synchroniz" in str(w.message) for w in caught)
    return after - before, syncs


def construction_rows(
    device: Any, channels: Sequence[int], constructions: Sequence[tuple[str, int, int]]
) -> list[dict[str, Any]]:
    """Bytes allocated and syncs per kernel build (and build + backward), relative to the kernel's bytes."""
    import torch

    from dcls_vision.ops import Dcls2d

    rows = []
    for interpolation, size, count in constructions:
        for c in channels:
            layer = Dcls2d(c, c, count, size, groups=c, interpolation=interpolation).to(device).train()
            kernel = layer.build_kernel()
            grad = torch.randn_like(kernel)
            kernel_bytes = kernel.numel() * kernel.element_size()
            del kernel
            layer.build_kernel().backward(grad)  # warm-up: grads allocated, lazy init done

            def build_backward(layer: Dcls2d = layer, grad: torch.Tensor = grad) -> None:
                layer.build_kernel().backward(grad)

            build_bytes, build_syncs = _allocated(device, layer.build_kernel)
            step_bytes, step_syncs = _allocated(device, build_backward)
            rows.append(
                {
                    "interpolation": interpolation,
                    "dilated_size": size,
                    "kernel_count": count,
                    "channels": c,
                    "kernel_mb": kernel_bytes / 2**20,
                    "build_alloc_x_kernel": build_bytes / kernel_bytes,
                    "build_bwd_alloc_x_kernel": step_bytes / kernel_bytes,
                    "build_syncs": build_syncs,
                    "build_bwd_syncs": step_syncs,
                }
            )
    return rows


def model_rows(
    device: Any, models: Sequence[str], batch: int, img_size: int | None, amp: Any, warmup: int, repeats: int
) -> dict[str, Any]:
    """Train-step and inference images/s and peak memory per model; ratios against the first model."""
    import torch

    from dcls_vision.analysis.loading import load
    from dcls_vision.analysis.throughput import sweep

    rows = []
    for spec in models:
        loaded = load(spec)
        model = loaded.model.to(device).to(memory_format=torch.channels_last)
        h, w = (img_size, img_size) if img_size else loaded.img_size
        torch.manual_seed(0)
        results = sweep(
            model,
            ["train", "infer"],
            [batch],
            (loaded.in_chans, h, w),
            device,
            warmup=warmup,
            repeats=repeats,
            channels_last=True,
            amp=amp,
            memory=True,
        )
        row = {"model": loaded.name, "input_size": [loaded.in_chans, h, w]}
        for mode in ("train", "infer"):
            r = results[mode][0]
            row[f"{mode}_images_per_s"] = r.get("images_per_s")
            row[f"{mode}_peak_mem_mb"] = r.get("peak_mem_mb")
            if "error" in r:
                row[f"{mode}_error"] = r["error"]
        rows.append(row)
        del model, loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
    base = rows[0]
    for row in rows[1:]:
        for field in ("train_images_per_s", "infer_images_per_s", "train_peak_mem_mb", "infer_peak_mem_mb"):
            if row.get(field) and base.get(field):
                row[f"{field}_vs_{base['model']}"] = row[field] / base[field]
    return {"batch": batch, "rows": rows}


def plot(result: dict[str, Any], path: Path) -> Path:
    """Left: forward+backward ms per layer and candidate (log); right: model images/s relative to baseline."""
    from dcls_vision.analysis import plots

    plt, np = plots.plt, plots.np
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [2, 1]})
    layers = result.get("layers", [])
    names = sorted({n for r in layers for n in r["fwd_bwd_ms"]})
    x = np.arange(len(layers))
    for i, name in enumerate(names):
        ys = [r["fwd_bwd_ms"].get(name, np.nan) for r in layers]
        ax1.bar(x + (i - (len(names) - 1) / 2) * 0.8 / max(len(names), 1), ys, 0.8 / max(len(names), 1), label=name)
    ax1.set_xticks(x, [f"{r['channels']}@{r['size']}\nk{r['kernel']}" for r in layers], fontsize=7)
    ax1.set_yscale("log")
    ax1.set_ylabel("forward + backward (ms)")
    ax1.set_title(f"depthwise candidates, batch {result['batch']}, {result['dtype']}, channels_last")
    if names:
        ax1.legend(fontsize=7)
    rows = result.get("models", {}).get("rows", [])
    for j, mode in enumerate(("train", "infer")):
        base = rows[0].get(f"{mode}_images_per_s") if rows else None
        ys = [(r.get(f"{mode}_images_per_s") or np.nan) / base if base else np.nan for r in rows]
        ax2.bar(np.arange(len(rows)) + (j - 0.5) * 0.4, ys, 0.4, label=mode)
    ax2.set_xticks(np.arange(len(rows)), [r["model"] for r in rows], rotation=15, fontsize=7)
    ax2.axhline(1.0, color="grey", lw=0.8)
    ax2.set_ylabel("images/s relative to the first model")
    ax2.legend(fontsize=7)
    return plots._save(fig, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dcls_vision.analysis.errors import AnalysisError

    try:
        device = torch.device(args.device)
    except RuntimeError as e:
        raise AnalysisError(f"--device {args.device!r} is invalid; allowed: cuda, cuda:N, cpu (with --tiny)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise AnalysisError("a CUDA device is required (none is available); --device cpu --tiny runs a CPU smoke test")
    if device.type != "cuda" and not (device.type == "cpu" and args.tiny):
        raise AnalysisError(f"--device {args.device!r} needs --tiny; allowed: cuda, cuda:N, or cpu with --tiny")
    tiny = TINY if args.tiny else {}
    batch = tiny.get("batch", args.batch)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}[args.amp]
    dtype = amp or torch.float32
    layers = tiny.get("layers", LAYERS)
    result: dict[str, Any] = {
        "tool": "bench_gpu",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "batch": batch,
        "dtype": str(dtype).removeprefix("torch."),
        "amp": args.amp,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "tiny": args.tiny,
    }
    if "layers" in args.parts:
        kernels = args.kernels or tiny.get("kernels", KERNELS)
        result["layers"] = layer_rows(device, dtype, batch, layers, kernels, _timer(device, args.warmup, args.repeats))
    if "construction" in args.parts:
        result["construction"] = construction_rows(
            device, [c for c, _ in layers], tiny.get("constructions", CONSTRUCTIONS)
        )
    if "models" in args.parts:
        models = args.models or tiny.get("models", MODELS)
        img_size = tiny.get("img_size", args.img_size)
        result["models"] = model_rows(device, models, batch, img_size, amp, args.warmup, args.repeats)
    result["png"] = str(plot(result, Path(args.out) / "bench_gpu.png"))
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()

    def go(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        write_json(result, Path(args.out), "bench_gpu.json")
        return result

    return run_tool(go, parser, argv)


if __name__ == "__main__":
    main()
