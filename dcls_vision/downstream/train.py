"""Fine-tune a detector / segmentor with a DCLS backbone: ``python -m dcls_vision.downstream.train CONFIG``.

    python -m dcls_vision.downstream.train CONFIG [--work-dir DIR] [--data-root DIR]
        [--backbone-checkpoint last.pth [--checkpoint-key ema]] [--resume [CKPT]] [--cfg-options K=V ...]
    torchrun --nproc_per_node 8 -m dcls_vision.downstream.train CONFIG ...      # multi-GPU
    srun --ntasks-per-node 8 --gpus-per-task 1 python -m dcls_vision.downstream.train CONFIG ...   # SLURM

Exit codes: 0 done, 2 bad argument (one line on stderr), 4 a checkpoint could not be written (one line; the previous
checkpoint is intact).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.models.hub import hub_source_exists, is_hub_source

from .cli import CliError, add_common_args, ensure_hooks, load_config, run, setup_distributed

PROG = "python -m dcls_vision.downstream.train"  # argparse prog and the error-line prefix


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    add_common_args(parser)
    parser.add_argument("--backbone-checkpoint", help="our trainer's last.pth / best.pth / best_ema.pth")
    parser.add_argument(
        "--checkpoint-key",
        choices=("model", "ema"),
        default=None,
        help="weights of --backbone-checkpoint to load (default: the config's, 'model')",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume from the work dir's latest checkpoint, or from the given one",
    )
    return parser.parse_args(argv)


def build_runner(argv: Sequence[str] | None = None) -> Any:
    """The configured mmengine Runner (process group joined), without training it."""
    args = parse_args(argv)
    given = args.backbone_checkpoint
    exists = given and (hub_source_exists(given) if is_hub_source(given) else Path(given).is_file())
    if given and not exists:
        raise CliError(
            f"--backbone-checkpoint {given!r} does not exist; allowed: a last.pth / best.pth / best_ema.pth "
            "written by `python train.py`, any checkpoint file the model factory reads, or a timm Hub model "
            "local-dir:FOLDER / hf-hub:ORG/NAME"
        )
    launcher, _, _ = setup_distributed(args.launcher)
    cfg = load_config(args, launcher)
    if args.backbone_checkpoint:
        cfg.model.backbone.checkpoint = args.backbone_checkpoint
    if args.checkpoint_key:
        cfg.model.backbone.checkpoint_key = args.checkpoint_key
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        if not Path(args.resume).is_file():
            raise CliError(f"--resume {args.resume!r} does not exist; allowed: a checkpoint of this work dir")
        cfg.resume, cfg.load_from = True, args.resume
    ensure_hooks(cfg)
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg)


def main(argv: Sequence[str] | None = None) -> Any:
    runner = build_runner(argv)
    runner.train()
    return runner


if __name__ == "__main__":
    run(main, None)
