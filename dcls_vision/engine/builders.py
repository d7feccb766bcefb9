"""What a training run is built from, out of its config: loaders, criterion, mixup, optimizer and scheduler.

Each builder takes the composed Hydra config (and what it needs from the run: world size, rank, device, model) and
returns timm/torch objects; :class:`~dcls_vision.engine.trainer.Trainer` only wires them together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from dcls_vision.utils.config import plain_dict

from .config import ConfigError
from .grouped import GroupedOptimizer, build_grouped_optimizer, build_grouped_scheduler
from .loader import EpochLoader
from .optim import create_optimizer, create_scheduler, lr_for_batch, timm_lr_scale_rule


def build_criterion(cfg: DictConfig, mixup_active: bool) -> nn.Module:
    """Training loss, as timm's train.py picks it (mixup → soft targets; BCE optional)."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    smoothing = float(cfg.aug.label_smoothing or 0.0)
    if cfg.trainer.loss == "bce":
        thresh = cfg.trainer.bce_target_thresh
        return BinaryCrossEntropy(smoothing=0.0 if mixup_active else smoothing, target_threshold=thresh)
    if mixup_active:
        return SoftTargetCrossEntropy()
    if smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=smoothing)
    return nn.CrossEntropyLoss()


def build_mixup(cfg: DictConfig, num_classes: int) -> Any:
    """timm's Mixup/CutMix from ``aug``, or None when both alphas are 0."""
    from timm.data import Mixup

    aug = cfg.aug
    mixup, cutmix = float(aug.mixup or 0.0), float(aug.cutmix or 0.0)
    if mixup <= 0 and cutmix <= 0:
        return None
    return Mixup(
        mixup_alpha=mixup,
        cutmix_alpha=cutmix,
        prob=float(aug.mixup_prob),
        switch_prob=float(aug.switch_prob),
        mode=aug.mixup_mode,
        label_smoothing=float(aug.label_smoothing or 0.0),
        num_classes=num_classes,
    )


def build_loss(
    cfg: DictConfig, num_classes: int, device: torch.device, multilabel: bool = False
) -> tuple[Any, nn.Module]:
    """``(mixup or None, criterion on device)``; the criterion takes soft targets when mixup is on.

    Multi-label data (config check: ``trainer.loss=bce``): mixup with multi-hot targets and the DCLS-Audio label
    smoothing (:func:`dcls_vision.data.multilabel_mixup`), then BCE on the soft targets.
    """
    if multilabel:
        from dcls_vision.data import multilabel_mixup

        aug = cfg.aug
        mixup = multilabel_mixup(float(aug.mixup or 0.0), float(aug.label_smoothing or 0.0), num_classes)
        return mixup, nn.BCEWithLogitsLoss().to(device)
    mixup = build_mixup(cfg, num_classes)
    return mixup, build_criterion(cfg, mixup is not None).to(device)


@dataclass
class Loaders:
    """Train/val loaders and the epoch arithmetic that follows from them."""

    train: EpochLoader
    val: EpochLoader
    num_classes: int
    batches_per_epoch: int  # micro-batches per rank
    updates_per_epoch: int  # optimizer steps, a last shorter group included
    multilabel: bool = False  # multi-hot targets (BCE, mAP)
    train_transform: nn.Module | None = None  # applied to batches on the device (audio: waveform -> dB mel)
    val_transform: nn.Module | None = None


