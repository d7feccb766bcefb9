"""Parameters and FLOPs per model, the DCLS kernel construction counted separately (PNG + JSON).

Forward cost is counted on the plain-convolution export of each model (DCLS layers as dense kernels of
their dilated size), with torch's FlopCounterMode on meta tensors: the thesis' convention, whose "FLOPs"
are multiply-adds (ConvNeXt-T 4.5G, ConvNeXt-T-dcls 5.0G): see ``gmacs``; ``gflops`` = 2 x gmacs. The
kernel construction (once per forward pass, whatever the batch) is reported apart.

    python tools/flops.py --models convnext_tiny convnext_tiny_dcls convnext_tiny_dcls_gauss
    python tools/flops.py --checkpoint outputs/quickstart/RUN --out outputs/analysis/flops_run
    python tools/flops.py --models convnext_tiny_dcls:dcls_dilated_kernel_size=23 --img-size 384
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import add_model_args, add_out_arg, make_parser, positive_int, run_tool, write_json


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("flops.py", __doc__)
    add_model_args(parser, many=True)
    parser.add_argument(
        "--img-size", type=positive_int, default=None, help="input side in pixels (default: the model's own, e.g. 224)"
    )
    parser.add_argument(
        "--batch", type=positive_int, default=1, help="batch for the construction share (forward figures are per image)"
    )
    add_out_arg(parser, "flops")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dcls_vision.analysis import plots
    from dcls_vision.analysis.flops import analyse
    from dcls_vision.analysis.loading import load

    specs = [(m, None) for m in args.models or []] + ([(None, args.checkpoint)] if args.checkpoint else [])
    if not specs:
        specs = [("convnext_tiny", None), ("convnext_tiny_dcls", None)]
    results = []
    for spec, checkpoint in specs:
        loaded = load(spec, checkpoint, args.ema, args.checkpoint_model)
        h, w = (args.img_size, args.img_size) if args.img_size else loaded.img_size
        counts = analyse(loaded.model, (args.batch, loaded.in_chans, h, w))
        results.append({"model": loaded.name, "source": loaded.source, **counts})
    base = results[0]
    for row in results[1:]:
        row["gmacs_vs_first"] = row["gmacs"] / base["gmacs"] if base["gmacs"] else None
    out = Path(args.out)
    png = plots.flops_bars(results, out / "flops.png")
    return {
        "tool": "flops",
        "convention": "gmacs = multiply-adds (the thesis' 'FLOPs'); gflops = 2 x gmacs",
        "results": results,
        "png": str(png),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()

    def go(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        write_json(result, Path(args.out), "flops.json")
        return result

    return run_tool(go, parser, argv)


if __name__ == "__main__":
    main()
