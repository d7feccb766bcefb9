"""The checkpoint eval.py evaluates, through the model factory (only our trainer's files: the run config in them
gives the data pipeline), and the subset head for ImageNet-A/-R."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from dcls_vision.models.factory import LoadedModel, ModelLoadError
from dcls_vision.models.factory import load_model as factory_load_model

from .config import EvalConfigError

__all__ = ["LoadedModel", "SubsetLogits", "load_model"]


def load_model(path: Path, use_ema: bool = False, device: torch.device | str = "cpu") -> LoadedModel:
    """:func:`dcls_vision.models.factory.load_model` of a train.py checkpoint, on ``device``; errors exit 2.

    ``use_ema``: the ``ema`` weights of ``last.pth``/``epoch_XXXX.pth``. ``best_ema.pth`` holds EMA weights under
    ``model`` (the trainer's ``save_best``), so it is labelled "ema" whatever ``use_ema`` says.
    """
    try:
        loaded = factory_load_model(path, use_ema=use_ema, formats=("ours",))
    except ModelLoadError as err:
        raise EvalConfigError(str(err)) from err
    loaded.model.to(device).eval()
    return loaded


class SubsetLogits(nn.Module):
    """Keep only the output columns ``indices`` (ImageNet-A/-R: the 200 classes of the subset, in its order)."""

    def __init__(self, model: nn.Module, indices: list[int]) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("indices", torch.as_tensor(indices, dtype=torch.long), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x).index_select(1, self.indices.to(x.device))
