"""Convert a checkpoint (a published ConvNeXt-dcls release, or any file the model factory reads) into our
trainer's format, print a JSON report, and optionally check top-1 on ImageNet val.

DST ending in .pth/.pt is a weights_only-loadable torch file, .safetensors a safetensors file; both hold the
weights and a full run config, so train.py, eval.py, the downstream backbones and the analysis tools read it.
The report: the entry taken (``model_ema`` or ``model`` of a training checkpoint) and the entries ignored,
tensors mapped / skipped, shape changes, positions clamped (convention v0), the max logit difference between the
release as its own construction computes it and the converted model on a random batch, the same for the written
file reloaded.
``--verify-val`` evaluates top-1 on N images and prints a WARNING line when it is more than 2 points under the
published figure (thesis Table 2.2: T 82.5, S 83.7, B 84.1): the one check a wrong convention cannot pass.

    python tools/convert_checkpoint.py convnext_dcls_tiny_1k_224_ema.pth weights/convnext_tiny_dcls.pth \\
        --model convnext_tiny_dcls --verify-val /datasets/imagenet/val --limit 2000
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import dumps, make_parser, non_negative_int, positive_int, run_tool


def build_parser() -> argparse.ArgumentParser:
    from dcls_vision.models.release import CONVENTIONS

    parser = make_parser("convert_checkpoint.py", __doc__)
    parser.add_argument("src", metavar="SRC", help="checkpoint to convert (.pth/.pt/.bin/.safetensors)")
    parser.add_argument("dst", metavar="DST", help="file to write (.pth, .pt or .safetensors), atomically")
    parser.add_argument(
        "--model",
        default=None,
        metavar="NAME",
        help="our model (checked for a release; state dicts: NAME[:num_classes=N,...])",
    )
    parser.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default=None,
        help="dcls construction the file was trained with: v0 (the releases: 2022 CUDA code, positions clamped "
        "into the kernel; default without SIG), v0-transposed (dcls 0.0.2-0.0.5 bilinear), gauss (default with SIG)",
    )
    parser.add_argument(
        "--ema",
        action="store_true",
        help="take the EMA weights (model_ema / ema entry); default: EMA only where the file name says ema",
    )
    parser.add_argument(
        "--dilated-kernel-size", type=positive_int, default=None, help="release's dilated kernel (default 17 / 23)"
    )
    parser.add_argument("--verify-val", default=None, metavar="DIR", help="ImageNet val folder (1000 synset dirs)")
    parser.add_argument("--limit", type=positive_int, default=None, metavar="N", help="images of --verify-val")
    parser.add_argument(
        "--published-top1", type=float, default=None, help="expected top-1 (default: thesis Table 2.2 for T/S/B)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=32)
    parser.add_argument("--workers", type=non_negative_int, default=0)
    parser.add_argument("--device", default="cpu", help="device for --verify-val (cpu, cuda)")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dcls_vision.analysis.convert import PUBLISHED_TOP1, ConvertError, convert_checkpoint, verify_val

    if args.limit is not None and args.verify_val is None:
        raise ConvertError(f"--limit {args.limit} without --verify-val; allowed: --verify-val DIR --limit N")
    report, model = convert_checkpoint(
        args.src,
        args.dst,
        args.model,
        args.convention,
        args.dilated_kernel_size,
        use_ema=args.ema,
        val_root=args.verify_val,
    )
    if args.verify_val is not None:
        published = args.published_top1
        if published is None and not report["model_kwargs"]:
            published = PUBLISHED_TOP1.get(report["model"])
        data = _data(Path(args.dst))
        report["verify_val"] = verify_val(
            model, data, args.verify_val, args.limit, published, args.batch_size, args.workers, args.device
        )
    print(dumps(report), flush=True)
    check = report.get("verify_val") or {}
    if check.get("ok") is False:
        print(
            f"WARNING: top-1 {check['top1']:.2f} % on {check['images']} images of {check['root']} is below "
            f"{check['warn_below']:.1f} (published {check['published_top1']} - 2) for {report['model']}: the "
            "conversion (--convention, --dilated-kernel-size) or the val folder is wrong",
            file=sys.stderr,
            flush=True,
        )
    return report


def _data(dst: Path) -> dict[str, Any]:
    """The data group of the written file's run config (what eval.py will use: size, crop, mean/std)."""
    from dcls_vision.utils.io import load_checkpoint

    return dict(load_checkpoint(dst)["config"]["data"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
