"""Optimizer parameter groups that keep the DCLS training rules, and timm optimizer/scheduler factories.

DCLS rules (docs/design.md §2.1): positions and σ get ``lr × pos_lr_scale`` (default :data:`POSITION_LR_SCALE` = 5) and
weight decay 0, also under layer-wise LR decay (where the reference code silently loses the 5×); :func:`param_rule`
is the one place deciding it, for the trainer and the mmengine constructor (``dcls_vision.downstream.optim``).
Groups carry ``lr_scale``, which timm schedulers (and :func:`apply_lr_scale` for other schedulers) multiply into ``lr``.

:func:`param_groups` has no Hydra or mmengine dependency: the mmdet/mmseg constructor reuses it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dcls_vision.ops import dcls_parameters

OPTIMIZERS = ("adamw", "adam", "lamb", "lambw", "sgd", "momentum", "nesterov", "lars", "rmsproptf", "nadamw", "lion")
POSITION_LR_SCALE = 5.0
"""LR multiplier of DCLS positions and σ (thesis: 5× the LR of their layer, weight decay 0; docs/design.md)."""

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "constant", "wsd", "rsqrt", "onecycle", "none")
LR_SCALE_RULES = ("linear", "sqrt")


def _layer_map(model: nn.Module) -> dict[str, int]:
    """Parameter name → layer id, from timm's group_matcher (fallback: timm's automatic grouping)."""
    from timm.models import group_parameters
    from timm.optim._param_groups import auto_group_layers

    if hasattr(model, "group_matcher"):
        return group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    return auto_group_layers(model)


def param_rule(
    name: str,
    p: Tensor,
    weight_decay: float,
    dcls_kind: str | None,
    no_weight_decay: Collection[str],
    pos_lr_scale: float = POSITION_LR_SCALE,
) -> tuple[str, float, float]:
    """The DCLS rule for one parameter: ``(group kind, weight decay, lr multiplier)``.

    The one place that decides it, for classification and mmdet/mmseg fine-tuning alike: positions and σ
    (``dcls_kind``, from :func:`dcls_parameters`) get ``pos_lr_scale`` × their layer's LR and weight decay 0;
    ndim ≤ 1 tensors, biases and ``no_weight_decay`` names no decay; everything else ``weight_decay``.
    """
    if dcls_kind is not None:
        return dcls_kind, 0.0, pos_lr_scale
    if p.ndim <= 1 or name.endswith(".bias") or name in no_weight_decay:
        return "no_decay", 0.0, 1.0
    return "decay", weight_decay, 1.0


def timm_layer_decay(
    model: nn.Module, layer_decay: float, min_scale: float = 0.0
) -> tuple[Callable[[str], int], Callable[[int], float]]:
    """``(layer_id_fn, layer_scale_fn)`` for timm/BEiT layer decay: ``layer_decay ** (max_layer − layer_id)``.

    Layer ids come from timm's group_matcher; a name it does not cover gets the last layer (scale 1).
    """
    layer_of = _layer_map(model)
    num_layers = max(layer_of.values()) + 1 if layer_of else 1
    scales = [max(min_scale, layer_decay ** (num_layers - 1 - i)) for i in range(num_layers)]
    return (lambda name: layer_of.get(name, num_layers - 1)), scales.__getitem__


def param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    layer_id_fn: Callable[[str], int] | None = None,
    layer_scale_fn: Callable[[int], float] | None = None,
    pos_lr_scale: float = POSITION_LR_SCALE,
    layer_decay: float | None = None,
    no_weight_decay: Collection[str] | None = None,
    layer_decay_min_scale: float = 0.0,
    sort_by_layer: bool = False,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into one optimizer group per (layer id, kind).

    Kinds and their weight decay / LR multiplier come from :func:`param_rule` (positions/σ found by identity,
    shared tensors once). ``lr_scale = layer_scale_fn(layer id) × multiplier``. Layer ids come from
    ``layer_id_fn(name)`` (e.g. a backbone's ``layer_id`` in :mod:`dcls_vision.downstream.optim`) or, with
    ``layer_decay``, from timm's group_matcher (:func:`timm_layer_decay`); with neither, one layer of scale 1.
    ``no_weight_decay`` defaults to ``model.no_weight_decay()``.

    Every group has ``lr`` (the base LR, unscaled), ``lr_scale``, ``weight_decay`` and ``name`` (prefixed
    ``layer_<id>_`` when there are layer ids). timm schedulers set ``lr = value × lr_scale``; without one,
    call :func:`apply_lr_scale` once. Groups are in first-seen order, or by (layer id, kind) if ``sort_by_layer``.
    """
    special = {id(p): kind for kind, params in dcls_parameters(model).items() for p in params}
    if no_weight_decay is None:
        no_weight_decay = set(getattr(model, "no_weight_decay", lambda: set())())
    no_weight_decay = set(no_weight_decay)
    if layer_id_fn is None and layer_decay is not None:
        layer_id_fn, layer_scale_fn = timm_layer_decay(model, layer_decay, layer_decay_min_scale)
    layer_scale_fn = layer_scale_fn or (lambda _layer: 1.0)

    groups: dict[tuple[int, str], dict[str, Any]] = {}
    for name, p in model.named_parameters():  # named_parameters() yields a shared tensor once
        if not p.requires_grad:
            continue
        layer = layer_id_fn(name) if layer_id_fn is not None else 0
        kind, wd, mult = param_rule(name, p, weight_decay, special.get(id(p)), no_weight_decay, pos_lr_scale)
        key = (layer, kind)
        if key not in groups:
            prefix = f"layer_{layer}_" if layer_id_fn is not None else ""
            groups[key] = {
                "params": [],
                "lr": lr,
                "lr_scale": layer_scale_fn(layer) * mult,
                "weight_decay": wd,
                "name": prefix + kind,
            }
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)] if sort_by_layer else list(groups.values())


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
    pos_lr_scale: float = POSITION_LR_SCALE,
    layer_decay: float | None = None,
    momentum: float = 0.9,
    **kwargs: Any,
) -> torch.optim.Optimizer:
    """timm optimizer over :func:`param_groups` (per-group weight decay and ``lr_scale`` are kept)."""
    from timm.optim import create_optimizer_v2

    groups = param_groups(model, lr, weight_decay, pos_lr_scale=pos_lr_scale, layer_decay=layer_decay)
    return create_optimizer_v2(groups, opt=opt, lr=lr, weight_decay=0.0, momentum=momentum, **kwargs)


