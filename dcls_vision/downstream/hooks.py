"""mmengine hooks for DCLS fine-tuning: position clamping, the repulsive loss, safe and atomic checkpoints.

The public DCLS downstream code never clamps, so positions drift out of the dilated kernel (docs/design.md §2.2).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from torch import nn

from dcls_vision.engine.checkpoint import clean_temp_files
from dcls_vision.engine.distributed import broadcast_object
from dcls_vision.engine.repulsive import repulsive_loss
from dcls_vision.ops import clamp_positions_, dcls_parameters
from dcls_vision.utils.errors import SaveError
from dcls_vision.utils.io import format_bytes, oserror_in, save_error


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
    """Make mmengine checkpoints loadable with ``torch.load(weights_only=True)`` (torch's default since 2.6), and
    their writes atomic.

    mmengine 0.10 pickles its log buffers (``HistoryBuffer``, whose pickle calls ``getattr``) and numpy arrays
    into every checkpoint, so loading one for testing or resuming fails under safe loading, and allowlisting
    ``getattr`` would defeat it. Before saving, those become tensors and tagged dicts; after loading (before
    the runner restores its message hub) they are rebuilt. Priority LOWEST: converts what other hooks added.

    mmengine writes ``iter_N.pth`` in place (mmengine/fileio/backends/local_backend.py ``put``: ``open(path,
    "wb")``), so a full disk leaves a torn file; here it goes to a temp name and is ``os.replace``d, and a failed
    write is one line (:class:`SaveError`, exit code 4) naming the file, the free space and the previous checkpoint.
    """

    priority = "LOWEST"

    def before_run(self, runner: Any) -> None:
        if runner.rank == 0:  # a run killed inside a save left its temp file
            clean_temp_files(runner.work_dir)
        if getattr(runner.save_checkpoint, "_dcls_atomic", False):
            return
        original = runner.save_checkpoint

        def save_checkpoint(out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
            _atomic_runner_save(runner, original, out_dir, filename, *args, **kwargs)

        save_checkpoint._dcls_atomic = True  # type: ignore[attr-defined]
        runner.save_checkpoint = save_checkpoint

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        for key in ("meta", "message_hub", "param_schedulers"):  # weights and optimizer state are tensors already
            if key in checkpoint:
                checkpoint[key] = _encode(checkpoint[key])

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        if "message_hub" in checkpoint:
            checkpoint["message_hub"] = _decode(checkpoint["message_hub"])


def _atomic_runner_save(runner: Any, original: Any, out_dir: str, filename: str, *args: Any, **kwargs: Any) -> None:
    """``runner.save_checkpoint`` into a temp file then ``os.replace``; every rank calls it (mmengine's is
    ``@master_only``), so a failure on the main rank is raised on all of them as the same one line."""
    if "://" in str(out_dir):  # a remote backend (petrel, http): mmengine's own write
        original(out_dir, filename, *args, **kwargs)
        return
    final = Path(out_dir) / filename
    tmp = final.with_name(f".{filename}.{os.getpid()}.tmp")
    message = None
    try:
        original(out_dir, tmp.name, *args, **kwargs)
        if runner.rank == 0:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, final)
    except Exception as err:
        tmp.unlink(missing_ok=True)
        cause = oserror_in(err)
        if cause is None:
            raise
        message = f"{save_error(final, cause, None)}; {_previous_checkpoint_note(runner)}"
    message = broadcast_object(message)
    if message is not None:
        raise SaveError(message)


def _previous_checkpoint_note(runner: Any) -> str:
    """The work dir's newest checkpoint (mmengine's ``last_checkpoint`` pointer): whether it is still there."""
    pointer = Path(runner.work_dir) / "last_checkpoint"
    previous = Path(pointer.read_text().strip()) if pointer.is_file() else None
    if previous is None or not previous.is_file():
        return "no earlier checkpoint of this work dir is left: free space (or fix the permissions) and rerun"
    return (
        f"the previous checkpoint {previous} ({previous.stem}, {format_bytes(previous.stat().st_size)}) is intact: "
        "free space (or fix the permissions) and rerun with --resume to continue from it"
    )
