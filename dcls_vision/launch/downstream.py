"""Submit a downstream fine-tuning (mmdet / mmseg) to SLURM with submitit:

    python -m dcls_vision.launch downstream CONFIG [train arguments] [SLURM options]

Train arguments are those of ``python -m dcls_vision.downstream.train`` (``--work-dir``, ``--data-root``,
``--backbone-checkpoint``, ``--checkpoint-key``, ``--resume``, ``--cfg-options``); SLURM options are the
``key=value`` options of the training launcher (``nodes=``, ``gpus_per_node=``, ``partition=``, ``time=``,
``wait=true`` ...). Each task joins the SLURM step's process group (one process per GPU). The config is loaded
and the work dir made absolute before anything is queued; the work dir gets ``launch.json``, ``command.sh``
and ``slurm/<job id>/``. On a preemption or time limit the job is requeued and resumes from the work dir's
latest mmengine checkpoint (``--resume``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import submitit

from .options import LaunchError, LaunchOptions
from .slurm import Launch, preflight, queue, require_sbatch, set_threads


def to_argv(args: argparse.Namespace) -> list[str]:
    """The ``dcls_vision.downstream.train`` command line of parsed ``args``."""
    argv = [args.config, "--launcher", args.launcher]
    for flag, value in (
        ("--work-dir", args.work_dir),
        ("--data-root", args.data_root),
        ("--backbone-checkpoint", args.backbone_checkpoint),
        ("--checkpoint-key", args.checkpoint_key),
    ):
        if value is not None:
            argv += [flag, value]
    if args.resume == "auto":
        argv.append("--resume")
    elif args.resume:
        argv += ["--resume", args.resume]
    if args.cfg_options:
        argv += ["--cfg-options", *args.cfg_options]
    return argv


class DownstreamJob(submitit.helpers.Checkpointable):
    """One task: ``dcls_vision.downstream.train`` with ``train_argv``; requeued runs resume (``--resume``)."""

    def __init__(self, train_argv: list[str]) -> None:
        self.train_argv = list(train_argv)

    def __call__(self) -> dict[str, Any]:
        import torch.distributed as dist

        from dcls_vision.downstream.train import main

        set_threads()
        runner = main(self.train_argv)
        metrics = {
            k[len("val/") :]: float(v.current())
            for k, v in runner.message_hub.log_scalars.items()
            if k.startswith("val/")
        }
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return {
            "rank": rank,
            "work_dir": str(runner.work_dir),
            "iter": runner.iter,
            "epoch": runner.epoch,
            "metrics": metrics,
        }

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        from dcls_vision.downstream.train import parse_args

        args_ns = parse_args(self.train_argv)
        args_ns.resume = "auto"  # the work dir's latest checkpoint (mmengine writes them at its intervals)
        return submitit.helpers.DelayedSubmission(DownstreamJob(to_argv(args_ns)))


def _existing_file(path: str, flag: str) -> str:
    """``path`` made absolute (the job may start elsewhere), or a LaunchError if there is no such file."""
    if not Path(path).is_file():
        raise LaunchError(f"{flag} {path!r} does not exist; allowed: an existing checkpoint file")
    return str(Path(path).resolve())


def _existing_source(source: str, flag: str) -> str:
    """A checkpoint file (made absolute) or a timm Hub source (``local-dir:`` made absolute; ``hf-hub:`` as is)."""
    from dcls_vision.models.hub import absolute_hub_source, hub_source_exists, is_hub_source  # torch/timm: lazily

    if not is_hub_source(source):
        return _existing_file(source, flag)
    absolute = absolute_hub_source(source, Path.cwd())
    if not hub_source_exists(absolute):
        raise LaunchError(f"{flag} {source!r} does not exist; allowed: a timm Hub folder holding config.json")
    return absolute


def submit_downstream(opts: LaunchOptions, train_args: list[str], argv: list[str]) -> Launch:
    """Validate ``train_args`` (config loaded, paths checked), then queue a :class:`DownstreamJob`."""
    from dcls_vision.downstream.cli import CliError, load_config
    from dcls_vision.downstream.train import parse_args

    require_sbatch()
    if not train_args or train_args[0].startswith("-"):
        raise LaunchError(
            "downstream needs a config first; allowed: python -m dcls_vision.launch downstream "
            "configs/downstream/<coco|ade20k>/<name>.py [train arguments] [SLURM options]"
        )
    try:
        args = parse_args(train_args)
    except SystemExit:
        raise LaunchError(
            f"downstream train arguments {train_args!r} are invalid; allowed: those of "
            "python -m dcls_vision.downstream.train --help"
        ) from None
    if args.backbone_checkpoint:
        args.backbone_checkpoint = _existing_source(args.backbone_checkpoint, "--backbone-checkpoint")
    if args.resume not in (None, "auto"):
        args.resume = _existing_file(args.resume, "--resume")
    try:
        cfg = load_config(args, "none")
    except CliError as e:
        raise LaunchError(str(e)) from None
    work_dir = Path(cfg.work_dir).expanduser().resolve()
    args.work_dir = str(work_dir)
    if args.data_root:
        args.data_root = str(Path(args.data_root).resolve())
    args.config = str(Path(args.config).resolve())
    args.launcher = "auto"  # slurm in a multi-task step, none for a single task
    preflight(opts)
    return queue(
        DownstreamJob(to_argv(args)),
        opts,
        work_dir,
        f"dcls-{Path(args.config).stem}"[:64],
        argv,
        train_args,
        resubmit_hint=f"add --resume to continue in {work_dir}",
    )
