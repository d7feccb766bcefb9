"""Models for analysis, through the model factory: a timm spec, or a checkpoint of any format (file or run dir).

:func:`dcls_vision.models.factory.load_model` rebuilds a checkpoint's network exactly as the trainer built it
(``build_model`` on its stored ``config``), so what the tools analyse is what was trained. Here its errors get
the CLI option they concern, and :func:`example_input` makes the tools' reproducible input batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcls_vision.models.checkpoint_formats import ModelLoadError
from dcls_vision.models.factory import LoadedModel, load_model, parse_model_spec

from .errors import AnalysisError

__all__ = ["LoadedModel", "example_input", "from_checkpoint", "load"]


def from_checkpoint(
    path: str | Path, ema: bool = False, map_location: str = "cpu", model: str | None = None
) -> LoadedModel:
    """A checkpoint of any format the factory reads (file or run dir) as a model; ``model`` (a timm spec) names
    the network of a file without a run config (a state dict, ``.safetensors``) and must match one with."""
    name, kwargs = parse_model_spec(model) if model else (None, {})
    try:
        return load_model(Path(path), use_ema=ema, map_location=map_location, model_name=name, **kwargs)
    except ModelLoadError as e:
        option = {"no_ema": "--ema", "no_config": "--checkpoint-model"}.get(e.reason, "--checkpoint")
        raise AnalysisError(f"{option}: {e}".replace("model_name=", "--checkpoint-model ")) from e


def load(
    model: str | None = None, checkpoint: str | None = None, ema: bool = False, checkpoint_model: str | None = None
) -> LoadedModel:
    """The model a tool analyses: ``checkpoint`` if given (its network: the run config, else ``checkpoint_model``
    or ``model``), else the timm ``model`` spec."""
    if checkpoint:
        return from_checkpoint(checkpoint, ema, model=checkpoint_model or model)
    if model:
        try:
            return load_model(f"timm:{model}")
        except ModelLoadError as e:
            raise AnalysisError(f"--model: {e}") from e
    raise AnalysisError("no model given; allowed: --model NAME (timm name) or --checkpoint PATH (file or run dir)")


def example_input(
    loaded: LoadedModel, batch: int = 1, img_size: int | None = None, device: str | torch.device = "cpu", seed: int = 0
) -> torch.Tensor:
    """A reproducible standard-normal batch of the model's input shape."""
    h, w = (img_size, img_size) if img_size else loaded.img_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, loaded.in_chans, h, w, generator=g).to(device)
