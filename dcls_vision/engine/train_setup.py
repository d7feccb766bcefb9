"""What a training process sets up before its first update: seeds, backend flags, and the model it trains.

Every rank builds the same model (seeded init, optional classifier-bias prior, SyncBN, device, channels_last) and
its EMA; forward/backward then go through a DDP/``torch.compile`` wrapper of it, while checkpoints, EMA and
evaluation keep the plain module. Kept apart from the loop (:mod:`.trainer`), which only calls these in order.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from dcls_vision.models.factory import build_model

from .config import ConfigError
from .ema import ModelEma


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch RNGs from one seed (the model init, and each epoch's stream)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_backend_flags(cudnn_benchmark: bool, tf32: bool) -> None:
    """``trainer.cudnn_benchmark`` / ``trainer.tf32`` as timm sets them (process-wide; no effect on CPU math)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def convert_sync_bn(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm as ``torch.nn.SyncBatchNorm`` (timm's ``--sync-bn``); its forward has no CPU path."""
    if device.type == "cpu":
        raise ConfigError(
            "trainer.sync_bn=True needs CUDA devices (torch.nn.SyncBatchNorm has no CPU forward); "
            "allowed: trainer.sync_bn=false on CPU (trainer.dist_bn=reduce still averages BN stats)"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def head_bias_prior(model: nn.Module, train_targets: Any | None) -> None:
    """Classifier bias = logit of each label's training frequency (multi-label; Lin et al. 2017's prior init).

    With 1-3 positives among many labels, BCE otherwise spends its first ~1000 AdamW steps only moving the
    biases from logit 0 down to the prior: short runs (the audio quickstart) never get past that phase.
    ``train_targets`` is the multi-hot training label matrix, None when the data is not multi-label.
    """
    if train_targets is None:
        raise ConfigError("trainer.head_bias_prior=true needs multi-label data (data.name=audioset); allowed: false")
    p = torch.as_tensor(np.asarray(train_targets), dtype=torch.float64).mean(0).clamp(1e-4, 1 - 1e-4)
    head = model.get_classifier()
    with torch.no_grad():
        head.bias.copy_(torch.log(p / (1 - p)).to(head.bias.dtype))


def build_train_model(
    cfg: DictConfig, num_classes: int, device: torch.device, sync_bn: bool, train_targets: Any | None
) -> tuple[nn.Module, ModelEma | None]:
    """The model (same init on every rank), on the device, and its EMA if ``trainer.ema.enabled``."""
    tcfg = cfg.trainer
    seed_everything(int(tcfg.seed))  # same init on every rank
    model = build_model(cfg, num_classes, int(cfg.data.in_chans))
    if tcfg.head_bias_prior:
        head_bias_prior(model, train_targets)
    if sync_bn:
        model = convert_sync_bn(model, device)
    model.to(device)
    if tcfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = None
    if tcfg.ema.enabled:
        ema = ModelEma(
            model,
            decay=float(tcfg.ema.decay),
            use_warmup=bool(tcfg.ema.warmup),
            device=torch.device(tcfg.ema.device) if tcfg.ema.device else None,
        )
    return model, ema


def wrap_for_training(model: nn.Module, device: torch.device, ddp: bool, compile_: bool) -> nn.Module:
    """The module forward/backward go through: DDP around the model when there are several ranks, then
    ``torch.compile`` of it if ``trainer.compile`` (after DDP, as timm). Checkpoints, EMA and evaluation use
    the plain ``model``, so the checkpoint keys do not change."""
    net = model
    if ddp:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=True
        )
    return torch.compile(net) if compile_ else net
