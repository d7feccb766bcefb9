"""A separate optimizer and scheduler for the DCLS positions (``optim.positions``), driven as one with the weights'.

The image chapters train positions in the weights' optimizer at ``pos_lr_scale`` × their LR. The SNN-delays recipe
does not: its delays have their own Adam (lr 0.1 = 100 × the weights', no weight decay) and their own cosine
schedule to 0, while the weights follow a one-cycle schedule (SNN-delays ``model.py:39-46`` and ``:63-77``,
``best_config_SHD.py:63-83``). :class:`GroupedOptimizer` and :class:`GroupedScheduler` hold one optimizer /
scheduler per part and look like a single one to the trainer: ``param_groups`` (weights' groups first),
``step``, ``zero_grad``, ``step_update``, and one ``state_dict`` holding every part, so checkpoints resume both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from dcls_vision.ops import dcls_parameters
from dcls_vision.utils.config import plain_dict

from .optim import create_scheduler, param_groups

WEIGHTS, POSITIONS = "weights", "positions"


class GroupedOptimizer:
    """Several optimizers stepped as one (each over its own parameter groups)."""

    def __init__(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        self.optimizers = dict(optimizers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def step(self, closure: Any = None) -> None:
        if closure is not None:
            raise ValueError("GroupedOptimizer.step(closure=...) is not supported; allowed: step()")
        for opt in self.optimizers.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"grouped": {name: opt.state_dict() for name, opt in self.optimizers.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        parts = state.get("grouped") if isinstance(state, Mapping) else None
        if not isinstance(parts, Mapping) or set(parts) != set(self.optimizers):
            found = sorted(parts) if isinstance(parts, Mapping) else "one optimizer"
            raise ValueError(
                f"checkpoint optimizer state holds {found}; this run has optimizers {sorted(self.optimizers)} "
                "(optim.positions); allowed: resume with the optim.positions setting the checkpoint was written with"
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(parts[name])


class GroupedScheduler:
    """One timm-style scheduler per optimizer of a :class:`GroupedOptimizer`, stepped together."""

    def __init__(self, schedulers: Mapping[str, Any]) -> None:
        self.schedulers = dict(schedulers)

    def step(self, epoch: int, metric: float | None = None) -> None:
        for sched in self.schedulers.values():
            sched.step(epoch, metric)

    def step_update(self, num_updates: int, metric: float | None = None) -> None:
        for sched in self.schedulers.values():
            sched.step_update(num_updates, metric)

    def state_dict(self) -> dict[str, Any]:
        return {name: sched.state_dict() for name, sched in self.schedulers.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.schedulers):
            raise ValueError(
                f"checkpoint scheduler state holds {sorted(state)}; this run has {sorted(self.schedulers)}; "
                "allowed: resume with the optim.positions setting the checkpoint was written with"
            )
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state[name])


def _opt_kwargs(node: DictConfig) -> dict[str, Any]:
    kwargs = plain_dict(node.get("kwargs"))
    if node.get("betas") is not None:
        kwargs["betas"] = tuple(node.betas)
    if node.get("eps") is not None:
        kwargs["eps"] = float(node.eps)
    return kwargs


def build_grouped_optimizer(cfg: DictConfig, model: nn.Module, lr: float) -> GroupedOptimizer:
    """The weights' optimizer (``optim.*`` at ``lr``, DCLS rule for decay) and the positions' (``optim.positions``).

    Positions and learned σ form the second part, at ``optim.positions.lr`` with its own weight decay; frozen
    tensors (the SNNs' σ, fixed delays) are in neither.
    """
    from timm.optim import create_optimizer_v2

    ocfg, pcfg = cfg.optim, cfg.optim.positions
    special = {id(p) for params in dcls_parameters(model).values() for p in params}
    groups = param_groups(model, lr, float(ocfg.weight_decay), pos_lr_scale=1.0, layer_decay=ocfg.layer_decay)
    weights = [g for g in groups if id(g["params"][0]) not in special]
    positions = [g for g in groups if id(g["params"][0]) in special]
    if not positions:
        raise ValueError(
            f"optim.positions is set but model {cfg.model.name} has no trainable DCLS positions; allowed: "
            "optim.positions=null"
        )
    for g in positions:
        g.update(lr=float(pcfg.lr), lr_scale=1.0, weight_decay=float(pcfg.weight_decay))
    kw = {"momentum": float(ocfg.momentum)}
    return GroupedOptimizer(
        {
            WEIGHTS: create_optimizer_v2(weights, opt=ocfg.name, lr=lr, weight_decay=0.0, **kw, **_opt_kwargs(ocfg)),
            POSITIONS: create_optimizer_v2(
                positions, opt=pcfg.name, lr=float(pcfg.lr), weight_decay=0.0, **kw, **_opt_kwargs(pcfg)
            ),
        }
    )


def build_grouped_scheduler(
    cfg: DictConfig, optimizer: GroupedOptimizer, epochs: int, updates_per_epoch: int, weights_scheduler: Any
) -> GroupedScheduler:
    """``weights_scheduler`` (from ``sched``) and the positions' (``optim.positions.sched``, no warm-up)."""
    pcfg = cfg.optim.positions
    positions = create_scheduler(
        optimizer.optimizers[POSITIONS],
        str(pcfg.sched),
        epochs,
        updates_per_epoch,
        warmup_epochs=0,
        min_lr=float(pcfg.min_lr),
        step_on_epochs=bool(pcfg.step_on_epochs),
    )
    return GroupedScheduler({WEIGHTS: weights_scheduler, POSITIONS: positions})


__all__ = [
    "GroupedOptimizer",
    "GroupedScheduler",
    "build_grouped_optimizer",
    "build_grouped_scheduler",
]
