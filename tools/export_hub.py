"""Write a trained run (or a converted / published release) as a timm Hub folder, the way timm users share
weights: ``config.json`` (architecture, num_classes, model_args, pretrained_cfg with mean/std, input size, crop),
``model.safetensors`` and a model card ``README.md`` naming the recipe, the data and the measured top-1. Written
with timm's own ``save_for_hf``; the folder replaces FOLDER in one rename. Prints a JSON report.

    python tools/export_hub.py outputs/train/RUN/best_ema.pth hub/convnext_tiny_dcls --top1 82.4
    python -c "import timm, dcls_vision.models; timm.create_model('local-dir:hub/convnext_tiny_dcls', pretrained=True)"

The same folder pushed to the Hugging Face Hub (``huggingface-cli upload ORG/NAME hub/convnext_tiny_dcls``) is
``hf-hub:ORG/NAME``; eval.py ``checkpoint=``, ``model.init_checkpoint=`` and ``--backbone-checkpoint`` take both.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dcls_vision.analysis.cli import dumps, make_parser, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("export_hub.py", __doc__)
    parser.add_argument("src", metavar="SRC", help="checkpoint or run dir (any format the model factory reads)")
    parser.add_argument("folder", metavar="FOLDER", help="the Hub folder to write")
    parser.add_argument("--model", default=None, metavar="NAME", help="state dicts without a config: NAME[:k=v,...]")
    parser.add_argument("--ema", action="store_true", help="the EMA weights of SRC")
    parser.add_argument(
        "--top1", type=float, default=None, help="measured top-1 for the card (default: the one best*.pth stores)"
    )
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dcls_vision.analysis.hub_export import export_hub_folder

    report = export_hub_folder(args.src, args.folder, args.model, args.ema, args.top1)
    print(dumps(report), flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
