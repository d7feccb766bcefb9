"""One optimizer update of the training loop: its micro-steps and the update itself (docs/design.md §2.2).

``accum`` micro-batches run forward/backward (mixup, AMP, the repulsive term; DDP syncs gradients on the last; an
epoch's leftover micro-batches form a shorter last group, its loss divided by its own size), then one update:
NaN check → unscale (fp16) → clip → step → clamp positions → EMA update → scheduler ``step_update``. Kept apart
from the loop (:mod:`.trainer`: epochs, evaluation, checkpoints) so the order of an update reads in one place.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcls_vision.ops import clamp_positions_

from .checkpointing import TrainState
from .distributed import all_reduce_max
from .ema import ModelEma
from .evaluate import amp_context
from .preemption import PreemptionGuard
from .repulsive import repulsive_loss


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN/inf loss; no checkpoint was written after it."""


@dataclass
class EpochSums:
    """One epoch's running sums on the device (reduced over ranks at its end) and the accumulating update's loss."""

    loss_sum: Tensor
    rep_sum: Tensor
    counts: Tensor  # samples, micro-batches, skipped
    step_loss: Tensor

    @classmethod
    def zeros(cls, device: torch.device) -> EpochSums:
        return cls(
            torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros((), dtype=torch.float64, device=device),
            torch.zeros(3, dtype=torch.float64, device=device),
            torch.zeros((), device=device),
        )


@dataclass
class TrainStep:
    """What a micro-step and an optimizer update use; the trainer builds it once its model and optimizer exist.

    ``model`` is the plain module (parameters, clamping, EMA); ``net`` is what forward/backward go through
    (DDP and/or ``torch.compile`` around it). ``signal_level`` is the all-reduced
    :class:`~dcls_vision.engine.preemption.PreemptionGuard` level of the last update, read by the loop.
    """

    model: nn.Module
    net: nn.Module
    optimizer: Any
    scheduler: Any
    scaler: torch.amp.GradScaler
    ema: ModelEma | None
    criterion: nn.Module
    mixup: Any
    state: TrainState
    device: torch.device
    amp: str | None
    channels_last: bool
    train_tf: nn.Module | None  # device-side batch transform, e.g. waveform -> dB mel spectrogram
    batch_size: int
    ddp: bool
    rep_weight: float
    clip_grad: float | None
    clip_mode: str
    guard: PreemptionGuard | None
    last_path: Path  # the run dir's last.pth, named in the NaN message
    signal_level: int = 0

    def micro_step(self, batch: Any, group: int, last_micro: bool, rep_on: bool, sums: EpochSums) -> None:
        """Forward/backward of one micro-batch, its loss divided by ``group`` (the micro-batches of its update).

        DDP all-reduces gradients only on the update's last micro-batch; an empty one (every image skipped)
        still runs a zero loss through backward so that all-reduce happens on every rank.
        """
        x, y = (batch[0], batch[1]) if batch is not None else (None, None)
        n = 0 if y is None else len(y)
        sums.counts[2] += self.batch_size - n
        sync = contextlib.nullcontext() if (last_micro or not self.ddp) else self.net.no_sync()
        with sync:
            if n > 0:
                loss, n = self._forward_loss(x, y, n)
            else:  # an empty micro-batch still joins DDP's gradient all-reduce
                loss = sum(p.sum() for p in self.model.parameters()) * 0.0
            total_loss = loss
            if rep_on:
                rep = repulsive_loss(self.model).to(self.device)
                total_loss = loss + self.rep_weight * rep.pow(2)
                sums.rep_sum += rep.detach().double()
            self.scaler.scale(total_loss / group).backward()
        sums.step_loss += total_loss.detach().float() / group
        sums.loss_sum += loss.detach().double() * n
        sums.counts[0] += n
        sums.counts[1] += 1

    def _forward_loss(self, x: Tensor, y: Tensor, n: int) -> tuple[Tensor, int]:
        """Task loss of a non-empty micro-batch (mixup applied) and the number of samples it used."""
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        if self.train_tf is not None:  # e.g. waveform -> dB mel spectrogram, before mixup
            x = self.train_tf.train()(x)
        if self.mixup is not None:
            if n % 2:  # timm's batch mixup needs an even batch (a skipped image can make it odd)
                x, y, n = x[:-1], y[:-1], n - 1
            x, y = self.mixup(x, y)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_context(self.device, self.amp):
            out = self.net(x)
        return self.criterion(out.float(), y), n

    def optimizer_step(self, step_loss: Tensor, epoch: int, step_in_epoch: int) -> None:
        """The optimizer update after a group of micro-steps: check, unscale, clip, step, clamp, EMA, schedule."""
        self._check_step(step_loss, epoch, step_in_epoch)
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

    def _check_step(self, step_loss: Tensor, epoch: int, step_in_epoch: int) -> None:
        """Raise :class:`NonFiniteLossError` on a NaN/inf loss on any rank; record the preemption level."""
        # one all-reduce carries the NaN check and the preemption flag, so all ranks stop at the same step
        pending = float(self.guard.pending()) if self.guard is not None else 0.0
        flags = torch.stack(
            [(~torch.isfinite(step_loss)).float().reshape(()), torch.tensor(pending, device=step_loss.device)]
        )
        all_reduce_max(flags)
        bad, level = flags.tolist()
        self.signal_level = int(level)
        if bad > 0:
            last = self.last_path
            kept = f"last good checkpoint kept: {last}" if last.exists() else "no checkpoint was written"
            raise NonFiniteLossError(
                f"loss={step_loss.item()} at epoch {epoch + 1} step {step_in_epoch} "
                f"(global step {self.state.global_step + 1}); training stopped, {kept}"
            )
