"""Inference throughput (images/s) of whole detectors / segmentors at the thesis' sizes: one JSON line per config.

Times the real test path, ``model.predict`` on a batch already at its test size (detection 1280x800: RPN, NMS,
cascade box and mask heads; segmentation 2048x512 with the config's test mode, e.g. sliding 512x512 windows),
no data loading; ``--warmup`` untimed then ``--repeats`` timed calls, median (``analysis.throughput.time_step``).
Weights are random (an untrained detector keeps other boxes than a trained one: the RoI-head share differs).
Figures belong to the machine they were measured on: the JSON names it.

    python tools/downstream_throughput.py configs/downstream/ade20k/upernet_convnext-t-dcls_8xb2-*.py
    python tools/downstream_throughput.py configs/downstream/coco/*t-dcls_*.py --device cuda --batch 2
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Sequence
from typing import Any

from dcls_vision.downstream.cli import CliError, run

PROG = "downstream_throughput.py"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="mmdet / mmseg configs (configs/downstream/)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("W", "H"), help="input size (default: 1280 800 det, 2048 512 seg)"
    )
    parser.add_argument(
        "--backbone", metavar="TIMM_NAME", help="replace the backbone, e.g. convnext_tiny: the -dcls config's baseline"
    )
    parser.add_argument("--batch", type=int, default=1, help="images per predict call (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls first (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls, median reported (default 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return parser.parse_args(argv)


def _cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), else what ``platform`` knows."""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(config: str, args: argparse.Namespace, device: Any) -> dict[str, Any]:
    """One config: build, move to ``device``, time preprocessing + ``predict`` on random images."""
    import torch

    from dcls_vision.analysis.throughput import time_step
    from dcls_vision.downstream import complexity

    model, cfg = complexity.load_model(config, args.backbone)
    model = model.to(device)
    shape = complexity.input_shape(cfg, tuple(args.size) if args.size else None, args.batch)
    x = torch.rand(shape, generator=torch.Generator().manual_seed(0)).mul(255).to(device)
    samples = complexity.data_samples(cfg, shape)

    def step() -> None:
        with torch.no_grad():
            data = model.data_preprocessor({"inputs": list(x), "data_samples": samples})
            model.predict(data["inputs"], data["data_samples"])

    timing = time_step(step, device, args.batch, args.warmup, args.repeats)
    return {
        "config": config,
        "model": type(model).__name__,
        "backbone": cfg.model.backbone.get("model_name", cfg.model.backbone.type),
        "size_wh": [shape[3], shape[2]],
        "test_mode": str((cfg.model.get("test_cfg") or {}).get("mode", "")) or None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **timing,
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    for name in ("batch", "repeats"):
        if getattr(args, name) < 1:
            raise CliError(f"--{name} {getattr(args, name)} is invalid; allowed: an integer >= 1")
    if args.warmup < 0:
        raise CliError(f"--warmup {args.warmup} is invalid; allowed: an integer >= 0")
    if args.size and min(args.size) < 32:
        raise CliError(f"--size {args.size[0]} {args.size[1]} is too small; allowed: W H of at least 32 pixels")
    from dcls_vision.analysis.throughput import parse_device

    device = parse_device(args.device, allow_auto=False)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = []
    for config in args.configs:
        rows.append(measure(config, args, device))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    run(main, None)