def timm_lr_scale_rule(opt: str) -> str:
    """timm train.py's ``lr_base_scale`` default: ``sqrt`` for Adam-family and LAMB optimizers, else ``linear``."""
    name = opt.lower()
    return "sqrt" if any(k in name for k in ("ada", "lamb")) else "linear"


def lr_for_batch(lr: float, global_batch: int, base_batch: int | None, rule: str) -> float:
    """``lr`` given for ``base_batch`` images per update, rescaled to ``global_batch`` (``linear`` or ``sqrt``)."""
    if not base_batch or global_batch == base_batch:
        return lr
    if rule not in LR_SCALE_RULES:
        raise ValueError(f"lr scale rule {rule!r}; allowed: {', '.join(LR_SCALE_RULES)}")
    ratio = global_batch / base_batch
    return lr * (ratio if rule == "linear" else math.sqrt(ratio))


def _reference_cosine_class() -> type:
    """timm's CosineLRScheduler whose warm-up ends AT the peak, as ``np.linspace`` does in ConvNeXt's schedule.

    timm warms up as ``warmup_lr + t (lr − warmup_lr) / warmup_t`` (the peak is reached one step after the warm-up);
    ConvNeXt's ``utils.cosine_scheduler`` uses ``np.linspace(warmup_lr, lr, warmup_t)``, i.e. divides by
    ``warmup_t − 1``. After the warm-up both are timm's ``warmup_prefix`` cosine over the remaining steps.
    """
    from timm.scheduler import CosineLRScheduler

    class ReferenceCosineLRScheduler(CosineLRScheduler):
        def _get_lr(self, t: int) -> list[float]:
            if t < self.warmup_t:
                span = max(self.warmup_t - 1, 1)
                return [self.warmup_lr_init + t * (v - self.warmup_lr_init) / span for v in self.base_values]
            return super()._get_lr(t)

    return ReferenceCosineLRScheduler


