"""A run dir's checkpoints: what goes into them, atomic ``last``/``best`` saves, and where a run resumes from.

``last.pth`` holds everything a run needs to continue exactly (model, EMA, optimizer, scheduler, scaler,
counters, every rank's RNG state, sampler position, resolved config); ``epoch_XXXX.pth`` are hard links to it,
pruned to ``trainer.keep_last``; ``best.pth`` / ``best_ema.pth`` hold weights, epoch, metrics and config only.
All writes are rank 0's, atomic (:func:`~dcls_vision.engine.checkpoint.atomic_save`) and followed by a sha256
sidecar (``<file>.sha256``); a failed write stops every rank with one line (:class:`SaveError`, exit code 4).
At resume a run-dir checkpoint that fails its checksum or does not load is reported and skipped for the newest
intact one (``last.pth``, then ``epoch_XXXX.pth`` newest first); with none intact the run stops with one line.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dcls_vision.models.finetune_init import init_from_checkpoint
from dcls_vision.utils.errors import SaveError, UserError

from . import checkpoint as ckpt
from .distributed import barrier, broadcast_object
from .ema import ModelEma
from .resume_config import config_changes, resume_config_notes, schedule_changes


class CheckpointError(UserError):
    """No intact checkpoint to resume from (each candidate torn, corrupt or failing its checksum)."""


@dataclass
class TrainState:
    """Counters and best metrics that go into every checkpoint."""

    next_epoch: int = 0
    next_batch: int = 0  # micro-batches already done in ``next_epoch`` (mid-epoch checkpoints)
    global_step: int = 0  # optimizer updates so far
    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": -1, "ema_top1": -1.0, "ema_epoch": -1})


@dataclass
class Resumed:
    """What :meth:`CheckpointManager.resume` restored: where from, why, the counters, this rank's RNG state."""

    state: TrainState
    path: Path | None = None
    note: str | None = None
    rng: dict[str, Any] | None = None  # set for a full checkpoint written by the same world size
    wandb_id: str | None = None


def describe_position(state: dict[str, Any] | TrainState) -> str:
    """Where a checkpoint resumes, as the log says it: ``end of epoch 1, global step 4`` / ``epoch 2, batch 3, ...``."""
    if isinstance(state, TrainState):
        nxt, batch, step = state.next_epoch, state.next_batch, state.global_step
    else:
        nxt, batch, step = int(state["next_epoch"]), int(state["next_batch"]), int(state["global_step"])
    where = f"epoch {nxt + 1}, batch {batch}" if batch else f"end of epoch {nxt}"
    return f"{where}, global step {step}"


def choose_resume_source(run_dir_last: Path | None, seeds: list[tuple[str, Any]]) -> tuple[Path | None, str | None]:
    """The checkpoint a run starts from, and one line saying why.

    The run dir's own ``last.pth`` wins once it exists: a requeued or re-run job must continue its own
    progress, not restart from ``trainer.resume`` every time. ``seeds`` (``(config key, path)`` in priority
    order, e.g. ``trainer.resume`` then an init checkpoint) only seed a run dir that has no checkpoint yet.
    """
    given = [(key, Path(str(value))) for key, value in seeds if value]
    if run_dir_last is not None and run_dir_last.is_file():
        ignored = ", ".join(f"{key}={path}" for key, path in given if path.resolve() != run_dir_last.resolve())
        why = f" ({ignored} ignored: the run dir already has a checkpoint)" if ignored else ""
        return run_dir_last, f"resuming from run dir {run_dir_last}{why}"
    if given:
        key, path = given[0]
        return path, f"resuming from {key}={path} (the run dir has no {ckpt.LAST} yet)"
    return None, None


def setup_run_dir(requested: Path, rank: int) -> Path:
    """Rank 0's run dir for all ranks (Hydra's ``${now:}`` may differ by a second between ranks)."""
    run_dir = Path(broadcast_object(str(requested.resolve()) if rank == 0 else None))
    if rank != 0 and requested.resolve() != run_dir and requested.is_dir():
        if all(p.name == ".hydra" or p.suffix == ".log" for p in requested.iterdir()):  # Hydra's, for this rank
            shutil.rmtree(requested, ignore_errors=True)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.clean_temp_files(run_dir)
    barrier()
    return run_dir


