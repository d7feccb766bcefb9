"""Evaluate a fine-tuned detector / segmentor: ``python -m dcls_vision.downstream.test CONFIG CHECKPOINT``.

Prints the metrics (COCO bbox/segm AP, mIoU, ...) as one JSON line on rank 0. ``--tta [convnext|convnext-dcls]``:
multi-scale (0.5-1.75 × the test scale) + flip testing by ConvNeXt's or the ConvNeXt-dcls fork's protocol, see
:mod:`dcls_vision.downstream.tta`. Same launchers as ``train``
(``torchrun ... -m dcls_vision.downstream.test``, ``srun ...``). Exit codes: 0 done, 2 bad argument.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli import CliError, add_common_args, ensure_hooks, load_config, run, setup_distributed
from .tta import DEFAULT_PROTOCOL, PROTOCOLS

PROG = "python -m dcls_vision.downstream.test"  # argparse prog and the error-line prefix


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("checkpoint", help="a checkpoint written by `dcls_vision.downstream.train` (iter_N.pth ...)")
    parser.add_argument(
        "--tta",
        nargs="?",
        const=DEFAULT_PROTOCOL,
        default=None,
        choices=tuple(PROTOCOLS),
        metavar="PROTOCOL",
        help="multi-scale (0.5, 0.75, 1.0, 1.25, 1.5, 1.75 x the test scale) + flip: segmentation and box detectors; "
        + "; ".join(f"{k}: {v}" for k, v in PROTOCOLS.items())
        + f" (default {DEFAULT_PROTOCOL})",
    )
    return parser.parse_args(argv)


def build_runner(argv: Sequence[str] | None = None) -> tuple[Any, int]:
    """The test Runner for the command line ``argv`` (the checkpoint loads when it runs) and this process' rank."""
    args = parse_args(argv)
    if not Path(args.checkpoint).is_file():
        raise CliError(
            f"checkpoint {args.checkpoint!r} does not exist; allowed: a checkpoint written by "
            "python -m dcls_vision.downstream.train"
        )
    launcher, rank, _ = setup_distributed(args.launcher)
    cfg = load_config(args, launcher)
    cfg.load_from = args.checkpoint
    cfg.model.backbone.checkpoint = None  # the fine-tuned weights come from the checkpoint
    ensure_hooks(cfg)
    if args.tta:
        from .tta import apply_tta

        apply_tta(cfg, args.tta)
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg), rank


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    runner, rank = build_runner(argv)
    metrics = runner.test()
    if rank == 0:
        print(
            json.dumps({k: float(v) if isinstance(v, (int, float)) else str(v) for k, v in metrics.items()}), flush=True
        )
    return metrics


if __name__ == "__main__":
    run(main, None)
