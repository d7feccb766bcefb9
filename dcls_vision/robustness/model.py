"""Rebuild a model from a trainer checkpoint (its stored config) and load its weights or its EMA, safely."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dcls_vision.engine.checkpoint import BEST_EMA, load_checkpoint
from dcls_vision.engine.trainer import build_model

from .config import EvalConfigError


@dataclass
class LoadedModel:
    """A model ready for evaluation plus what the report needs to say where it came from."""

    model: nn.Module
    config: DictConfig  # the training run's resolved config
    weights: str  # "model" or "ema"
    epoch: int | None
    stored_metrics: dict[str, Any] | None  # best.pth / best_ema.pth: the trainer's val figures for these weights


def load_model(path: Path, use_ema: bool = False, device: torch.device | str = "cpu") -> LoadedModel:
    """Load ``path`` with ``weights_only=True`` and rebuild the network with the trainer's ``build_model``.

    ``use_ema``: the ``ema`` weights of ``last.pth``/``epoch_XXXX.pth``. ``best_ema.pth`` holds EMA weights under
    ``model`` (the trainer's ``save_best``), so it is labelled "ema" whatever ``use_ema`` says.
    """
    try:
        state = load_checkpoint(path, map_location="cpu")
    except Exception as err:  # pickle/zip errors: not a torch checkpoint, or one with non-tensor objects
        raise EvalConfigError(
            f"checkpoint={str(path)!r} cannot be loaded with weights_only=True ({err}); allowed: "
            f"a .pth written by train.py"
        ) from err
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        keys = sorted(state)[:8] if isinstance(state, dict) else type(state).__name__
        raise EvalConfigError(
            f"checkpoint={str(path)!r} has no 'model' and 'config' entries (found {keys}); allowed: "
            f"last.pth, best.pth, best_ema.pth or epoch_XXXX.pth of a train.py run"
        )
    weights, sd = ("ema" if path.name == BEST_EMA else "model"), state["model"]  # best_ema.pth: EMA under "model"
    if use_ema and weights != "ema":
        if state.get("ema") is None:
            raise EvalConfigError(
                f"use_ema=true but checkpoint={str(path)!r} holds no EMA weights (trained with "
                f"trainer.ema.enabled=false?); allowed: use_ema=false, or last.pth / best_ema.pth "
                f"of a run with EMA"
            )
        weights, sd = "ema", state["ema"]
    cfg = OmegaConf.create(state["config"])
    data = cfg.data
    model = build_model(cfg, int(data.num_classes), int(data.get("in_chans") or 3))
    _load_weights(model, sd, path)
    model.to(device).eval()
    metrics = state.get("metrics") if "optimizer" not in state else None
    epoch = state.get("epoch", state.get("next_epoch"))
    return LoadedModel(model, cfg, weights, None if epoch is None else int(epoch), metrics)


def _load_weights(model: nn.Module, sd: dict[str, Tensor], path: Path) -> None:
    sd = {k.removeprefix("module."): v for k, v in sd.items()}  # DDP-wrapped state dicts
    try:
        model.load_state_dict(sd)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise EvalConfigError(
            f"checkpoint={str(path)!r}: weights do not fit the model rebuilt from its config ({first})"
        ) from err


class SubsetLogits(nn.Module):
    """Keep only the output columns ``indices`` (ImageNet-A/-R: the 200 classes of the subset, in its order)."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.as_tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).index_select(1, self.indices.to(x.device))
