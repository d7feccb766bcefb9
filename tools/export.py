"""Export a DCLS model for deployment: plain convolutions, TorchScript and ONNX, each checked for the same
logits as the DCLS model (on a batch of another size than the one traced, so the batch axis stays dynamic).

``conv`` replaces every DCLS layer by the plain convolution of its constructed kernel (a state dict that
loads with weights_only=True); TorchScript and ONNX are exported from that plain model. ONNX runs in
onnxruntime when it is installed. Exit code 1 when a format differs by more than ``--atol``.

    python tools/export.py --checkpoint outputs/quickstart/RUN --out outputs/export/quickstart
    python tools/export.py --model convnext_tiny_dcls_gauss --formats conv onnx --onnx-exporter torchscript
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import add_model_args, add_out_arg, make_parser, positive_int, run_tool, write_json

FORMATS = ("conv", "torchscript", "onnx")
ONNX_EXPORTERS = ("dynamo", "torchscript")


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("export.py", __doc__)
    add_model_args(parser)
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    parser.add_argument(
        "--onnx-exporter",
        choices=ONNX_EXPORTERS,
        default="dynamo",
        help="torch.export-based (dynamo, needs onnxscript; default) or the legacy TorchScript one",
    )
    parser.add_argument("--opset", type=positive_int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--img-size", type=positive_int, default=None, help="input side (default: the model's)")
    parser.add_argument("--batch", type=positive_int, default=2, help="batch used to trace (checked on batch+1)")
    parser.add_argument("--atol", type=float, default=1e-4, help="max |logit difference| allowed (default 1e-4)")
    add_out_arg(parser, "export")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from dcls_vision.analysis.export import export_and_verify
    from dcls_vision.analysis.loading import example_input, load

    loaded = load(args.model, args.checkpoint, args.ema, args.checkpoint_model)
    example = example_input(loaded, args.batch, args.img_size, seed=0)
    check = example_input(loaded, args.batch + 1, args.img_size, seed=1)
    with torch.no_grad():
        result = export_and_verify(
            loaded.model, example, check, Path(args.out), tuple(args.formats), args.onnx_exporter, args.opset, args.atol
        )
    return {"tool": "export", "model": loaded.describe(), **result}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = build_parser()

    def go(args: argparse.Namespace) -> dict[str, Any]:
        result = run(args)
        write_json(result, Path(args.out), "export.json")
        if not result["all_within_atol"]:
            print(f"export.py: error: logits differ by more than --atol {args.atol}", file=sys.stderr)
            sys.exit(1)
        return result

    return run_tool(go, parser, argv)


if __name__ == "__main__":
    main()
