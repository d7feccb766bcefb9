"""Effective receptive field (thesis §2.12, Luo et al. 2016) of a model on a folder of images (PNG + JSON).

For each image: the gradient of the central unit of a feature map (summed over channels) with respect to
the input; its magnitude, summed over input channels, is averaged over the images. The JSON gives the peak
and its offset from the centre and RepLKNet's high-contribution area ratios (area of the smallest square
around the centre holding 20/30/50/99 % of the total, over the input area); ``erf.npy`` holds the map.

    python tools/erf.py --checkpoint outputs/quickstart/RUN --images my_images/ --num-images 50
    python tools/erf.py --model convnext_tiny_dcls_gauss --images val_images/ --img-size 1024 --layer stages.2
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import add_model_args, add_out_arg, make_parser, positive_int, run_tool, write_json

REDUCTIONS = ("abs", "relu")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("erf.py", __doc__)
    add_model_args(parser)
    parser.add_argument("--images", required=True, metavar="DIR", help="folder of images (searched recursively)")
    parser.add_argument("--num-images", type=positive_int, default=50, help="images used, sorted by path (default 50)")
    parser.add_argument("--img-size", type=positive_int, default=None, help="input side (default: the model's)")
    parser.add_argument(
        "--layer",
        default=None,
        metavar="NAME",
        help="module whose output's central unit is used (default: forward_features)",
    )
    parser.add_argument(
        "--reduce",
        choices=REDUCTIONS,
        default="abs",
        help="gradient magnitude (abs, Luo et al.) or positive part (relu, RepLKNet's script)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=8)
    add_out_arg(parser, "erf")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from dcls_vision.analysis import plots
    from dcls_vision.analysis.erf import erf_map, load_images, summarise
    from dcls_vision.analysis.loading import load

    loaded = load(args.model, args.checkpoint, args.ema, args.checkpoint_model)
    size = (args.img_size, args.img_size) if args.img_size else loaded.img_size
    images = load_images(args.images, size, loaded.in_chans, loaded.mean, loaded.std, args.num_images)
    erf = erf_map(loaded.model, images, args.layer, args.reduce, args.batch_size)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "erf.npy", erf.numpy())
    title = f"ERF of {loaded.name} ({args.layer or 'forward_features'}), {len(images)} images at {size[0]}x{size[1]}"
    png = plots.erf_plot(erf.numpy(), title, out / "erf.png")
    return {
        "tool": "erf",
        "model": loaded.describe(),
        "images": len(images),
        "input_size": list(size),
        "layer": args.layer or "forward_features",
        "reduce": args.reduce,
        **summarise(erf),
        "npy": str(out / "erf.npy"),
        "png": str(png),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()

    def go(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        write_json(result, Path(args.out), "erf.json")
        return result

    return run_tool(go, parser, argv)


if __name__ == "__main__":
    main()
