"""Evaluate a fine-tuned detector / segmentor: ``python -m dcls_vision.downstream.test CONFIG CHECKPOINT``.

Prints the metrics (COCO bbox/segm AP, mIoU, ...) as one JSON line on rank 0. Same launchers as ``train``
(``torchrun ... -m dcls_vision.downstream.test``, ``srun ...``). Exit codes: 0 done, 2 bad argument.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli import CliError, add_common_args, ensure_hooks, load_config, run, setup_distributed

PROG = "python -m dcls_vision.downstream.test"  # argparse prog and the error-line prefix


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("checkpoint", help="a checkpoint written by `dcls_vision.downstream.train` (iter_N.pth ...)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
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
    from mmengine.runner import Runner

    metrics = Runner.from_cfg(cfg).test()
    if rank == 0:
        print(
            json.dumps({k: float(v) if isinstance(v, (int, float)) else str(v) for k, v in metrics.items()}), flush=True
        )
    return metrics


if __name__ == "__main__":
    run(main, None)
