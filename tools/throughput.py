"""Inference and training throughput, latency and peak memory over a batch sweep; models side by side.

Inference: eval forward under no_grad. Training: forward + cross-entropy + backward + AdamW step + position
clamp. Each point: ``--warmup`` untimed then ``--repeats`` timed steps, median reported; peak memory on one
extra step (CUDA: max_memory_allocated; CPU: live tensors before the step + the profiler's allocation
high-water mark during it). Speed/memory targets belong here, never in unit tests.

    python tools/throughput.py --models convnext_tiny convnext_tiny_dcls_gauss --batch-sizes 1 8 32
    python tools/throughput.py --models dcls_quickstart dcls_quickstart_baseline --batch-sizes 16 64 256
    python tools/throughput.py --models convnext_tiny convnext_tiny_dcls --device cuda --amp bf16 \
        --batch-sizes 64 128 256
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import (
    add_checkpoint_model_arg,
    add_out_arg,
    make_parser,
    non_negative_int,
    positive_int,
    run_tool,
    write_json,
)

MODES = ("infer", "train")
AMP = ("none", "bf16", "fp16")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("throughput.py", __doc__)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["convnext_tiny", "convnext_tiny_dcls_gauss"],
        metavar="NAME",
        help="timm model names (name:key=value,... for kwargs), measured in turn in one run",
    )
    parser.add_argument(
        "--checkpoint", default=None, metavar="PATH", help="also a checkpoint's model (any format the factory reads)"
    )
    add_checkpoint_model_arg(parser)
    parser.add_argument("--batch-sizes", nargs="+", type=positive_int, default=[1, 8, 32], metavar="N")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--img-size", type=positive_int, default=None, help="input side (default: the model's)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default)")
    parser.add_argument("--amp", choices=AMP, default="none", help="autocast dtype (default: none)")
    parser.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="keep NCHW (default: channels_last, the fast layout for depthwise convs)",
    )
    parser.add_argument("--warmup", type=non_negative_int, default=2)
    parser.add_argument("--repeats", type=positive_int, default=5)
    parser.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory step")
    add_out_arg(parser, "throughput")
    return parser


def _measure(args: argparse.Namespace, device: Any, amp: Any) -> list[dict[str, Any]]:
    """One entry per model spec / checkpoint: its sweep over modes and batch sizes."""
    import torch

    from dcls_vision.analysis.loading import load
    from dcls_vision.analysis.throughput import sweep

    specs = [(m, None) for m in args.models] + ([(None, args.checkpoint)] if args.checkpoint else [])
    models = []
    for spec, checkpoint in specs:
        loaded = load(spec, checkpoint, checkpoint_model=args.checkpoint_model)
        model = loaded.model.to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        h, w = (args.img_size, args.img_size) if args.img_size else loaded.img_size
        torch.manual_seed(0)
        results = sweep(
            model,
            args.modes,
            args.batch_sizes,
            (loaded.in_chans, h, w),
            device,
            warmup=args.warmup,
            repeats=args.repeats,
            channels_last=args.channels_last,
            amp=amp,
            memory=args.memory,
        )
        params_m = sum(p.numel() for p in model.parameters()) / 1e6
        models.append(
            {
                "model": loaded.name,
                "source": loaded.source,
                "input_size": [loaded.in_chans, h, w],
                "params_m": params_m,
                "results": results,
            }
        )
        del model, loaded
    return models


def _comparison(models: list[dict[str, Any]], modes: Sequence[str], batch_sizes: Sequence[int]) -> list[dict]:
    """Images/s of every model per (mode, batch), with its ratio to the first model."""
    comparison = []
    first = models[0]
    for mode in modes:
        for i, batch in enumerate(batch_sizes):
            row: dict[str, Any] = {"mode": mode, "batch": batch}
            base = first["results"][mode][i].get("images_per_s")
            for m in models:
                ips = m["results"][mode][i].get("images_per_s")
                row[m["model"]] = ips
                if m is not first and ips and base:
                    row[f"{m['model']} / {first['model']}"] = ips / base
            comparison.append(row)
    return comparison


def run(args: argparse.Namespace) -> dict[str, Any]:
    import platform

    import torch

    from dcls_vision.analysis import plots

    if args.threads:
        torch.set_num_threads(args.threads)
    from dcls_vision.analysis.throughput import parse_device

    device = parse_device(args.device)
    amp = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    models = _measure(args, device, amp)
    on_cuda = device.type == "cuda"
    result = {
        "tool": "throughput",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "amp": args.amp,
        "channels_last": args.channels_last,
        "img_size": models[0]["input_size"][-1],
        "modes": args.modes,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "peak_mem": "CUDA max_memory_allocated"
        if on_cuda
        else "live tensors before the step + profiler allocation high-water mark during it",
        "models": models,
        "comparison": _comparison(models, args.modes, args.batch_sizes),
    }
    result["png"] = str(plots.throughput_lines(result, Path(args.out) / "throughput.png"))
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()

    def go(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        write_json(result, Path(args.out), "throughput.json")
        return result

    return run_tool(go, parser, argv)


if __name__ == "__main__":
    main()
