"""Training runs on SLURM: compose and validate the config here, then queue a :class:`TrainJob`.

The config is composed and validated before anything is queued, with ``${now:}`` and the run dir resolved once,
so every task and every requeue of the job trains into the same run dir. The job is a
:class:`submitit.helpers.Checkpointable`: on a preemption/time-limit signal the trainer saves ``last.pth`` at
the next step, submitit requeues the job, and the rerun resumes from it (see ``dcls_vision/engine/preemption.py``).
The run dir gets ``launch.json`` (what was submitted), ``command.sh`` (the command that reproduces it) and
``slurm/`` (submitit's batch script, pickles and per-task logs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf

from dcls_vision.utils.paths import config_dir as _config_dir

from .options import LaunchError, LaunchOptions, to_argv
from .slurm import Launch, exit_wait_s, preflight, queue, require_sbatch, set_threads


def compose_config(overrides: list[str], config_dir: Path | None = None) -> DictConfig:
    """The training config as ``train.py`` would compose it, validated, with the run dir made absolute
    (``config_dir``: the package's ``configs/`` by default)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from dcls_vision.engine.config import ConfigError, composition_error_line, validate_config

    if any(o.lstrip("+~").startswith("hydra") for o in overrides):
        bad = next(o for o in overrides if o.lstrip("+~").startswith("hydra"))
        raise LaunchError(
            f"{bad!r}: hydra.* settings do not apply here; allowed: training overrides "
            "(use `python train.py -m hydra/launcher=slurm ...` for Hydra's launcher)"
        )
    try:
        with initialize_config_dir(config_dir=str(config_dir or _config_dir()), version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except HydraException as e:
        raise LaunchError(composition_error_line(e) or str(e).splitlines()[0]) from e  # schema type/key
    OmegaConf.resolve(cfg)  # ${now:...} once, here
    out = Path(str(cfg.trainer.output_dir)).expanduser().resolve()
    cfg.trainer.output_dir = str(out)
    try:
        validate_config(cfg)
    except ConfigError as e:
        raise LaunchError(str(e)) from e
    return cfg


class TrainJob(submitit.helpers.Checkpointable):
    """One task of the job: train the resolved config (DDP from the SLURM step's variables)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def __call__(self) -> dict[str, Any]:
        from dcls_vision.engine import train
        from dcls_vision.engine.preemption import EXIT_PREEMPTED, Preempted

        set_threads()
        try:
            return train(OmegaConf.create(self.config))
        except Preempted as e:
            # last.pth is saved and the requeue is under way; ending without a result (not an exception) keeps
            # submitit from reporting the job as finished
            raise SystemExit(EXIT_PREEMPTED) from e


def submit(
    opts: LaunchOptions, overrides: list[str], argv: list[str] | None = None, config_dir: Path | None = None
) -> Launch:
    """Compose + validate the config, queue the job, write ``launch.json`` and ``command.sh`` into the run dir."""
    require_sbatch()
    cfg = compose_config(overrides, config_dir)
    preflight(opts)
    opts.task_exit_wait_s = exit_wait_s(int(cfg.trainer.get("dist_timeout_s", 1800)))
    container = OmegaConf.to_container(cfg, resolve=True)
    argv = list(argv) if argv is not None else [*to_argv(opts), *overrides]
    return queue(
        TrainJob(container),
        opts,
        Path(cfg.trainer.output_dir),
        f"dcls-{cfg.experiment_name}",
        argv,
        overrides,
        resubmit_hint=f"add trainer.output_dir={cfg.trainer.output_dir} to continue this one",
    )


__all__ = ["TrainJob", "compose_config", "submit"]