class OneCycleScheduler:
    """torch's ``OneCycleLR`` behind timm's scheduler interface (``step(epoch)`` / ``step_update(updates)``).

    The SNN-delays recipe's weight schedule (``model.py:64-66``: ``OneCycleLR(max_lr, total_steps=epochs)``,
    stepped once per epoch; torch's defaults: 30 % warm-up from ``max_lr/25``, cosine, down to ``max_lr/25e4``, and
    Adam's β1 cycled 0.95 → 0.85 → 0.95). ``max_lr`` of a group is its ``lr × lr_scale``. Each call sets the
    schedule to the count it is given (``OneCycleLR.get_lr`` is a closed form of ``last_epoch``), so a resumed run
    continues exactly; its state is torch's ``state_dict`` (plain values, ``weights_only``-safe).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, t_in_epochs: bool, **kwargs: Any) -> None:
        max_lr = [g["lr"] * g.get("lr_scale", 1.0) for g in optimizer.param_groups]
        self.t_in_epochs = t_in_epochs
        self.torch = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=total_steps, **kwargs)

    def _set(self, t: int) -> None:
        # past the last step (the call after the last epoch) the LR stays at its final value: torch would
        # anneal on beyond the cycle's end (pct > 1), a value no step trains with but the log would show
        self.torch.last_epoch = min(t, self.torch.total_steps - 1) - 1
        with warnings.catch_warnings():  # set by count, so torch's call-order check (a resume sets it first) is moot
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step\\(\\)` before")
            self.torch.step()

    def step(self, epoch: int, metric: float | None = None) -> None:
        if self.t_in_epochs:
            self._set(epoch)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        if not self.t_in_epochs:
            self._set(num_updates)

    def state_dict(self) -> dict[str, Any]:
        return self.torch.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.torch.load_state_dict(state)


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
    warmup_prefix: bool = False,
    **kwargs: Any,
) -> Any:
    """timm scheduler, stepped per optimizer update (``step_update``) unless ``step_on_epochs``.

    ``epochs`` is the whole run: the decay spans ``epochs − cooldown_epochs`` (minus ``warmup_epochs`` with
    ``warmup_prefix``), then the LR stays at ``min_lr`` for ``cooldown_epochs`` (timm's train.py runs
    ``num_epochs + cooldown`` epochs). ``warmup_prefix`` (cosine only) is the ConvNeXt/DCLS reference
    schedule: linear warm-up reaching ``lr`` at its last step, then cosine over the remaining steps
    (:func:`_reference_cosine_class`). ``sched='none'`` gives a constant schedule that still applies ``lr_scale``;
    ``sched='onecycle'`` is torch's one-cycle policy peaking at ``lr`` (:class:`OneCycleScheduler`).
    """
    from timm.scheduler import create_scheduler_v2

    if sched == "onecycle":  # its warm-up is kwargs pct_start, its floor final_div_factor (torch's OneCycleLR)
        return OneCycleScheduler(
            optimizer, epochs * (1 if step_on_epochs else updates_per_epoch), step_on_epochs, **kwargs
        )
    if sched == "none":
        sched, warmup_epochs = "constant", 0
    decay_epochs = epochs - cooldown_epochs - (warmup_epochs if warmup_prefix else 0)
    if warmup_prefix:
        if sched != "cosine":
            raise ValueError(f"warmup_prefix with sched {sched!r}; allowed: cosine")
        per = 1 if step_on_epochs else updates_per_epoch
        return _reference_cosine_class()(
            optimizer,
            t_initial=int(decay_epochs * per),
            lr_min=min_lr,
            warmup_t=int(warmup_epochs * per),
            warmup_lr_init=warmup_lr,
            warmup_prefix=True,
            t_in_epochs=step_on_epochs,
            **kwargs,
        )
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=sched,
        num_epochs=decay_epochs,
        warmup_epochs=warmup_epochs,
        warmup_lr=warmup_lr,
        min_lr=min_lr,
        cooldown_epochs=cooldown_epochs,
        step_on_epochs=step_on_epochs,
        updates_per_epoch=updates_per_epoch,
        **kwargs,
    )
    return scheduler


def group_summary(optimizer: torch.optim.Optimizer) -> list[Mapping[str, Any]]:
    """Per group: name, #tensors, #elements, lr, lr_scale, weight_decay (for logs and tests)."""
    return [
        {
            "name": g.get("name", str(i)),
            "tensors": len(g["params"]),
            "numel": sum(p.numel() for p in g["params"]),
            "lr": g["lr"],
            "lr_scale": g.get("lr_scale", 1.0),
            "weight_decay": g["weight_decay"],
        }
        for i, g in enumerate(optimizer.param_groups)
    ]
