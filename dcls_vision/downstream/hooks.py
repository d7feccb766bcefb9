"""mmengine hooks for DCLS fine-tuning: position clamping and the repulsive loss.

The public DCLS downstream code never clamps, so positions drift out of the dilated kernel (docs/design.md §2.2).
"""

from __future__ import annotations

from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from dcls_vision.engine.repulsive import repulsive_loss
from dcls_vision.ops import clamp_positions_, dcls_parameters


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if is_model_wrapper(model) else model


class DclsClampHook(Hook):
    """Clamp every DCLS layer's positions into its dilated kernel after each training iteration.

    Priority VERY_HIGH: after the optimizer step (inside ``train_step``) and before EMA-type hooks (NORMAL),
    so averaged weights never see out-of-range positions (the trainer's step → clamp → EMA order).
    """

    priority = "VERY_HIGH"

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        clamp_positions_(unwrap(runner.model))


class DclsRepulsiveLossHook(Hook):
    """Add ``loss_repulsive = weight × R²`` (:func:`repulsive_loss`) to the model's training losses from
    iteration ``start_iter`` on.

    The term joins the loss dict through a forward hook on the (unwrapped) detector/segmentor, so mmengine
    sums, back-propagates and logs it like any other loss, with or without DDP.
    """

    def __init__(self, weight: float = 1.0, start_iter: int = 0) -> None:
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"weight={weight!r} is invalid; allowed: a float >= 0")
        if isinstance(start_iter, bool) or not isinstance(start_iter, int) or start_iter < 0:
            raise ValueError(f"start_iter={start_iter!r} is invalid; allowed: an int >= 0")
        self.weight, self.start_iter = float(weight), start_iter
        self._active = False
        self._handle: Any = None

    def before_train(self, runner: Any) -> None:
        model = unwrap(runner.model)
        if not dcls_parameters(model)["positions"]:
            runner.logger.warning("DclsRepulsiveLossHook: the model has no DCLS positions; the hook does nothing")
            return
        self._handle = model.register_forward_hook(self._add_loss)

    def before_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None) -> None:
        self._active = self.weight > 0 and runner.iter >= self.start_iter

    def after_train_iter(self, runner: Any, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        self._active = False  # validation inside an epoch must not see the term

    def after_train(self, runner: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def _add_loss(self, module: nn.Module, args: Any, output: Any) -> Any:
        if not (self._active and module.training and isinstance(output, dict)):
            return output
        rep = repulsive_loss(module)
        return {**output, "loss_repulsive": self.weight * rep.pow(2)}


_BUFFER_TAG = "__dcls_history_buffer__"


def _encode(obj: Any) -> Any:
    """HistoryBuffer → tagged dict of tensors, numpy → tensors / Python scalars (all ``weights_only``-loadable)."""
    import numpy as np
    import torch
    from mmengine.logging import HistoryBuffer

    if isinstance(obj, HistoryBuffer):
        return {
            _BUFFER_TAG: True,
            "log": torch.from_numpy(np.asarray(obj._log_history, dtype=np.float64)),
            "count": torch.from_numpy(np.asarray(obj._count_history, dtype=np.int64)),
            "max_length": int(obj.max_length),
        }
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_encode(v) for v in obj)
    return obj


def _decode(obj: Any) -> Any:
    from mmengine.logging import HistoryBuffer

    if isinstance(obj, dict):
        if obj.get(_BUFFER_TAG) is True:
            return HistoryBuffer(obj["log"].tolist(), obj["count"].tolist(), obj["max_length"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


class DclsSafeCheckpointHook(Hook):
    """Make mmengine checkpoints loadable with ``torch.load(weights_only=True)`` (torch's default since 2.6).

    mmengine 0.10 pickles its log buffers (``HistoryBuffer``, whose pickle calls ``getattr``) and numpy arrays
    into every checkpoint, so loading one for testing or resuming fails under safe loading, and allowlisting
    ``getattr`` would defeat it. Before saving, those become tensors and tagged dicts; after loading (before
    the runner restores its message hub) they are rebuilt. Priority LOWEST: converts what other hooks added.
    """

    priority = "LOWEST"

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        for key in ("meta", "message_hub", "param_schedulers"):  # weights and optimizer state are tensors already
            if key in checkpoint:
                checkpoint[key] = _encode(checkpoint[key])

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = _decode(checkpoint["message_hub"])
