"""The training loop: timm for everything timm does, plus the DCLS rules (docs/design.md §2).

Per optimizer step: ``accum`` micro-batches (DDP syncs on the last; an epoch's leftover micro-batches form a
shorter last group, its loss divided by its own size) → NaN check → unscale (fp16) → clip → step → clamp positions
→ EMA update → scheduler ``step_update``. Validation of model and EMA each epoch; under DDP the BatchNorm running
stats are first made equal on every rank (``trainer.dist_bn``) so what is evaluated is what is saved.
Checkpoints are rank-0, atomic, and a run dir holding ``last.pth`` resumes from it automatically.
A preemption/time-limit signal (``dcls_vision/launch/preemption.py``) saves ``last.pth`` at the next step
boundary on every rank, then raises :class:`Preempted`; the requeued job resumes there.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dcls_vision.launch.preemption import STOP, Preempted, PreemptionGuard
from dcls_vision.ops import clamp_positions_, dcls_parameters

from . import checkpoint as ckpt
from .config import ConfigError, amp_dtype, validate_config
from .distributed import all_reduce_max, all_reduce_sum, barrier, broadcast_object, cleanup, init_distributed
from .ema import ModelEma
from .loader import EpochLoader
from .optim import create_optimizer, create_scheduler, group_summary
from .repulsive import repulsive_loss
from .runlog import PositionTracker, RunLogger, fmt


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; no checkpoint was written after it."""


@dataclass
class TrainState:
    """Counters and best metrics that go into every checkpoint."""

    next_epoch: int = 0
    next_batch: int = 0  # micro-batches already done in ``next_epoch`` (mid-epoch checkpoints)
    global_step: int = 0  # optimizer updates so far
    best: dict[str, Any] = field(default_factory=lambda: {"top1": -1.0, "epoch": -1, "ema_top1": -1.0,
                                                          "ema_epoch": -1})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + rank * 104_729) % 2**63


