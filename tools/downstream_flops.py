"""FLOPs and parameters of whole detectors / segmentors at the thesis' sizes: one JSON line per config.

The counter of ``tools/flops.py`` (:mod:`dcls_vision.analysis.flops`): DCLS layers exported to dense kernels,
``gmacs`` = multiply-adds (the thesis' "FLOPs"), ``gflops`` = 2 x gmacs, the kernel construction apart.
What one inference is (:mod:`dcls_vision.downstream.complexity`): segmentors backbone + decode head on the
whole 2048x512 image; detectors at 1280x800 backbone + neck + RPN head, box heads on 1000 proposals and mask
heads on 100, every cascade stage (the convention of mmdet/mmseg's get_flops behind the published numbers).
Parameters: the whole model (auxiliary head included). Weights are random: costs do not depend on them.

    python tools/downstream_flops.py configs/downstream/ade20k/*.py configs/downstream/coco/*.py
    python tools/downstream_flops.py configs/downstream/ade20k/upernet_convnext-t-dcls_8xb2*.py --backbone convnext_tiny
    python tools/downstream_flops.py configs/downstream/tiny/*.py --size 256 128 --out flops.jsonl
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.downstream.cli import CliError, run
from dcls_vision.utils.io import atomic_write_text

PROG = "downstream_flops.py"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", metavar="CONFIG", help="mmdet / mmseg configs (configs/downstream/)")
    parser.add_argument(
        "--size", nargs=2, type=int, metavar=("W", "H"), help="input size (default: 1280 800 det, 2048 512 seg)"
    )
    parser.add_argument(
        "--backbone", metavar="TIMM_NAME", help="replace the backbone, e.g. convnext_tiny: the -dcls config's baseline"
    )
    parser.add_argument("--out", help="also write the JSON lines to this file (atomically)")
    return parser.parse_args(argv)


def count(config: str, size: tuple[int, int] | None, backbone: str | None = None) -> dict[str, Any]:
    """One config's figures (the whole model's parameters, forward, construction)."""
    from dcls_vision.analysis.flops import analyse
    from dcls_vision.downstream import complexity

    model, cfg = complexity.load_model(config, backbone)
    forward, device = complexity.counting(cfg)
    shape = complexity.input_shape(cfg, size)
    result = analyse(model, shape, forward, device)
    return {
        "config": str(config),
        "model": type(model).__name__,
        "backbone": cfg.model.backbone.get("model_name", cfg.model.backbone.type),
        "size_wh": [shape[3], shape[2]],
        **result,
    }


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    if args.size and min(args.size) < 32:
        raise CliError(f"--size {args.size[0]} {args.size[1]} is too small; allowed: W H of at least 32 pixels")
    rows = []
    for config in args.configs:
        rows.append(count(config, tuple(args.size) if args.size else None, args.backbone))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        atomic_write_text(Path(args.out), "".join(json.dumps(r) + "\n" for r in rows))
    return rows


if __name__ == "__main__":
    run(main, None)
