"""Shared parts of the ``train`` / ``test`` entry points: arguments, config preparation, process group.

Launchers: ``none`` (one process), ``pytorch`` (torchrun's RANK/WORLD_SIZE/LOCAL_RANK/MASTER_*), ``slurm``
(``srun``: SLURM_PROCID/NTASKS/LOCALID/JOB_NODELIST, exported as torchrun's variables with submitit's
SLURM environment parser), ``auto`` (the default: whichever environment is present). The process group
is created here with the trainer's :func:`~dcls_vision.engine.distributed.init_distributed` (nccl on GPUs, gloo
on CPUs), so the same command runs on a CPU box, a GPU node and a SLURM cluster.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.utils.errors import UserError, run_cli

LAUNCHERS = ("auto", "none", "pytorch", "slurm")
# mmengine imports pkg_resources (needed for `mmdet::` base configs; setuptools < 81 is pinned for it).
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)


class CliError(UserError):
    """A bad command-line value: printed as one line, exit code 2."""


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="an mmengine config, e.g. configs/downstream/coco/...py")
    parser.add_argument("--work-dir", help="logs and checkpoints (default: outputs/downstream/<config name>)")
    parser.add_argument(
        "--data-root",
        help="dataset root: replaces the config's data_root in every dataloader and evaluator annotation path",
    )
    parser.add_argument(
        "--cfg-options",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="override config keys, e.g. train_dataloader.batch_size=4",
    )
    parser.add_argument("--launcher", default="auto", help=f"one of {', '.join(LAUNCHERS)} (default auto)")


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    from mmengine.config import DictAction

    namespace = argparse.Namespace()
    action = DictAction(option_strings=["--cfg-options"], dest="options")
    for item in items:
        if "=" not in item:
            raise CliError(f"--cfg-options {item!r} is invalid; allowed: KEY=VALUE pairs")
    action(None, namespace, list(items))
    return dict(getattr(namespace, "options", {}) or {})


def resolve_launcher(launcher: str) -> str:
    """``auto`` → ``pytorch`` under torchrun (WORLD_SIZE > 1), ``slurm`` in a multi-task ``srun`` step, else ``none``.

    Only a job step counts (SLURM_STEP_ID set): the batch script itself also has SLURM_PROCID=0 and
    SLURM_NTASKS=N and must not wait for N-1 peers that never come.
    """
    if launcher not in LAUNCHERS:
        raise CliError(f"--launcher {launcher!r} is not supported; allowed: {', '.join(LAUNCHERS)}")
    if launcher != "auto":
        return launcher
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) > 1:
        return "pytorch"
    tasks = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    if tasks > 1 and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return "slurm"
    return "none"


def export_slurm_env() -> None:
    """torchrun's variables from an ``srun`` step's (submitit's SLURM parser).

    Rendezvous as the trainer's: the job's first node and job-id port, never a MASTER_ADDR/PORT copied by sbatch
    from the submitting shell (127.0.0.1 there leaves node2 waiting); DCLS_MASTER_ADDR/PORT set them on purpose.
    """
    from submitit.slurm.slurm import SlurmJobEnvironment

    from dcls_vision.engine.distributed import export_slurm_rendezvous

    job = SlurmJobEnvironment()
    env = os.environ
    env["RANK"], env["LOCAL_RANK"] = str(job.global_rank), str(job.local_rank)
    env["WORLD_SIZE"] = env.get("SLURM_STEP_NUM_TASKS") or str(job.num_tasks)  # a step may use fewer tasks
    export_slurm_rendezvous()


def setup_distributed(launcher: str) -> tuple[str, int, int]:
    """Join the process group for ``launcher``; returns (mmengine launcher, rank, world size)."""
    launcher = resolve_launcher(launcher)
    if launcher == "none":
        return "none", 0, 1
    if launcher == "slurm" and "RANK" not in os.environ:
        if "SLURM_PROCID" not in os.environ:
            raise CliError(
                "--launcher slurm but no SLURM_PROCID in the environment; allowed: run under srun, "
                "or --launcher pytorch under torchrun"
            )
        export_slurm_env()
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise CliError(
            f"--launcher {launcher} but RANK/WORLD_SIZE are not set; allowed: start with torchrun "
            "(pytorch) or srun (slurm), or --launcher none"
        )
    from dcls_vision.engine.distributed import init_distributed

    rank, world, _, _ = init_distributed()
    return ("pytorch" if world > 1 else "none"), rank, world


def innermost_dataset(dataset: Any) -> Any:
    """The dataset config under wrappers (RepeatDataset & co.), where ``pipeline`` and ``metainfo`` live."""
    while isinstance(dataset, dict) and isinstance(dataset.get("dataset"), dict):  # RepeatDataset & co.
        dataset = dataset["dataset"]
    return dataset


def set_data_root(cfg: Any, root: str) -> None:
    """Point every dataloader at ``root`` and rebase evaluator ``ann_file`` paths that started at the old root."""
    new = root.rstrip("/") + "/"
    old = cfg.get("data_root")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        loader = cfg.get(key)
        if loader and loader.get("dataset") is not None:
            innermost_dataset(loader["dataset"])["data_root"] = new
    for key in ("val_evaluator", "test_evaluator"):
        evaluators = cfg.get(key)
        for ev in evaluators if isinstance(evaluators, list) else [evaluators]:
            if ev and isinstance(ev.get("ann_file"), str) and old and ev["ann_file"].startswith(old):
                ev["ann_file"] = new + ev["ann_file"][len(old) :]
    cfg.data_root = new


def load_config(args: argparse.Namespace, launcher: str) -> Any:
    """The config file with the command-line changes applied, adapted to this machine."""
    from mmengine.config import Config

    path = Path(args.config)
    if not path.is_file():
        raise CliError(
            f"config {args.config!r} does not exist; allowed: an mmengine config file such as "
            "configs/downstream/coco/cascade-mask-rcnn_convnext-t-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py"
        )
    if args.data_root and not Path(args.data_root).is_dir():
        raise CliError(f"--data-root {args.data_root!r} is not a directory; allowed: an existing dataset root")
    cfg = Config.fromfile(str(path))
    options = _parse_options(args.cfg_options)
    if options:
        cfg.merge_from_dict(options)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    cfg.work_dir = args.work_dir or cfg.get("work_dir") or str(Path("outputs") / "downstream" / path.stem)
    cfg.launcher = launcher
    _adapt_to_machine(cfg, launcher)
    return cfg


def _adapt_to_machine(cfg: Any, launcher: str) -> None:
    """CPU-only machines: plain OptimWrapper instead of AMP (mmengine's AMP wrapper needs a GPU), gloo, and a
    DDP wrapper that accepts CPU modules."""
    import torch
    from mmengine.logging import print_log

    if torch.cuda.is_available():
        return
    wrapper = cfg.get("optim_wrapper")
    if wrapper and wrapper.get("type") == "AmpOptimWrapper":
        wrapper["type"] = "OptimWrapper"
        for key in ("loss_scale", "dtype"):
            wrapper.pop(key, None)
        print_log("no CUDA device: AmpOptimWrapper -> OptimWrapper (float32)", logger="current")
    if launcher == "pytorch":
        cfg.setdefault("env_cfg", {}).setdefault("dist_cfg", {})["backend"] = "gloo"
        cfg.model_wrapper_cfg = dict(
            type="DclsCPUDistributedDataParallel",
            broadcast_buffers=False,
            find_unused_parameters=bool(cfg.get("find_unused_parameters", False)),
        )


def ensure_hooks(cfg: Any) -> None:
    """Registrations imported (even if a config forgot ``custom_imports``), safe-checkpoint hook always, and the
    clamp hook for DCLS backbones (a config that forgot it would let positions drift out of their kernels)."""
    from .mm import BACKBONES

    hooks = list(cfg.get("custom_hooks") or [])
    have = {str(h.get("type")).split(".")[-1] for h in hooks}
    backbone_type = str((cfg.model.get("backbone") or {}).get("type", "")).split(".")[-1]
    if backbone_type in {cls.__name__ for cls in BACKBONES} and "DclsClampHook" not in have:
        hooks.append(dict(type="DclsClampHook"))
    if "DclsSafeCheckpointHook" not in have:
        hooks.append(dict(type="DclsSafeCheckpointHook"))
    cfg.custom_hooks = hooks


# The OpenMMLab extra (tools/install_mm.sh): a machine without it gets one line naming the installer, not a traceback.
MM_PACKAGES = ("mmengine", "mmcv", "mmdet", "mmseg", "pycocotools")


def missing_mm_module(err: BaseException) -> str | None:
    """The OpenMMLab module whose absence caused ``err`` (searched through its causes: mmengine re-raises a failed
    ``custom_imports`` as a plain ImportError), else None."""
    seen: set[int] = set()
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        name = getattr(cur, "name", None) if isinstance(cur, ModuleNotFoundError) else None
        if name and name.split(".")[0] in MM_PACKAGES:
            return name
        cur = cur.__cause__ or cur.__context__
    return None


def run(main: Any, argv: Sequence[str] | None) -> Any:
    """Run ``main(argv)``; bad values become one line ``PROG: error: ...`` (as argparse's) and exit code 2, and so
    does a missing OpenMMLab package (naming ``tools/install_mm.sh``).

    PROG is the entry module's ``PROG`` (its argparse prog), found also when the module runs as ``__main__``.
    """
    prog = getattr(sys.modules.get(main.__module__), "PROG", None) or "dcls_vision.downstream"

    def guarded() -> Any:
        try:
            return main(argv)
        except ImportError as err:
            name = missing_mm_module(err)
            if name is None:
                raise
            raise CliError(
                f"the OpenMMLab extra is not installed (no module {name!r}); allowed: install it with "
                "`bash tools/install_mm.sh` (mmengine, mmcv with compiled ops, mmdet, mmsegmentation)"
            ) from None

    return run_cli(guarded, prog=prog)
