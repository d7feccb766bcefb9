"""What training a spiking network with learnable delays needs from the trainer (thesis ch. 4, SNN-delays).

* :class:`SigmaSchedule`: the frozen Gaussian σ of every DCLS layer, set at the start of each epoch from the
  epoch number alone (``trainer.sigma_schedule``), so a resumed run has the σ the uninterrupted one had.
* :func:`flushed_denormals`: ``torch.set_flush_denormal`` while a CPU run trains (``trainer.flush_denormal``):
  LIF potentials decaying by ``1 − 1/τ`` each step reach denormal floats, which CPUs process very slowly.
* An SNN run has no EMA, AMP, mixup/cutmix or label smoothing, as the reference (checked with the rest of the
  config: :func:`dcls_vision.engine.config.validate_config`).

Rounded delays at validation/test are the model's eval mode (:mod:`dcls_vision.models.snn`), so the trainer's
validation, ``eval.py`` and every checkpoint reader see the same rounded network.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from omegaconf import DictConfig
from torch import nn

from dcls_vision.ops import dcls_layers

from .config import ConfigError


def sigma_at(epoch: int, epochs: int, start: float, end: float, until: float) -> float:
    """σ during ``epoch`` (0-based): exponential from ``start`` to ``end`` at epoch ``int(until · epochs)``, then flat.

    The reference multiplies σ by ``(end/start)^(1/E)`` after each of the first E epochs (``snn_delays.py:190-198``);
    this is its closed form (equal up to float rounding of the repeated product).
    """
    final = int(until * epochs)
    if final <= 0:
        return float(end)
    return float(start * (end / start) ** (min(epoch, final) / final))


class SigmaSchedule:
    """Sets every DCLS layer's (frozen) σ for an epoch; built from ``trainer.sigma_schedule``."""

    def __init__(self, model: nn.Module, epochs: int, start: float | None, end: float, until: float) -> None:
        self.layers = [layer for layer in dcls_layers(model) if layer.sigma is not None]
        if not self.layers:
            raise ConfigError(
                "trainer.sigma_schedule.enabled=true but the model has no DCLS layer with a Gaussian σ; allowed: false"
            )
        learned = [layer for layer in self.layers if layer.sigma.requires_grad]
        if learned:
            raise ConfigError(
                f"trainer.sigma_schedule.enabled=true but {len(learned)} DCLS layer(s) learn σ; allowed: a model whose "
                "σ is frozen (snn_delays), or trainer.sigma_schedule.enabled=false"
            )
        self.epochs, self.start, self.end, self.until = epochs, start, end, until

    @classmethod
    def from_config(cls, node: DictConfig | None, model: nn.Module, epochs: int) -> SigmaSchedule | None:
        """The schedule of ``trainer.sigma_schedule``, or None when it is off (or absent: configs made before it)."""
        if node is None or not node.enabled:
            return None
        start = None if node.start is None else float(node.start)
        return cls(model, epochs, start, float(node.end), float(node.until))

    def value(self, layer: nn.Module, epoch: int) -> float:
        start = self.start if self.start is not None else float(layer.dilated_kernel_size[0] // 2)
        return sigma_at(epoch, self.epochs, start, self.end, self.until)

    @torch.no_grad()
    def apply(self, epoch: int) -> None:
        for layer in self.layers:
            layer.sigma.fill_(self.value(layer, epoch))


@contextlib.contextmanager
def flushed_denormals(enabled: bool) -> Iterator[None]:
    """Denormal floats flushed to zero inside the block (CPU, where supported), then the default back."""
    done = bool(enabled) and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if done:
            torch.set_flush_denormal(False)


__all__ = ["SigmaSchedule", "flushed_denormals", "sigma_at"]
