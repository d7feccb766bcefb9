"""Theoretical receptive field per block (thesis Table 6.1), optionally the effective one of learned positions.

The default reproduces the table for ConvNeXt-T (7x7), ConvNeXt-T-dcls (dilated 17) and the dilated-23
variant: the RF of each block's output in input pixels, DCLS layers counted at their dilated size. With
``--effective`` a DCLS layer counts only the extent its learned positions use (kernel taps above
``--threshold`` x the kernel's peak), e.g. for a trained checkpoint.

    python tools/receptive_field.py                                   # Table 6.1: the three ConvNeXt-T
    python tools/receptive_field.py --models resnet50 resnet50_dcls --img-size 224
    python tools/receptive_field.py --checkpoint outputs/quickstart/RUN --effective
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import add_model_args, add_out_arg, make_parser, positive_int, run_tool, write_json

TABLE_6_1 = ["convnext_tiny", "convnext_tiny_dcls", "convnext_tiny_dcls_gauss"]


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("receptive_field.py", __doc__)
    add_model_args(parser, many=True)
    parser.add_argument("--img-size", type=positive_int, default=None, help="input side (default: the model's)")
    parser.add_argument(
        "--blocks",
        default=None,
        metavar="REGEX",
        help="module names to report (default: stems, downsamplers, blocks; innermost matches)",
    )
    parser.add_argument(
        "--effective", action="store_true", help="also the RF with DCLS layers at the extent of their learned positions"
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=0.01,
        help="--effective: kernel taps above this fraction of the peak count (default 0.01)",
    )
    add_out_arg(parser, "receptive_field")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dcls_vision.analysis import plots
    from dcls_vision.analysis.errors import AnalysisError
    from dcls_vision.analysis.loading import load
    from dcls_vision.analysis.receptive_field import DEFAULT_BLOCKS, trace

    if not 0 < args.threshold < 1:
        raise AnalysisError(f"--threshold {args.threshold} is invalid; allowed: a fraction in (0, 1)")
    specs = [(m, None) for m in args.models or []] + ([(None, args.checkpoint)] if args.checkpoint else [])
    specs = specs or [(m, None) for m in TABLE_6_1]
    tables = []
    for spec, checkpoint in specs:
        loaded = load(spec, checkpoint, args.ema, args.checkpoint_model)
        h, w = (args.img_size, args.img_size) if args.img_size else loaded.img_size
        shape = (1, loaded.in_chans, h, w)
        try:
            table = trace(loaded.model, shape, args.blocks or DEFAULT_BLOCKS)
            if args.effective:
                table["effective_blocks"] = trace(
                    loaded.model, shape, args.blocks or DEFAULT_BLOCKS, effective=True, threshold=args.threshold
                )["blocks"]
        except ValueError as e:
            raise AnalysisError(f"{loaded.name}: {e}") from e
        tables.append({"model": loaded.name, "source": loaded.source, **table})
    names = list(dict.fromkeys(b["block"] for t in tables for b in t["blocks"]))
    rows = []
    for name in names:
        row: dict[str, Any] = {"block": name}
        for t in tables:
            hit = next((b for b in t["blocks"] if b["block"] == name), None)
            row[t["model"]] = None if hit is None else hit["rf_size"]
            eff = next((b for b in t.get("effective_blocks") or [] if b["block"] == name), None)
            if eff is not None:
                row[f"{t['model']} (effective)"] = eff["rf_size"]
        rows.append(row)
    png = plots.rf_lines(tables, Path(args.out) / "receptive_field.png")
    return {
        "tool": "receptive_field",
        "note": "RF size in input pixels of each block's output units (image "
        "border ignored); DCLS layers at their dilated size",
        "table": rows,
        "models": tables,
        "png": str(png),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()

    def go(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        write_json(result, Path(args.out), "receptive_field.json")
        return result

    return run_tool(go, parser, argv)


if __name__ == "__main__":
    main()