def build_loaders(cfg: DictConfig, world_size: int, rank: int, device: torch.device, accum: int) -> Loaders:
    """Datasets and their rank-sharded loaders; a batch larger than the training set is a config error."""
    from dcls_vision.data import batch_transform, build_datasets, is_multilabel

    tcfg = cfg.trainer
    seed = int(tcfg.seed)
    train_ds, val_ds, num_classes = build_datasets(cfg.data, cfg.aug)
    workers = int(cfg.data.num_workers or 0)
    pin = device.type == "cuda"
    train_loader = EpochLoader(
        train_ds,
        int(tcfg.batch_size),
        train=True,
        num_replicas=world_size,
        rank=rank,
        seed=seed,
        num_workers=workers,
        pin_memory=pin,
    )
    val_bs = int(tcfg.val_batch_size or tcfg.batch_size)
    val_loader = EpochLoader(
        val_ds, val_bs, train=False, num_replicas=world_size, rank=rank, seed=seed, num_workers=workers, pin_memory=pin
    )
    # a last group of fewer than ``accum`` micro-batches is still an update (timm's train.py does the same)
    batches_per_epoch = train_loader.batches_per_epoch()
    updates_per_epoch = -(-batches_per_epoch // accum)
    if updates_per_epoch < 1:
        raise ConfigError(
            f"trainer.batch_size={tcfg.batch_size} (x accum={accum} x world={world_size}) is larger than the "
            f"training set ({len(train_ds)} samples); allowed: a smaller batch, accum or more data"
        )
    tfs = [batch_transform(ds) for ds in (train_ds, val_ds)]
    tfs = [None if tf is None else tf.to(device) for tf in tfs]
    return Loaders(
        train_loader, val_loader, int(num_classes), batches_per_epoch, updates_per_epoch, is_multilabel(train_ds), *tfs
    )


def lr_for_global_batch(cfg: DictConfig, global_batch: int) -> tuple[float, str | None]:
    """``(lr, note)``: ``optim.lr`` rescaled from ``optim.lr_base_batch`` to ``global_batch``, and one line saying
    so (None when the LR is used as given)."""
    ocfg = cfg.optim
    lr, base = float(ocfg.lr), ocfg.lr_base_batch
    if not base or int(base) == global_batch:
        return lr, None
    rule = ocfg.lr_scale_rule or timm_lr_scale_rule(str(ocfg.name))
    scaled = lr_for_batch(lr, global_batch, int(base), rule)
    why = "optim.lr_scale_rule" if ocfg.lr_scale_rule else f"timm's rule for {ocfg.name}"
    factor = f"{global_batch}/{base}" if rule == "linear" else f"sqrt({global_batch}/{base})"
    bs, accum = int(cfg.trainer.batch_size), int(cfg.trainer.accum)
    note = (
        f"lr {lr:.4g} -> {scaled:.4g}: global batch {global_batch} ({global_batch // (bs * accum)} process(es) x "
        f"batch_size {bs} x accum {accum}) differs from optim.lr_base_batch={base}; {rule} scaling ({why}): "
        f"lr x {factor}"
    )
    return scaled, note


def build_optimizer(cfg: DictConfig, model: nn.Module, global_batch: int) -> torch.optim.Optimizer:
    """timm optimizer over the DCLS parameter groups, with the LR of :func:`lr_for_global_batch`; with
    ``optim.positions`` the positions get their own optimizer (:mod:`.grouped`)."""
    ocfg = cfg.optim
    lr, _ = lr_for_global_batch(cfg, global_batch)
    if ocfg.get("positions") is not None:
        return build_grouped_optimizer(cfg, model, lr)
    opt_kwargs = plain_dict(ocfg.kwargs)
    for key in ("betas", "eps"):
        if ocfg[key] is not None:
            opt_kwargs[key] = tuple(ocfg[key]) if key == "betas" else float(ocfg[key])
    return create_optimizer(
        model,
        opt=ocfg.name,
        lr=lr,
        weight_decay=float(ocfg.weight_decay),
        pos_lr_scale=float(ocfg.pos_lr_scale),
        layer_decay=ocfg.layer_decay,
        momentum=float(ocfg.momentum),
        **opt_kwargs,
    )


def build_scheduler(cfg: DictConfig, optimizer: torch.optim.Optimizer, epochs: int, updates_per_epoch: int) -> Any:
    """timm scheduler from ``sched``, stepped per optimizer update (per epoch with ``step_on_epochs``); a
    :class:`~.grouped.GroupedOptimizer` gets it for its weights and ``optim.positions.sched`` for its positions."""
    scfg = cfg.sched
    sched_kwargs = plain_dict(scfg.kwargs)
    if isinstance(optimizer, GroupedOptimizer):
        weights = build_scheduler(cfg, optimizer.optimizers["weights"], epochs, updates_per_epoch)
        return build_grouped_scheduler(cfg, optimizer, epochs, updates_per_epoch, weights)
    return create_scheduler(
        optimizer,
        scfg.name,
        epochs,
        updates_per_epoch,
        warmup_epochs=scfg.warmup_epochs,
        warmup_lr=float(scfg.warmup_lr),
        min_lr=float(scfg.min_lr),
        cooldown_epochs=int(scfg.cooldown_epochs),
        step_on_epochs=bool(scfg.step_on_epochs),
        warmup_prefix=bool(scfg.warmup_prefix),
        **sched_kwargs,
    )


def build_logger_cfg(cfg: DictConfig) -> dict[str, Any] | None:
    """The wandb settings for :class:`~dcls_vision.engine.runlog.RunLogger`, or None without wandb."""
    lcfg = cfg.logger
    if not lcfg.wandb:
        return None
    return {
        "mode": lcfg.wandb_mode,
        "project": lcfg.project,
        "entity": lcfg.entity,
        "name": lcfg.name or cfg.experiment_name,
    }


__all__ = [
    "Loaders",
    "build_criterion",
    "build_loaders",
    "build_logger_cfg",
    "build_loss",
    "build_mixup",
    "build_optimizer",
    "build_scheduler",
    "lr_for_global_batch",
]
