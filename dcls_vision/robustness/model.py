"""The model eval.py evaluates, through the model factory's one load path, and the subset head for ImageNet-A/-R.

Our trainer's checkpoints carry the run config (model, class order, preprocessing). Any other format the factory
reads (a release, a plain or ``{"model": ...}`` state dict, ``.safetensors``), and timm's weights via
``model.pretrained_file``, need ``model.name``; their data config is the model's timm pretrained config (ImageNet-1k
class order), and ``data.*`` overrides either.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dcls_vision.engine.schema import ImageFolderDataConfig, TrainerConfig
from dcls_vision.models.checkpoint_formats import ModelLoadError
from dcls_vision.models.factory import LoadedModel
from dcls_vision.models.factory import load_model as factory_load_model
from dcls_vision.utils.config import plain_dict

from .config import EvalConfigError

__all__ = ["LoadedModel", "SubsetLogits", "load_model"]


def _foreign_run_config(loaded: LoadedModel) -> DictConfig:
    """A run config for weights without one: the timm pretrained data config, the trainer's schema defaults."""
    d = loaded.data
    data = OmegaConf.to_container(OmegaConf.structured(ImageFolderDataConfig))
    data.update(
        num_classes=d.num_classes,
        in_chans=d.in_chans,
        img_size=d.img_size[0],
        mean=list(d.mean),
        std=list(d.std),
        interpolation=d.interpolation or data["interpolation"],
        crop_pct=d.crop_pct,
    )
    trainer = OmegaConf.to_container(OmegaConf.structured(TrainerConfig), resolve=False)
    trainer.pop("output_dir")
    return OmegaConf.create(
        {"experiment_name": loaded.name, "model": loaded.model_cfg, "data": data, "trainer": trainer}
    )


def _with_data_overrides(config: DictConfig, data: Mapping[str, Any]) -> DictConfig:
    """``data.*`` of eval.py replace the run's / pretrained config's values; img_size is the eval size."""
    given = {k: v for k, v in data.items() if v is not None}
    if "img_size" in given and "test_img_size" in config.data:
        given["test_img_size"] = given["img_size"]
    return OmegaConf.merge(config, {"data": given}) if given else config


def load_model(
    path: Path,
    use_ema: bool = False,
    device: torch.device | str = "cpu",
    model: Mapping[str, Any] | None = None,
    data: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """:func:`dcls_vision.models.factory.load_model` of a weights file, on ``device``; errors exit 2.

    ``model``: eval.py's ``model`` group (``name``, ``kwargs``, ``pretrained_file``): ``name`` is required for
    files without a run config; with ``pretrained_file`` (then ``path`` is that file) timm loads its own weights.
    ``use_ema``: the ``ema`` weights of ``last.pth``/``epoch_XXXX.pth``. ``best_ema.pth`` holds EMA weights under
    ``model`` (the trainer's ``save_best``), so it is labelled "ema" whatever ``use_ema`` says.
    """
    model = dict(model or {})
    name, kwargs = model.get("name"), plain_dict(model.get("kwargs"))
    try:
        if model.get("pretrained_file"):
            loaded = factory_load_model(f"timm:{name}", pretrained_file=str(path), **kwargs)
        else:
            loaded = factory_load_model(path, use_ema=use_ema, model_name=name, **kwargs)
    except ModelLoadError as err:
        raise EvalConfigError(str(err).replace("model_name=", "model.name=")) from err
    if loaded.config is None or not {"data", "trainer"} <= set(loaded.config.keys()):  # not a train.py run config
        loaded.config = _foreign_run_config(loaded)
    loaded.config = _with_data_overrides(loaded.config, dict(data or {}))
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
