"""Optimizer parameter groups that keep the DCLS training rules, and timm optimizer/scheduler factories.

DCLS rules (docs/design.md §2.1): positions and σ get ``lr × pos_lr_scale`` (default 5) and weight decay 0, also
under layer-wise LR decay (where the reference code silently loses the 5×). Groups carry ``lr_scale``,
which timm schedulers (and :func:`apply_lr_scale` for other schedulers) multiply into ``lr``.

:func:`param_groups` has no Hydra dependency: the mmdet/mmseg integration reuses it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from dcls_vision.ops import dcls_parameters

OPTIMIZERS = ("adamw", "adam", "lamb", "lambw", "sgd", "momentum", "nesterov", "lars", "rmsproptf", "nadamw", "lion")
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt", "none")


def _layer_map(model: nn.Module) -> dict[str, int]:
    """Parameter name → layer id, from timm's group_matcher (fallback: timm's automatic grouping)."""
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    if hasattr(model, "group_matcher"):
        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    return auto_group_layers(model)


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    pos_lr_scale: float = 5.0,
    layer_decay: float | None = None,
    no_weight_decay: Collection[str] | None = None,
    layer_decay_min_scale: float = 0.0,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into optimizer groups.

    - DCLS positions/σ (found by identity via :func:`dcls_parameters`, shared tensors once): weight decay 0,
      ``lr_scale = pos_lr_scale × layer_scale``.
    - ndim ≤ 1 tensors (norms, biases) and ``model.no_weight_decay()`` names (or ``no_weight_decay``): no decay.
    - everything else: ``weight_decay``.
    - with ``layer_decay``: ``layer_scale = layer_decay ** (max_layer − layer_id)`` (timm/BEiT convention).

    Every group has ``lr`` (the base LR, unscaled), ``lr_scale``, ``weight_decay`` and ``name``. timm
    schedulers set ``lr = value × lr_scale``; without one, call :func:`apply_lr_scale` once.
    """
    dcls = dcls_parameters(model)
    special = {id(p): kind for kind, params in dcls.items() for p in params}
    if no_weight_decay is None:
        no_weight_decay = set(getattr(model, "no_weight_decay", lambda: set())())
    no_weight_decay = set(no_weight_decay)

    layer_of: dict[str, int] = {}
    scales: list[float] = [1.0]
    if layer_decay is not None:
        layer_of = _layer_map(model)
        num_layers = max(layer_of.values()) + 1 if layer_of else 1
        scales = [max(layer_decay_min_scale, layer_decay ** (num_layers - 1 - i)) for i in range(num_layers)]

    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for name, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        if not p.requires_grad:
            continue
        layer = layer_of.get(name, len(scales) - 1)
        if id(p) in special:
            kind, wd, scale = special[id(p)], 0.0, pos_lr_scale
        elif p.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay:
            kind, wd, scale = "no_decay", 0.0, 1.0
        else:
            kind, wd, scale = "decay", weight_decay, 1.0
        key = (layer, kind)
        if key not in groups:
            prefix = f"layer_{layer}_" if layer_decay is not None else ""
            groups[key] = {"params": [], "lr": lr, "lr_scale": scales[layer] * scale, "weight_decay": wd,
                           "name": prefix + kind}
        groups[key]["params"].append(p)
    return list(groups.values())


def apply_lr_scale(optimizer: torch.optim.Optimizer, lr: float | None = None) -> None:
    """Set every group's ``lr = lr × lr_scale`` (for schedulers that do not read ``lr_scale``)."""
    for group in optimizer.param_groups:
        base = group.get("initial_lr", group["lr"]) if lr is None else lr
        group["lr"] = base * group.get("lr_scale", 1.0)


def create_optimizer(
    model: nn.Module,
    opt: str,
    lr: float,
    weight_decay: float,
    pos_lr_scale: float = 5.0,
    layer_decay: float | None = None,
    momentum: float = 0.9,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """timm optimizer over :func:`param_groups` (per-group weight decay and ``lr_scale`` are kept)."""
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, lr, weight_decay, pos_lr_scale=pos_lr_scale, layer_decay=layer_decay)
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=0.0, momentum=momentum, **kwargs)


def create_scheduler(
    optimizer: torch.optim.Optimizer,
    sched: str,
    epochs: int,
    updates_per_epoch: int,
    warmup_epochs: float = 0,
    warmup_lr: float = 1e-6,
    min_lr: float = 1e-6,
    cooldown_epochs: int = 0,
    step_on_epochs: bool = False,
    **kwargs: Any,
) -> Any:
    """timm scheduler, stepped per optimizer update (``step_update``) unless ``step_on_epochs``.

    ``sched='none'`` gives a constant schedule that still applies ``lr_scale``.
    """
    from timm.scheduler import create_scheduler_v2

    if sched == "none":
        sched, warmup_epochs = "constant", 0
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=sched, num_epochs=epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr,
        min_lr=min_lr, cooldown_epochs=cooldown_epochs, step_on_epochs=step_on_epochs,
        updates_per_epoch=updates_per_epoch, **kwargs,
    )
    return scheduler


def group_summary(optimizer: torch.optim.Optimizer) -> list[Mapping[str, Any]]:
    """Per group: name, #tensors, #elements, lr, lr_scale, weight_decay (for logs and tests)."""
    return [
        {"name": g.get("name", str(i)), "tensors": len(g["params"]), "numel": sum(p.numel() for p in g["params"]),
         "lr": g["lr"], "lr_scale": g.get("lr_scale", 1.0), "weight_decay": g["weight_decay"]}
        for i, g in enumerate(optimizer.param_groups)
    ]
