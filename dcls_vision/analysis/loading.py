"""Models for analysis, through the model factory: a timm spec, or a trainer checkpoint (file or run dir).

:func:`dcls_vision.models.factory.load_model` rebuilds a checkpoint's network exactly as the trainer built it
(``build_model`` on its stored ``config``), so what the tools analyse is what was trained. Here its errors get
the CLI option they concern, and :func:`example_input` makes the tools' reproducible input batch.
"""

from __future__ import annotations

from pathlib import Path

import torch

from dcls_vision.models.factory import LoadedModel, ModelLoadError, load_model

from .errors import AnalysisError

__all__ = ["LoadedModel", "example_input", "from_checkpoint", "load"]


def from_checkpoint(path: str | Path, ema: bool = False, map_location: str = "cpu") -> LoadedModel:
    """A checkpoint file or run dir (its ``last.pth``; with ``ema`` else ``best_ema.pth``) as a model."""
    try:
        return load_model(Path(path), use_ema=ema, map_location=map_location)
    except ModelLoadError as e:
        raise AnalysisError(f"{'--ema' if e.reason == 'no_ema' else '--checkpoint'}: {e}") from e


def load(model: str | None = None, checkpoint: str | None = None, ema: bool = False) -> LoadedModel:
    """The model a tool analyses: ``checkpoint`` if given, else the timm ``model`` spec."""
    if checkpoint:
        return from_checkpoint(checkpoint, ema)
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
