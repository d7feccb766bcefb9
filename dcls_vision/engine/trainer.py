"""The training loop: epochs, validation, checkpoints and resume, around timm's parts (docs/design.md §2).

Each epoch runs its micro-batches, an optimizer update every ``accum`` of them (:mod:`.train_step`: forward/
backward, NaN check, clip, step, clamp positions, EMA, schedule). Validation of model and EMA each epoch; under DDP
the BatchNorm running stats are first made equal on every rank (``trainer.dist_bn``) so what is evaluated is what
is saved. Checkpoints are rank-0, atomic, and a run dir holding ``last.pth`` resumes from it automatically.
A preemption/time-limit signal (``dcls_vision/engine/preemption.py``) saves ``last.pth`` at the next step
boundary on every rank, then raises :class:`Preempted`; the requeued job resumes there.

Pieces: :mod:`.builders` (loaders, optimizer, scheduler, criterion, mixup from the config), :mod:`.train_setup`
(seeds, the model, EMA, DDP), :mod:`.checkpointing` (run dir, ``last``/``best`` saves, resume), :mod:`.evaluate`
(validation), :mod:`.train_step` (one optimizer update), :mod:`.train_report` (log lines, ``metrics.jsonl``);
here the loop itself: :meth:`Trainer.fit` and :func:`train`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from dcls_vision.engine.preemption import STOP, Preempted, PreemptionGuard
from dcls_vision.ops import dcls_parameters

from . import builders
from . import checkpoint as ckpt
from .checkpointing import CheckpointManager, setup_run_dir
from .config import amp_dtype, validate_config
from .distributed import all_reduce_sum, barrier, cleanup, init_distributed
from .ema import ModelEma
from .evaluate import evaluate, evaluate_multilabel
from .repulsive import repulsive_applies
from .runlog import PositionTracker, RunLogger
from .snn import SigmaSchedule, flushed_denormals
from .train_report import TrainReporter, metric_names
from .train_setup import build_train_model, convert_sync_bn, seed_everything, set_backend_flags, wrap_for_training
from .train_step import EpochSums, NonFiniteLossError, TrainStep


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**63


class Trainer:
    """Holds everything a run needs; :meth:`fit` runs the remaining epochs."""

    def __init__(
        self,
        cfg: DictConfig,
        rank: int,
        world_size: int,
        local_rank: int,
        device: torch.device,
        guard: PreemptionGuard | None = None,
    ) -> None:
        self.cfg, self.rank, self.world, self.device = cfg, rank, world_size, device
        self.guard = guard
        self._read_trainer_cfg(cfg.trainer)
        self.run_dir = setup_run_dir(Path(str(cfg.trainer.output_dir)), rank)
        loaders = builders.build_loaders(cfg, world_size, rank, device, self.accum)
        self.train_loader, self.val_loader, self.num_classes = loaders.train, loaders.val, loaders.num_classes
        self.batches_per_epoch, self.updates_per_epoch = loaders.batches_per_epoch, loaders.updates_per_epoch
        self.multilabel, self.train_tf, self.val_tf = loaders.multilabel, loaders.train_transform, loaders.val_transform
        self.metric = metric_names(self.multilabel)[0]  # the metric best.pth follows (under its "top1" key)
        self.model, self.ema = self._build_model()
        self.global_batch = int(cfg.trainer.batch_size) * self.accum * world_size
        self.optimizer = builders.build_optimizer(cfg, self.model, self.global_batch)
        self.scheduler = builders.build_scheduler(cfg, self.optimizer, self.epochs, self.updates_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "float16")
        self.mixup, self.criterion = builders.build_loss(cfg, self.num_classes, device, self.multilabel)
        self.has_positions = bool(dcls_parameters(self.model)["positions"])
        self.sigma_schedule = SigmaSchedule.from_config(cfg.trainer.get("sigma_schedule"), self.model, self.epochs)
        # learned parameters (frozen ones, e.g. the SNNs' σ, not counted): the start line and every epoch record
        self.n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        self.ckpt = CheckpointManager(
            self.run_dir,
            cfg,
            rank,
            world_size,
            self.model,
            self.ema,
            self.optimizer,
            self.scheduler,
            self.scaler,
            {"seed": self.seed, "batch_size": self.train_loader.batch_size},
        )
        resumed = self.ckpt.resume()
        self.state, self.resumed_from, self.resume_note = resumed.state, resumed.path, resumed.note
        self._resume_rng = resumed.rng
        self.ddp = world_size > 1
        self.net = wrap_for_training(self.model, device, self.ddp, self.compile)
        self.step = self._train_step()
        self._start_logging(resumed.wandb_id)

    # ----------------------------------------------------------------------------------- set-up
    def _read_trainer_cfg(self, tcfg: DictConfig) -> None:
        """Scalar ``trainer.*`` settings; a SyncBN request on CPU fails here, before any data loads."""
        self.seed = int(tcfg.seed)
        self.amp = amp_dtype(tcfg.amp)
        self.channels_last = bool(tcfg.channels_last)
        self.accum = int(tcfg.accum)
        self.epochs = int(tcfg.epochs)
        self.sync_bn = bool(tcfg.sync_bn) and self.world > 1
        if self.sync_bn and self.device.type == "cpu":
            convert_sync_bn(nn.Identity(), self.device)  # fail before loading any data
        self.dist_bn = "" if self.sync_bn else str(tcfg.dist_bn or "")  # SyncBN: stats equal
        rep = tcfg.repulsive
        self.rep_weight, self.rep_start = float(rep.weight), int(rep.start_epoch)
        self.clip_grad, self.clip_mode = tcfg.clip_grad, tcfg.clip_mode
        self.ckpt_interval = int(tcfg.ckpt_interval_steps or 0)
        self.compile = bool(tcfg.compile)
        set_backend_flags(bool(tcfg.cudnn_benchmark), bool(tcfg.tf32))

    def _build_model(self) -> tuple[nn.Module, ModelEma | None]:
        """The model (same init on every rank) and its EMA; a head bias prior reads the training labels."""
        targets = getattr(self.train_loader.loader.dataset, "targets", None) if self.multilabel else None
        return build_train_model(self.cfg, self.num_classes, self.device, self.sync_bn, targets)

    def _train_step(self) -> TrainStep:
        """The micro-step/update mechanics over this run's model, optimizer, scaler, EMA and loss."""
        return TrainStep(
            model=self.model,
            net=self.net,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            ema=self.ema,
            criterion=self.criterion,
            mixup=self.mixup,
            state=self.state,
            device=self.device,
            amp=self.amp,
            channels_last=self.channels_last,
            train_tf=self.train_tf,
            batch_size=self.train_loader.batch_size,
            ddp=self.ddp,
            rep_weight=self.rep_weight,
            clip_grad=self.clip_grad,
            clip_mode=self.clip_mode,
            guard=self.guard,
            last_path=self.run_dir / ckpt.LAST,
        )

    def _start_logging(self, wandb_id: str | None) -> None:
        """Run logger (console, log.txt, metrics.jsonl, wandb), what writes to it, and the resolved config.yaml."""
        cfg, lcfg = self.cfg, self.cfg.logger
        self.log = RunLogger(
            self.run_dir,
            self.rank,
            builders.build_logger_cfg(cfg),
            OmegaConf.to_container(cfg, resolve=True),
            wandb_id,
            progress=lcfg.progress,
        )
        self.log_interval = int(lcfg.log_interval)
        self.report = TrainReporter(
            log=self.log,
            cfg=cfg,
            optimizer=self.optimizer,
            positions=PositionTracker(self.model),
            run_dir=self.run_dir,
            epochs=self.epochs,
            accum=self.accum,
            updates_per_epoch=self.updates_per_epoch,
            world=self.world,
            device=self.device,
            multilabel=self.multilabel,
            has_ema=self.ema is not None,
            n_params=self.n_params,
            global_batch=self.global_batch,
            amp=self.amp,
            bn_stats="sync_bn" if self.sync_bn else f"dist_bn={self.dist_bn or 'off'}",
        )
        if self.rank == 0:
            OmegaConf.save(cfg, self.run_dir / "config.yaml", resolve=True)
            self.log.truncate_metrics(self.state.next_epoch)

    # -------------------------------------------------------------------------------- checkpoints
    def save_last(self, epoch_file: int | None = None) -> None:
        """``last.pth`` (+ ``epoch_XXXX.pth``); collective. Mid-epoch, BN stats are made equal first."""
        if epoch_file is None:  # mid-epoch; at an epoch end the BN stats were distributed before evaluation
            self._distribute_bn()
        self.ckpt.save_last(self.state, self.log.wandb_id if hasattr(self, "log") else None, epoch_file)

    # ----------------------------------------------------------------------------------- training
    def _repulsive_active(self, epoch: int) -> bool:
        return self.has_positions and self.rep_weight > 0 and repulsive_applies(epoch, self.rep_start)

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        """Micro-steps, an optimizer update every ``accum`` of them (or at the epoch's end), then ranks' sums."""
        self.net.train()
        start, total = self.state.next_batch, self.batches_per_epoch
        loader = self.train_loader.epoch(epoch, start_batch=start)
        sums = EpochSums.zeros(self.device)
        rep_on = self._repulsive_active(epoch)
        bar = self.log.bar(total - start, f"epoch {epoch + 1}/{self.epochs}")
        self.optimizer.zero_grad(set_to_none=True)
        b = start
        t0 = time.perf_counter()
        self.report.meter.restart()
        for batch in loader:
            if b >= total:
                break
            self.report.meter.fetched(0 if batch is None or batch[1] is None else len(batch[1]))
            last_micro = (b + 1) % self.accum == 0 or b + 1 == total
            group = min(self.accum, total - b // self.accum * self.accum)  # micro-batches in this update
            self.step.micro_step(batch, group, last_micro, rep_on, sums)
            b += 1
            if bar is not None:
                bar.update(1)
            if last_micro:
                self.step.optimizer_step(sums.step_loss, epoch, -(-b // self.accum))
                sums.step_loss.zero_()
                self.state.next_batch = b
                self.report.meter.steps += 1
                self._after_update(epoch, b, total, sums, bar)
            self.report.meter.mark()
        if bar is not None:
            bar.close()
        seconds = time.perf_counter() - t0
        all_reduce_sum(sums.loss_sum)
        all_reduce_sum(sums.counts)
        steps_done = max(-(-(total - start) // self.accum), 1)
        return {
            "train_loss": sums.loss_sum.item() / max(sums.counts[0].item(), 1.0),
            "repulsive": sums.rep_sum.item() / max(sums.counts[1].item() / self.world, 1.0) if rep_on else None,
            "skipped_train": int(sums.counts[2].item()),
            "steps": steps_done,
            "img_per_s": sums.counts[0].item() / max(seconds, 1e-9),  # all ranks' images / this rank's time
        }

    def _after_update(self, epoch: int, b: int, total: int, sums: EpochSums, bar: Any) -> None:
        """Step logging, then a mid-epoch ``last.pth`` every ``ckpt_interval_steps`` or on a signal."""
        gs = self.state.global_step
        if gs % self.log_interval == 0:
            self.report.log_step(gs, epoch, b, sums, bar)
        interval = self.ckpt_interval
        if interval and gs % interval == 0 and b < total:
            self.save_last()
        elif self.step.signal_level and b < total:  # preemption/time limit (the epoch end saves by itself)
            self.save_last()
        if self.step.signal_level and b < total:
            self._after_signal_save(epoch, b)

    def _after_signal_save(self, epoch: int, batch: int) -> None:
        """``last.pth`` was just saved for a signal: stop (raise :class:`Preempted`) or, for a save-only one, go on."""
        if self.step.signal_level >= STOP:
            st = self.state
            what = self.guard.describe() if self.guard is not None else "a signal"
            where = f"epoch {epoch + 1}, batch {batch}" if batch else f"end of epoch {epoch + 1}"
            msg = (
                f"stopped by {what} at {where} (global step {st.global_step}); {self.run_dir / ckpt.LAST} saved, "
                f"rerun with trainer.output_dir={self.run_dir} to resume"
            )
            self.log.info(msg)
            self.log.close()
            raise Preempted(msg)
        if self.guard is not None:
            self.guard.saved()
        self.step.signal_level = 0

    def _distribute_bn(self) -> None:
        """Make BN running stats equal on every rank (timm's ``distribute_bn``): each rank tracked its own.

        Without it each rank evaluates (and EMA-tracks) different stats and the checkpoint holds rank 0's only.
        The EMA is included unless it lives on another device type (e.g. a CPU EMA under NCCL, as timm skips it).
        """
        if self.world < 2 or not self.dist_bn:
            return
        from timm.utils import distribute_bn

        reduce = self.dist_bn == "reduce"
        distribute_bn(self.model, self.world, reduce)
        if self.ema is not None and next(self.ema.module.parameters()).device.type == self.device.type:
            distribute_bn(self.ema.module, self.world, reduce)

    # --------------------------------------------------------------------------------------- fit
    def _evaluate(self, model: nn.Module, device: torch.device, desc: str) -> dict[str, float]:
        """Top-1/top-5, or mAP/AUC/d' for multi-label data; ``score`` is the metric best.pth follows."""
        args = (model, self.val_loader, device, self.amp, self.channels_last, self.log, desc)
        if not self.multilabel:
            res = evaluate(*args)
        else:
            tf = None if self.val_tf is None else self.val_tf.to(device).eval()
            res = evaluate_multilabel(*args, transform=tf)
        return {**res, "score": res[self.metric]}

    def _evaluate_all(self) -> tuple[dict[str, float], dict[str, float] | None]:
        val = self._evaluate(self.model, self.device, "val")
        ema = None
        if self.ema is not None:
            ema_device = next(self.ema.module.parameters()).device  # trainer.ema.device may differ
            ema = self._evaluate(self.ema.module, ema_device, "val ema")
        return val, ema

    def fit(self) -> dict[str, Any]:
        tcfg = self.cfg.trainer
        st = self.state
        self.report.log_start(st, self.resumed_from, self.resume_note)
        max_epochs = tcfg.max_epochs_per_run
        stop_at = self.epochs if not max_epochs else min(self.epochs, st.next_epoch + int(max_epochs))
        eval_only = bool(tcfg.get("eval_only"))  # absent from configs written before the key existed
        if eval_only:
            self.log.info("trainer.eval_only=true: evaluating the starting weights; no training, nothing saved")
            stop_at = st.next_epoch
        val: dict[str, float] | None = None
        ema: dict[str, float] | None = None
        resume_rng = self._resume_rng
        for epoch in range(st.next_epoch, stop_at):
            t0 = time.time()
            if st.next_batch and resume_rng is not None:
                ckpt.set_rng_state(resume_rng)  # mid-epoch resume: continue the RNG stream where it was
            else:
                seed_everything(_epoch_seed(self.seed, epoch, self.rank))
            resume_rng = None
            if self.sigma_schedule is not None:  # a closed form of the epoch: a resumed run gets the same σ
                self.sigma_schedule.apply(epoch)
            stats = self.train_one_epoch(epoch)
            t_end = time.time()
            self.scheduler.step(epoch + 1)  # only acts when sched.step_on_epochs is true
            st.next_epoch, st.next_batch = epoch + 1, 0
            self._distribute_bn()
            val, ema = self._evaluate_all() if self._validates(epoch) else (None, None)
            pos_delta = self.report.positions.deltas()
            seconds = time.time() - t0
            self._update_best(epoch, val, ema)
            record = self.report.epoch_record(epoch, st, stats, val, ema, seconds, pos_delta)
            self.log.epoch(record)
            self.save_last(epoch_file=epoch)
            self.report.epoch_end_s = time.time() - t_end
            self.log.info(self.report.summary_line(epoch, record))
            if self.step.signal_level and epoch + 1 < stop_at:
                self._after_signal_save(epoch, 0)
        if val is None:  # nothing left to train (resumed a finished run): report the current weights
            val, ema = self._evaluate_all()
        barrier()
        m = self.metric
        result = {
            **{k: val[k] for k in self.report.names},
            **{f"ema_{k}": ema[k] if ema else None for k in self.report.names},
            f"best_{m}": None if eval_only else st.best["top1"],
            f"best_ema_{m}": st.best["ema_top1"] if self.ema is not None and not eval_only else None,
            "epochs_done": st.next_epoch,
            "global_step": st.global_step,
            "run_dir": str(self.run_dir),
            "rank": self.rank,
        }
        self.log.close()
        return result

    def _update_best(self, epoch: int, val: dict[str, float] | None, ema: dict[str, float] | None) -> None:
        """``best.pth`` / ``best_ema.pth`` when this epoch's validation beats the best so far."""
        best = self.state.best
        if val is not None and val["score"] > best["top1"]:
            best["top1"], best["epoch"] = val["score"], epoch
            self.ckpt.save_best(ckpt.BEST, self.model.state_dict(), epoch, val)
        if ema is not None and ema["score"] > best["ema_top1"]:
            best["ema_top1"], best["ema_epoch"] = ema["score"], epoch
            self.ckpt.save_best(ckpt.BEST_EMA, self.ema.module.state_dict(), epoch, ema)

    def _validates(self, epoch: int) -> bool:
        """``trainer.val_interval``: every N-th epoch and always the last one."""
        return (epoch + 1) % int(self.cfg.trainer.val_interval) == 0 or epoch + 1 == self.epochs


def train(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg``, train (resuming if the run dir has ``last.pth``) and return the final metrics.

    Raises :class:`~dcls_vision.engine.config.ConfigError` before any work for a bad config,
    :class:`NonFiniteLossError` on a NaN/inf loss, and :class:`Preempted` after a preemption/time-limit
    signal made it save ``last.pth`` and stop.
    """
    validate_config(cfg)
    rank, world, local_rank, device = init_distributed(
        str(cfg.trainer.device), timeout_s=int(cfg.trainer.dist_timeout_s)
    )
    try:
        flush = bool(cfg.trainer.get("flush_denormal", False)) and device.type == "cpu"
        with PreemptionGuard() as guard, flushed_denormals(flush):
            trainer = Trainer(cfg, rank, world, local_rank, device, guard=guard)
            try:
                return trainer.fit()
            except Preempted:
                guard.hand_over()  # e.g. submitit's handler: requeue the job and exit (rank 0)
                raise
    finally:
        cleanup()


__all__ = ["NonFiniteLossError", "Preempted", "Trainer", "evaluate", "train"]