def build_criterion(cfg: DictConfig, mixup_active: bool) -> nn.Module:
    """Training loss, as timm's train.py picks it (mixup → soft targets; BCE optional)."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    smoothing = float(cfg.aug.get("label_smoothing", 0.0) or 0.0)
    if cfg.trainer.get("loss", "ce") == "bce":
        thresh = cfg.trainer.get("bce_target_thresh", None)
        return BinaryCrossEntropy(smoothing=0.0 if mixup_active else smoothing, target_threshold=thresh)
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(cfg: DictConfig, num_classes: int) -> Any:
    from timm.data import Mixup

    aug = cfg.aug
    mixup, cutmix = float(aug.get("mixup", 0.0) or 0.0), float(aug.get("cutmix", 0.0) or 0.0)
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=float(aug.get("mixup_prob", 1.0)),
                 switch_prob=float(aug.get("switch_prob", 0.5)), mode=aug.get("mixup_mode", "batch"),
                 label_smoothing=float(aug.get("label_smoothing", 0.0) or 0.0), num_classes=num_classes)


def _container(node: Any) -> dict[str, Any]:
    """A plain dict from an optional DictConfig/dict node."""
    if node is None:
        return {}
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)


def build_model(cfg: DictConfig, num_classes: int, in_chans: int) -> nn.Module:
    import timm

    import dcls_vision.models  # noqa: F401  (registers the DCLS models)

    kwargs = _container(cfg.model.get("kwargs"))
    drop_path = cfg.model.get("drop_path_rate")
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    return timm.create_model(cfg.model.name, num_classes=num_classes, in_chans=in_chans, **kwargs)


def _amp_context(device: torch.device, dtype: str | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


@torch.no_grad()
def evaluate(model: nn.Module, loader: EpochLoader, device: torch.device, amp: str | None = None,
             channels_last: bool = False, logger: RunLogger | None = None, desc: str = "val") -> dict[str, float]:
    """Top-1/top-5 (%) and CE loss over the whole val set; counts are summed over ranks, so exact."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, n, loss_sum, seen_batches
    data = loader.epoch(0)
    bar = logger.bar(len(data), desc) if logger else None
    for batch in data:
        if batch is None:
            continue
        x, y = batch[0], batch[1]
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with _amp_context(device, amp):
            out = model(x)
        out = out.float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        stats += torch.stack([hit[:, 0].sum().double(), hit.any(1).sum().double(), torch.tensor(len(y), device=device,
                             dtype=torch.float64), nn.functional.cross_entropy(out, y, reduction="sum").double(),
                             torch.ones((), dtype=torch.float64, device=device)])
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    all_reduce_sum(stats)
    model.train(was_training)
    n = max(stats[2].item(), 1.0)
    expected = float(len(loader.loader.dataset))
    return {"top1": 100.0 * stats[0].item() / n, "top5": 100.0 * stats[1].item() / n, "loss": stats[3].item() / n,
            "samples": int(stats[2].item()), "skipped": int(max(0.0, expected - stats[2].item()))}


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


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm as ``torch.nn.SyncBatchNorm`` (timm's ``--sync-bn``); its forward has no CPU path."""
    if device.type == "cpu":
        raise ConfigError("trainer.sync_bn=True needs CUDA devices (torch.nn.SyncBatchNorm has no CPU forward); "
                          "allowed: trainer.sync_bn=false on CPU (trainer.dist_bn=reduce still averages BN stats)")
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


class Trainer:
    """Holds everything a run needs; :meth:`fit` runs the remaining epochs."""

    def __init__(self, cfg: DictConfig, rank: int, world_size: int, local_rank: int, device: torch.device,
                 guard: PreemptionGuard | None = None) -> None:
        from dcls_vision.data import build_datasets

        self.cfg, self.rank, self.world, self.device = cfg, rank, world_size, device
        self.guard = guard
        self.signal_level = 0  # the all-reduced PreemptionGuard level of the last optimizer step
        tcfg = cfg.trainer
        self.seed = int(tcfg.seed)
        self.amp = amp_dtype(tcfg.amp)
        self.channels_last = bool(tcfg.channels_last)
        self.accum = int(tcfg.get("accum", 1))
        self.epochs = int(tcfg.epochs)
        self.sync_bn = bool(tcfg.get("sync_bn", False)) and world_size > 1
        if self.sync_bn and device.type == "cpu":
            convert_sync_bn(nn.Identity(), device)  # fail before loading any data
        self.dist_bn = "" if self.sync_bn else str(tcfg.get("dist_bn", "reduce") or "")  # SyncBN: stats equal

        self.run_dir = self._setup_run_dir(Path(str(tcfg.output_dir)))

        train_ds, val_ds, num_classes = build_datasets(cfg.data, cfg.aug)
        self.num_classes = int(num_classes)
        workers = int(cfg.data.get("num_workers", 0) or 0)
        pin = device.type == "cuda"
        self.train_loader = EpochLoader(train_ds, int(tcfg.batch_size), train=True, num_replicas=world_size, rank=rank,
                                        seed=self.seed, num_workers=workers, pin_memory=pin)
        val_bs = int(tcfg.get("val_batch_size") or tcfg.batch_size)
        self.val_loader = EpochLoader(val_ds, val_bs, train=False, num_replicas=world_size, rank=rank, seed=self.seed,
                                      num_workers=workers, pin_memory=pin)
        # a last group of fewer than ``accum`` micro-batches is still an update (timm's train.py does the same)
        self.batches_per_epoch = self.train_loader.batches_per_epoch()
        self.updates_per_epoch = -(-self.batches_per_epoch // self.accum)
        if self.updates_per_epoch < 1:
            raise ConfigError(
                f"trainer.batch_size={tcfg.batch_size} (x accum={self.accum} x world={world_size}) is larger than the "
                f"training set ({len(train_ds)} samples); allowed: a smaller batch, accum or more data")

        seed_everything(self.seed)  # same init on every rank
        model = build_model(cfg, self.num_classes, int(cfg.data.get("in_chans", 3)))
        if self.sync_bn:
            model = convert_sync_bn(model, device)
        model.to(device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = None
        if tcfg.ema.get("enabled", False):
            self.ema = ModelEma(model, decay=float(tcfg.ema.decay), use_warmup=bool(tcfg.ema.get("warmup", False)),
                                device=torch.device(tcfg.ema.device) if tcfg.ema.get("device") else None)

        ocfg = cfg.optim
        lr = float(ocfg.lr)
        base_batch = ocfg.get("lr_base_batch")
        self.global_batch = int(tcfg.batch_size) * self.accum * world_size
        if base_batch:
            lr = lr * self.global_batch / int(base_batch)
        opt_kwargs = _container(ocfg.get("kwargs"))
        for key in ("betas", "eps"):
            if ocfg.get(key) is not None:
                opt_kwargs[key] = tuple(ocfg[key]) if key == "betas" else float(ocfg[key])
        self.optimizer = create_optimizer(model, opt=ocfg.name, lr=lr, weight_decay=float(ocfg.weight_decay),
                                          pos_lr_scale=float(ocfg.get("pos_lr_scale", 5.0)),
                                          layer_decay=ocfg.get("layer_decay"),
                                          momentum=float(ocfg.get("momentum", 0.9)), **opt_kwargs)
        scfg = cfg.sched
        sched_kwargs = _container(scfg.get("kwargs"))
        self.scheduler = create_scheduler(
            self.optimizer, scfg.name, self.epochs, self.updates_per_epoch, warmup_epochs=scfg.get("warmup_epochs", 0),
            warmup_lr=float(scfg.get("warmup_lr", 0.0)), min_lr=float(scfg.get("min_lr", 0.0)),
            cooldown_epochs=int(scfg.get("cooldown_epochs", 0)), step_on_epochs=bool(scfg.get("step_on_epochs", False)),
            **sched_kwargs)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp == "float16")
        self.mixup = build_mixup(cfg, self.num_classes)
        self.criterion = build_criterion(cfg, self.mixup is not None).to(device)
        rep = tcfg.get("repulsive") or {}
        self.rep_weight, self.rep_start = float(rep.get("weight", 0.0)), int(rep.get("start_epoch", 0))
        self.has_positions = bool(dcls_parameters(model)["positions"])
        self.clip_grad, self.clip_mode = tcfg.get("clip_grad"), tcfg.get("clip_mode", "norm")

        self.state = TrainState()
        self.resumed_from: Path | None = None
        self.resume_note: str | None = None
        wandb_id = self._maybe_resume()

        self.ddp = world_size > 1
        self.net: nn.Module = model
        if self.ddp:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                               broadcast_buffers=True)

        lcfg = cfg.logger
        wandb_cfg = None
        if lcfg.get("wandb", False):
            wandb_cfg = {"mode": lcfg.get("wandb_mode"), "project": lcfg.get("project"),
                         "entity": lcfg.get("entity"), "name": lcfg.get("name") or cfg.get("experiment_name")}
        self.log = RunLogger(self.run_dir, rank, wandb_cfg, OmegaConf.to_container(cfg, resolve=True), wandb_id,
                             progress=lcfg.get("progress"))
        self.log_interval = int(lcfg.get("log_interval", 50))
        self.positions = PositionTracker(model)
        if rank == 0:
            OmegaConf.save(cfg, self.run_dir / "config.yaml", resolve=True)
            self.log.truncate_metrics(self.state.next_epoch)

    # ----------------------------------------------------------------------------------- set-up
    def _setup_run_dir(self, requested: Path) -> Path:
        """Rank 0's run dir for all ranks (Hydra's ``${now:}`` may differ by a second between ranks)."""
        run_dir = Path(broadcast_object(str(requested.resolve()) if self.rank == 0 else None))
        if self.rank != 0 and requested.resolve() != run_dir and requested.is_dir():
            if all(p.name == ".hydra" or p.suffix == ".log" for p in requested.iterdir()):  # Hydra's, for this rank
                shutil.rmtree(requested, ignore_errors=True)
        if self.rank == 0:
            run_dir.mkdir(parents=True, exist_ok=True)
            ckpt.clean_temp_files(run_dir)
        barrier()
        return run_dir

    def _maybe_resume(self) -> str | None:
        tcfg = self.cfg.trainer
        own = self.run_dir / ckpt.LAST if tcfg.get("auto_resume", True) else None
        path, self.resume_note = choose_resume_source(own, [("trainer.resume", tcfg.get("resume"))])
        if path is None:
            return None
        state = ckpt.load_checkpoint(path, map_location="cpu")
        self.model.load_state_dict(state["model"])
        if "optimizer" not in state:  # best.pth / best_ema.pth: weights only, a warm start from epoch 1
            if self.ema is not None:
                self.ema.set(self.model)
            self.resumed_from = path
            return None
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.state = TrainState(next_epoch=int(state["next_epoch"]), next_batch=int(state["next_batch"]),
                                global_step=int(state["global_step"]), best=dict(state["best"]))
        self.scheduler.step_update(self.state.global_step)
        rngs = state.get("rng") or []
        self._resume_rng = rngs[self.rank] if len(rngs) == self.world else None
        self.resumed_from = path
        return state.get("wandb_id")

    # -------------------------------------------------------------------------------- checkpoints
    def _state_dict(self) -> dict[str, Any]:
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
            "epoch": self.state.next_epoch - (0 if self.state.next_batch else 1),
            "next_epoch": self.state.next_epoch,
            "next_batch": self.state.next_batch,
            "global_step": self.state.global_step,
            "best": dict(self.state.best),
            "rng": rngs,
            "sampler": {"seed": self.seed, "epoch": self.state.next_epoch, "start_batch": self.state.next_batch,
                        "batch_size": self.train_loader.batch_size, "world_size": self.world},
            "config": OmegaConf.to_container(self.cfg, resolve=True),
            "wandb_id": self.log.wandb_id if hasattr(self, "log") else None,
        }

    def save_last(self, epoch_file: int | None = None) -> None:
        """``last.pth`` (+ ``epoch_XXXX.pth`` hard link, pruned to ``keep_last``); collective (RNG gather)."""
        if epoch_file is None:  # mid-epoch; at an epoch end the BN stats were distributed before evaluation
            self._distribute_bn()
        state = self._state_dict()
        if self.rank != 0:
            return
        last = ckpt.atomic_save(state, self.run_dir / ckpt.LAST)
        keep = int(self.cfg.trainer.get("keep_last", 0))
        if epoch_file is not None and keep > 0:
            target = self.run_dir / f"epoch_{epoch_file:04d}.pth"
            tmp = target.with_name(f".{target.name}.link.tmp")
            tmp.unlink(missing_ok=True)
            try:
                os.link(last, tmp)
            except OSError:
                shutil.copyfile(last, tmp)
            os.replace(tmp, target)
            ckpt.prune_epoch_checkpoints(self.run_dir, keep)

    def save_best(self, name: str, weights: dict[str, Tensor], epoch: int, metrics: dict[str, Any]) -> None:
        if self.rank == 0:
            ckpt.atomic_save({"model": weights, "epoch": epoch, "metrics": metrics,
                              "config": OmegaConf.to_container(self.cfg, resolve=True)}, self.run_dir / name)

    # ----------------------------------------------------------------------------------- training
    def _repulsive_active(self, epoch: int) -> bool:
        return self.has_positions and self.rep_weight > 0 and epoch >= self.rep_start

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        model, net, opt = self.model, self.net, self.optimizer
        net.train()
        start = self.state.next_batch
        total = self.batches_per_epoch
        loader = self.train_loader.epoch(epoch, start_batch=start)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        rep_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        counts = torch.zeros(3, dtype=torch.float64, device=self.device)  # samples, micro-batches, skipped
        step_loss = torch.zeros((), device=self.device)
        interval = int(self.cfg.trainer.get("ckpt_interval_steps", 0) or 0)
        rep_on = self._repulsive_active(epoch)
        bar = self.log.bar(total - start, f"epoch {epoch + 1}/{self.epochs}")
        bs = self.train_loader.batch_size
        opt.zero_grad(set_to_none=True)
        b = start
        for batch in loader:
            if b >= total:
                break
            last_micro = (b + 1) % self.accum == 0 or b + 1 == total
            group = min(self.accum, total - b // self.accum * self.accum)  # micro-batches in this update
            x, y = (batch[0], batch[1]) if batch is not None else (None, None)
            n = 0 if y is None else len(y)
            counts[2] += bs - n
            sync = contextlib.nullcontext() if (last_micro or not self.ddp) else net.no_sync()
            with sync:
                if n > 0:
                    x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
                    if self.mixup is not None:
                        if n % 2:  # timm's batch mixup needs an even batch (a skipped image can make it odd)
                            x, y, n = x[:-1], y[:-1], n - 1
                        x, y = self.mixup(x, y)
                    if self.channels_last and x.dim() == 4:
                        x = x.contiguous(memory_format=torch.channels_last)
                    with _amp_context(self.device, self.amp):
                        out = net(x)
                    loss = self.criterion(out.float(), y)
                else:  # an empty micro-batch still joins DDP's gradient all-reduce
                    loss = sum(p.sum() for p in model.parameters()) * 0.0
                total_loss = loss
                if rep_on:
                    rep = repulsive_loss(model).to(self.device)
                    total_loss = loss + self.rep_weight * rep.pow(2)
                    rep_sum += rep.detach().double()
                self.scaler.scale(total_loss / group).backward()
            step_loss += total_loss.detach().float() / group
            loss_sum += loss.detach().double() * n
            counts[0] += n
            counts[1] += 1
            b += 1
            if bar is not None:
                bar.update(1)
            if not last_micro:
                continue
            self._optimizer_step(step_loss, epoch, -(-b // self.accum))
            step_loss.zero_()
            self.state.next_batch = b
            gs = self.state.global_step
            if gs % self.log_interval == 0:
                lr = self._lr()
                loss_val = loss_sum.item() / max(counts[0].item(), 1)
                self.log.step({"train/loss": loss_val, "train/lr": lr}, gs)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.2e}")
            if interval and gs % interval == 0 and b < total:
                self.save_last()
            elif self.signal_level and b < total:  # preemption/time limit (the epoch end saves by itself)
                self.save_last()
            if self.signal_level and b < total:
                self._after_signal_save(epoch, b)
        if bar is not None:
            bar.close()
        all_reduce_sum(loss_sum)
        all_reduce_sum(counts)
        steps_done = max(-(-(total - start) // self.accum), 1)
        return {"train_loss": loss_sum.item() / max(counts[0].item(), 1.0),
                "repulsive": rep_sum.item() / max(counts[1].item() / self.world, 1.0) if rep_on else None,
                "skipped_train": int(counts[2].item()), "steps": steps_done}

    def _lr(self) -> float:
        """The schedule's current value (a group's lr divided by its ``lr_scale``)."""
        g = self.optimizer.param_groups[0]
        return float(g["lr"]) / float(g.get("lr_scale", 1.0))

    def _after_signal_save(self, epoch: int, batch: int) -> None:
        """``last.pth`` was just saved for a signal: stop (raise :class:`Preempted`) or, for a save-only one, go on."""
        if self.signal_level >= STOP:
            st = self.state
            what = self.guard.describe() if self.guard is not None else "a signal"
            where = f"epoch {epoch + 1}, batch {batch}" if batch else f"end of epoch {epoch + 1}"
            msg = (f"stopped by {what} at {where} (global step {st.global_step}); {self.run_dir / ckpt.LAST} saved, "
                   f"rerun with trainer.output_dir={self.run_dir} to resume")
            self.log.info(msg)
            self.log.close()
            raise Preempted(msg)
        if self.guard is not None:
            self.guard.saved()
        self.signal_level = 0

    def _optimizer_step(self, step_loss: Tensor, epoch: int, step_in_epoch: int) -> None:
        # one all-reduce carries the NaN check and the preemption flag, so all ranks stop at the same step
        pending = float(self.guard.pending()) if self.guard is not None else 0.0
        flags = torch.stack([(~torch.isfinite(step_loss)).float().reshape(()),
                             torch.tensor(pending, device=step_loss.device)])
        all_reduce_max(flags)
        bad, level = flags.tolist()
        self.signal_level = int(level)
        if bad > 0:
            last = self.run_dir / ckpt.LAST
            kept = f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint was written"
            raise NonFiniteLossError(
                f"loss={step_loss.item()} at epoch {epoch + 1} step {step_in_epoch} "
                f"(global step {self.state.global_step + 1}); training stopped, {kept}")
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        if self.clip_grad:
            from timm.utils import dispatch_clip_grad

            dispatch_clip_grad(self.model.parameters(), float(self.clip_grad), mode=self.clip_mode)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        clamp_positions_(self.model)
        if self.ema is not None:
            self.ema.update(self.model, step=self.state.global_step)
        self.state.global_step += 1
        self.scheduler.step_update(num_updates=self.state.global_step)

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
    def _evaluate_all(self) -> tuple[dict[str, float], dict[str, float] | None]:
        val = evaluate(self.model, self.val_loader, self.device, self.amp, self.channels_last, self.log, "val")
        ema = None
        if self.ema is not None:
            ema_device = next(self.ema.module.parameters()).device  # trainer.ema.device may differ
            ema = evaluate(self.ema.module, self.val_loader, ema_device, self.amp, self.channels_last, self.log,
                           "val ema")
        return val, ema

    def fit(self) -> dict[str, Any]:
        tcfg = self.cfg.trainer
        st = self.state
        if self.resume_note is not None:
            self.log.info(self.resume_note)
        if self.resumed_from is not None:
            where = f"epoch {st.next_epoch + 1}" + (f", batch {st.next_batch}" if st.next_batch else "")
            self.log.info(f"resumed from {self.resumed_from} at {where} (global step {st.global_step})")
        n_params = sum(p.numel() for p in self.model.parameters())
        bn = "sync_bn" if self.sync_bn else f"dist_bn={self.dist_bn or 'off'}"
        self.log.info(f"run dir: {self.run_dir} | model {self.cfg.model.name} {n_params / 1e6:.2f}M params | "
                      f"{self.world} process(es) on {self.device} | global batch {self.global_batch} | "
                      f"{self.updates_per_epoch} updates/epoch | amp {self.amp or 'off'}"
                      + (f" | BN stats {bn}" if self.world > 1 else ""))
        for g in group_summary(self.optimizer):
            self.log.info(f"  param group {g['name']}: {g['tensors']} tensors, {g['numel']} elements, "
                          f"lr_scale {g['lr_scale']:.4g}, weight_decay {g['weight_decay']}")
        max_epochs = tcfg.get("max_epochs_per_run")
        stop_at = self.epochs if not max_epochs else min(self.epochs, st.next_epoch + int(max_epochs))
        val: dict[str, float] | None = None
        ema: dict[str, float] | None = None
        resume_rng = getattr(self, "_resume_rng", None)
        for epoch in range(st.next_epoch, stop_at):
            t0 = time.time()
            if st.next_batch and resume_rng is not None:
                ckpt.set_rng_state(resume_rng)  # mid-epoch resume: continue the RNG stream where it was
            else:
                seed_everything(_epoch_seed(self.seed, epoch, self.rank))
            resume_rng = None
            stats = self.train_one_epoch(epoch)
            self.scheduler.step(epoch + 1)  # only acts when sched.step_on_epochs is true
            st.next_epoch, st.next_batch = epoch + 1, 0
            self._distribute_bn()
            val, ema = self._evaluate_all()
            pos_delta = self.positions.deltas()
            record = self._record(epoch, stats, val, ema, time.time() - t0, pos_delta)
            self.log.epoch(record)
            self.save_last(epoch_file=epoch)
            self.log.info(self._summary_line(epoch, record))
            if self.signal_level and epoch + 1 < stop_at:
                self._after_signal_save(epoch, 0)
        if val is None:  # nothing left to train (resumed a finished run): report the current weights
            val, ema = self._evaluate_all()
        barrier()
        result = {"top1": val["top1"], "top5": val["top5"], "ema_top1": ema["top1"] if ema else None,
                  "ema_top5": ema["top5"] if ema else None, "best_top1": st.best["top1"],
                  "best_ema_top1": st.best["ema_top1"] if self.ema is not None else None,
                  "epochs_done": st.next_epoch, "global_step": st.global_step, "run_dir": str(self.run_dir),
                  "rank": self.rank}
        self.log.close()
        return result

    def _record(self, epoch: int, stats: dict[str, Any], val: dict[str, float], ema: dict[str, float] | None,
                seconds: float, pos_delta: dict[str, float]) -> dict[str, Any]:
        best = self.state.best
        if val["top1"] > best["top1"]:
            best["top1"], best["epoch"] = val["top1"], epoch
            self.save_best(ckpt.BEST, self.model.state_dict(), epoch, val)
        if ema is not None and ema["top1"] > best["ema_top1"]:
            best["ema_top1"], best["ema_epoch"] = ema["top1"], epoch
            self.save_best(ckpt.BEST_EMA, self.ema.module.state_dict(), epoch, ema)
        return {
            "epoch": epoch, "global_step": self.state.global_step, "train_loss": stats["train_loss"], "lr": self._lr(),
            "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
            "ema_top1": None if ema is None else ema["top1"], "ema_top5": None if ema is None else ema["top5"],
            "best_top1": best["top1"], "best_ema_top1": best["ema_top1"] if ema is not None else None,
            "repulsive": stats["repulsive"], "epoch_time": round(seconds, 3),
            "skipped_train": stats["skipped_train"], "skipped_val": val["skipped"], "pos_delta": pos_delta,
        }

    def _summary_line(self, epoch: int, r: dict[str, Any]) -> str:
        parts = [f"epoch {epoch + 1}/{self.epochs}", f"train_loss {r['train_loss']:.4f}", f"lr {r['lr']:.3e}",
                 f"val {fmt(r['val_top1'])}/{fmt(r['val_top5'])}"]
        if r["ema_top1"] is not None:
            parts.append(f"ema {fmt(r['ema_top1'])}/{fmt(r['ema_top5'])}")
        parts.append(f"best {fmt(r['best_top1'])}")
        if r["repulsive"] is not None:
            parts.append(f"rep {r['repulsive']:.4f}")
        if r["pos_delta"]:
            parts.append(f"|dpos| {sum(r['pos_delta'].values()) / len(r['pos_delta']):.4f}")
        parts.append(f"{r['epoch_time']:.1f}s")
        if r["skipped_train"] or r["skipped_val"]:
            parts.append(f"skipped {r['skipped_train']}+{r['skipped_val']}")
        return " | ".join(parts)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Validate ``cfg``, train (resuming if the run dir has ``last.pth``) and return the final metrics.

    Raises :class:`~dcls_vision.engine.config.ConfigError` before any work for a bad config,
    :class:`NonFiniteLossError` on a NaN/inf loss, and :class:`Preempted` after a preemption/time-limit
    signal made it save ``last.pth`` and stop.
    """
    validate_config(cfg)
    rank, world, local_rank, device = init_distributed(str(cfg.trainer.get("device", "auto")),
                                                       timeout_s=int(cfg.trainer.get("dist_timeout_s", 1800)))
    try:
        with PreemptionGuard() as guard:
            trainer = Trainer(cfg, rank, world, local_rank, device, guard=guard)
            try:
                return trainer.fit()
            except Preempted:
                guard.hand_over()  # e.g. submitit's handler: requeue the job and exit (rank 0)
                raise
    finally:
        cleanup()


__all__ = ["NonFiniteLossError", "Preempted", "Trainer", "evaluate", "train"]
