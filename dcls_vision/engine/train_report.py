"""What the training loop tells its user: the start lines, a progress line every ``logger.log_interval`` updates,
and per epoch one ``metrics.jsonl`` record and one summary line.

The loop (:mod:`.trainer`) decides when; this module decides what the lines and records say, so their fields
(which tools and tests parse: docs/training.md "Progress lines", ``metrics.jsonl``) are defined in one place. The line
formats themselves come from :mod:`.progress` (step lines) and :mod:`.runlog` (writers, position tracker).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from . import builders
from .checkpointing import TrainState
from .optim import group_summary
from .progress import Progress, StepMeter, peak_memory_gib, step_line, step_scalars
from .runlog import PositionTracker, RunLogger, fmt
from .train_step import EpochSums


def metric_names(multilabel: bool) -> tuple[str, ...]:
    """Validation metrics in records and results: top-1/top-5 %, or mAP/AUC % and d' for multi-label data.

    The first is the one ``best.pth`` follows (kept under the checkpoint's ``top1`` key).
    """
    return ("mAP", "AUC", "d_prime") if multilabel else ("top1", "top5")


@dataclass
class TrainReporter:
    """The run's facts the lines print, the step meter between progress lines, and the position tracker."""

    log: RunLogger
    cfg: DictConfig
    optimizer: Any
    positions: PositionTracker
    run_dir: Path
    epochs: int
    accum: int
    updates_per_epoch: int
    world: int
    device: torch.device
    multilabel: bool
    has_ema: bool
    n_params: int
    global_batch: int
    amp: str | None
    bn_stats: str  # how BN stats are kept equal over ranks (printed only with several)
    meter: StepMeter = field(default_factory=StepMeter)
    epoch_end_s: float = 0.0  # the last epoch's validation + save time (for the run ETA)

    @property
    def names(self) -> tuple[str, ...]:
        return metric_names(self.multilabel)

    @property
    def metric(self) -> str:
        return self.names[0]

    def lr(self) -> float:
        """The schedule's current value (a group's lr divided by its ``lr_scale``)."""
        g = self.optimizer.param_groups[0]
        return float(g["lr"]) / float(g.get("lr_scale", 1.0))

    def log_start(self, state: TrainState, resumed_from: Path | None, resume_note: str | None) -> None:
        """Where the run starts from, what it trains, and its parameter groups (one line each)."""
        for line in (resume_note or "").splitlines():  # where from and why; skipped or changed things
            self.log.info(line)
        if resumed_from is not None:
            where = f"epoch {state.next_epoch + 1}" + (f", batch {state.next_batch}" if state.next_batch else "")
            self.log.info(f"resumed from {resumed_from} at {where} (global step {state.global_step})")
        self.log.info(
            f"run dir: {self.run_dir} | model {self.cfg.model.name} {self.n_params / 1e6:.2f}M params | "
            f"{self.world} process(es) on {self.device} | global batch {self.global_batch} | "
            f"{self.updates_per_epoch} updates/epoch | amp {self.amp or 'off'}"
            + (f" | BN stats {self.bn_stats}" if self.world > 1 else "")
        )
        _, lr_note = builders.lr_for_global_batch(self.cfg, self.global_batch)
        if lr_note:
            self.log.info(lr_note)
        for g in group_summary(self.optimizer):
            self.log.info(
                f"  param group {g['name']}: {g['tensors']} tensors, {g['numel']} elements, "
                f"lr_scale {g['lr_scale']:.4g}, weight_decay {g['weight_decay']}"
            )

    def log_step(self, global_step: int, epoch: int, b: int, sums: EpochSums, bar: Any) -> None:
        """One progress line (stdout, log.txt) and its ``train/*`` scalars (W&B) for the steps since the last."""
        loss = sums.loss_sum.item() / max(sums.counts[0].item(), 1)  # the epoch's running mean on this rank
        where = Progress(global_step, epoch, self.epochs, -(-b // self.accum), self.updates_per_epoch)
        scalars = step_scalars(
            self.meter.take(), where, loss, self.lr(), self.world, peak_memory_gib(self.device), self.epoch_end_s
        )
        self.log.step(scalars, where.global_step)
        self.log.info(step_line(where, scalars))
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{scalars['train/lr']:.2e}")

    def epoch_record(
        self,
        epoch: int,
        state: TrainState,
        stats: dict[str, Any],
        val: dict[str, float] | None,
        ema: dict[str, float] | None,
        seconds: float,
        pos_delta: dict[str, float],
    ) -> dict[str, Any]:
        """The epoch's ``metrics.jsonl`` line; ``state.best`` already holds this epoch's validation."""
        best, m, names = state.best, self.metric, self.names
        if val is None:  # an epoch without validation (trainer.val_interval): metrics are null, best unchanged
            val = {"loss": None, "skipped": 0, **{k: None for k in names}}
        return {
            "epoch": epoch,
            "global_step": state.global_step,
            "train_loss": stats["train_loss"],
            "lr": self.lr(),
            **{f"val_{k}": val[k] for k in names},
            "val_loss": val["loss"],
            **{f"ema_{k}": None if ema is None else ema[k] for k in names},
            f"best_{m}": best["top1"] if best["epoch"] >= 0 else None,  # null until the first validation
            f"best_ema_{m}": best["ema_top1"] if self.has_ema and best["ema_epoch"] >= 0 else None,
            "repulsive": stats["repulsive"],
            "epoch_time": round(seconds, 3),
            "train_img_per_s": round(stats["img_per_s"], 2),  # global (all ranks' images)
            "params": self.n_params,  # for reports that gather runs
            "skipped_train": stats["skipped_train"],
            "skipped_val": val["skipped"],
            "pos_delta": pos_delta,
        }

    def summary_line(self, epoch: int, r: dict[str, Any]) -> str:
        """The epoch's one console/log.txt line, from its :meth:`epoch_record`."""
        a, b = self.names[:2]
        label = "" if a == "top1" else f"{a}/{b} "
        parts = [
            f"epoch {epoch + 1}/{self.epochs}",
            f"train_loss {r['train_loss']:.4f}",
            f"lr {r['lr']:.3e}",
            f"val {label}{fmt(r[f'val_{a}'])}/{fmt(r[f'val_{b}'])}",
        ]
        if self.multilabel:
            parts.append(f"d' {fmt(r['val_d_prime'], '.3f')}")
        if r[f"ema_{a}"] is not None:
            parts.append(f"ema {fmt(r[f'ema_{a}'])}/{fmt(r[f'ema_{b}'])}")
        parts.append(f"best {fmt(r[f'best_{self.metric}'])}")
        if r["repulsive"] is not None:
            parts.append(f"rep {r['repulsive']:.4f}")
        if r["pos_delta"]:
            parts.append(f"|dpos| {sum(r['pos_delta'].values()) / len(r['pos_delta']):.4f}")
        parts.append(f"{r['epoch_time']:.1f}s ({r['train_img_per_s']:.0f} train img/s)")
        if r["skipped_train"] or r["skipped_val"]:
            parts.append(f"skipped {r['skipped_train']}+{r['skipped_val']}")
        return " | ".join(parts)