class CheckpointManager:
    """Saves and restores one run's training state in its run dir (``rank``/``world`` of this process)."""

    def __init__(
        self,
        run_dir: Path,
        cfg: DictConfig,
        rank: int,
        world: int,
        model: nn.Module,
        ema: ModelEma | None,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        scaler: torch.amp.GradScaler,
        sampler: dict[str, int],
    ) -> None:
        self.run_dir, self.cfg, self.rank, self.world = run_dir, cfg, rank, world
        self.model, self.ema, self.optimizer, self.scheduler, self.scaler = model, ema, optimizer, scheduler, scaler
        self.sampler = sampler  # seed and batch_size of the train sampler
        self.intact: tuple[Path, str] | None = None  # the newest checkpoint known intact, and where it resumes

    def state_dict(self, state: TrainState, wandb_id: str | None) -> dict[str, Any]:
        """Everything ``last.pth`` holds; collective (every rank's RNG state is gathered)."""
        rngs = [ckpt.rng_state()]
        if self.world > 1:
            gathered: list[Any] = [None] * self.world
            dist.all_gather_object(gathered, rngs[0])
            rngs = gathered
        return {
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": state.next_epoch - (0 if state.next_batch else 1),
            "next_epoch": state.next_epoch,
            "next_batch": state.next_batch,
            "global_step": state.global_step,
            "best": dict(state.best),
            "rng": rngs,
            "sampler": {
                "seed": self.sampler["seed"],
                "epoch": state.next_epoch,
                "start_batch": state.next_batch,
                "batch_size": self.sampler["batch_size"],
                "world_size": self.world,
            },
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "wandb_id": wandb_id,
        }

    def save_last(self, state: TrainState, wandb_id: str | None, epoch_file: int | None = None) -> None:
        """``last.pth`` (+ ``epoch_XXXX.pth`` hard link, pruned to ``keep_last``); collective (RNG gather)."""
        saved = self.state_dict(state, wandb_id)

        def write() -> None:
            last = ckpt.atomic_save(saved, self.run_dir / ckpt.LAST, checksum=True)
            self.intact = (last, describe_position(state))
            keep = int(self.cfg.trainer.keep_last)
            if epoch_file is not None and keep > 0:
                ckpt.link_epoch_checkpoint(last, self.run_dir / f"epoch_{epoch_file:04d}.pth")
                ckpt.prune_epoch_checkpoints(self.run_dir, keep)

        self._rank0_write(write)

    def save_best(self, name: str, weights: dict[str, Tensor], epoch: int, metrics: dict[str, Any]) -> None:
        """``best.pth`` / ``best_ema.pth``: weights, epoch, metrics and config (rank 0; every rank calls it)."""
        saved = {"model": weights, "epoch": epoch, "metrics": metrics}
        saved["config"] = OmegaConf.to_container(self.cfg, resolve=True)
        self._rank0_write(lambda: ckpt.atomic_save(saved, self.run_dir / name, checksum=True))

    def _rank0_write(self, write: Callable[[], object]) -> None:
        """Rank 0 writes; a :class:`SaveError` there becomes one line on every rank (the others would otherwise
        wait in the next collective until ``trainer.dist_timeout_s``), naming the run's newest intact checkpoint."""
        message = None
        if self.rank == 0:
            try:
                write()
            except SaveError as err:
                message = f"{err}; {self._intact_note()}"
        if self.world > 1:
            message = broadcast_object(message)
        if message is not None:
            raise SaveError(message)

    def _intact_note(self) -> str:
        if self.intact is None:
            return "this run has no checkpoint yet: free space (or fix the permissions) and rerun the same command"
        path, where = self.intact
        return (
            f"the run's newest intact checkpoint is {path} ({where}): free space (or fix the permissions) and "
            "rerun the same command to resume from it"
        )

    def resume(self) -> Resumed:
        """Load the checkpoint :func:`choose_resume_source` picks (run dir ``last.pth`` > ``trainer.resume`` >
        ``model.init_checkpoint``).

        A weights-only file (``best*.pth``) is a warm start from epoch 1; a full one restores everything (the LR
        schedule as ``trainer.resume_schedule`` says); ``model.init_checkpoint`` (any format, head skipped when
        num_classes differs) starts a new run.
        """
        tcfg, init = self.cfg.trainer, self.cfg.model.init_checkpoint
        own = self.run_dir / ckpt.LAST if tcfg.auto_resume else None
        path, note = choose_resume_source(own, [("trainer.resume", tcfg.resume), ("model.init_checkpoint", init)])
        if path is None:
            return Resumed(TrainState(), note=note)
        if init and path != own and not tcfg.resume:  # not a resume: a new run from these weights
            report = init_from_checkpoint(self.model, path)
            if self.ema is not None:
                self.ema.set(self.model)
            why = f"new run (the run dir has no {ckpt.LAST} yet): fresh optimizer, schedule and epoch counter"
            return Resumed(TrainState(), None, f"{report}; {why}")
        candidates = ckpt.run_dir_snapshots(self.run_dir) if path == own else [path]
        path, state, lines = self._load_intact(candidates)
        if path != candidates[0]:
            lines.append(f"resuming from {path}, the newest intact snapshot ({describe_position(state)})")
        notes = [*([note] if note else []), *lines]  # log lines: where from and why, what was skipped or changed
        self.model.load_state_dict(state["model"])
        if "optimizer" not in state:  # best.pth / best_ema.pth: weights only, a warm start from epoch 1
            if self.ema is not None:
                self.ema.set(self.model)
            return Resumed(TrainState(), path, "\n".join(notes) or None)
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        counters = TrainState(
            next_epoch=int(state["next_epoch"]),
            next_batch=int(state["next_batch"]),
            global_step=int(state["global_step"]),
            best=dict(state["best"]),
        )
        notes += self._restore_schedule(state, counters)
        if path.parent.resolve() == self.run_dir.resolve():
            self.intact = (path, describe_position(counters))
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng") or []
        rng = rngs[self.rank] if len(rngs) == self.world else None
        return Resumed(counters, path, "\n".join(notes) or None, rng, state.get("wandb_id"))

    def _load_intact(self, candidates: list[Path]) -> tuple[Path, Any, list[str]]:
        """Rank 0 picks the newest candidate that matches its checksum and loads (one line per one skipped); every
        rank loads that one. None intact: :class:`CheckpointError` (exit code 2)."""
        if self.rank == 0:
            path, state, skipped = ckpt.load_intact(candidates)
            chosen = (None if path is None else str(path), skipped)
        chosen = broadcast_object(chosen if self.rank == 0 else None)
        if chosen[0] is None:
            raise CheckpointError(
                f"no intact checkpoint to resume from: {'; '.join(chosen[1])}; allowed: move the damaged files "
                f"away (or use another trainer.output_dir) to start afresh, or restore a copy"
            )
        if self.rank != 0:
            path, state = Path(chosen[0]), ckpt.load_checkpoint(chosen[0], map_location="cpu")
        return path, state, list(chosen[1])

    def _restore_schedule(self, state: dict[str, Any], counters: TrainState) -> list[str]:
        """The scheduler as ``trainer.resume_schedule`` says, moved to the resumed step; log lines naming the
        config keys that differ from the checkpoint's and what happens to them."""
        mode = str(self.cfg.trainer.resume_schedule)
        rebuilt = self.scheduler.state_dict()
        saved_sched = state.get("scheduler")
        if saved_sched is not None and mode == "checkpoint":
            self.scheduler.load_state_dict(saved_sched)
        self.scheduler.step_update(counters.global_step)
        if mode == "config":  # a per-epoch schedule (sched.step_on_epochs) sets the LR of the resumed epoch
            self.scheduler.step(counters.next_epoch)
        group = self.optimizer.param_groups[0]
        lr = float(group["lr"]) / float(group.get("lr_scale", 1.0))
        keys = config_changes(state.get("config"), OmegaConf.to_container(self.cfg, resolve=True))
        return resume_config_notes(keys, schedule_changes(saved_sched, rebuilt), mode, counters.global_step, lr)


__all__ = [
    "CheckpointError",
    "CheckpointManager",
    "Resumed",
    "TrainState",
    "choose_resume_source",
    "describe_position",
    "setup_run_dir",
]
