"""Models for analysis: from a timm name, or rebuilt from a trainer checkpoint's stored config.

A checkpoint is loaded with ``weights_only=True`` and the model is rebuilt exactly as the trainer built it
(:func:`dcls_vision.engine.trainer.build_model` on the checkpoint's resolved ``config``), so what the tools
analyse is what was trained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcls_vision.engine import checkpoint as ckpt

from .errors import AnalysisError


@dataclass
class LoadedModel:
    """A model in eval mode with what the tools need to feed it."""

    model: nn.Module
    name: str
    source: str  # "timm:<name>" or the checkpoint path
    num_classes: int
    in_chans: int
    img_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    config: dict[str, Any] | None = None
    epoch: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source, "num_classes": self.num_classes, "in_chans": self.in_chans,
                "img_size": list(self.img_size), "epoch": self.epoch}


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` (values parsed as JSON when they can be) -> (name, kwargs)."""
    import timm

    import dcls_vision.models  # noqa: F401  (registers the DCLS variants)

    name, _, rest = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise AnalysisError(f"model spec {spec!r}: {item!r} is not key=value; allowed: name:key=value,key=value")
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    if not timm.is_model(name):
        raise AnalysisError(
            f"model {name!r} is not a registered timm model; allowed: a timm.list_models() name such as "
            "convnext_tiny, convnext_tiny_dcls, convnext_tiny_dcls_gauss, dcls_quickstart"
        )
    return name, kwargs


def from_timm(spec: str, **overrides: Any) -> LoadedModel:
    """A freshly initialised timm model (``spec`` as in :func:`parse_model_spec`), eval mode."""
    import timm

    name, kwargs = parse_model_spec(spec)
    try:
        model = timm.create_model(name, **{**kwargs, **overrides})
    except (TypeError, ValueError) as e:
        raise AnalysisError(f"cannot build model {spec!r}: {e}") from e
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    in_chans = int(overrides.get("in_chans", kwargs.get("in_chans", input_size[0])))
    mean = tuple(cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(cfg.get("std", (0.229, 0.224, 0.225)))
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    return LoadedModel(model.eval(), spec, f"timm:{spec}", int(getattr(model, "num_classes", 0)), in_chans,
                       (int(input_size[1]), int(input_size[2])), mean, std)


def resolve_checkpoint(path: str | Path, ema: bool = False) -> Path:
    """A checkpoint file, or a run dir's ``last.pth`` (with ``ema``: ``best_ema.pth`` if there is no last)."""
    p = Path(path)
    if p.is_dir():
        for name in (ckpt.LAST, ckpt.BEST_EMA if ema else ckpt.BEST):
            if (p / name).is_file():
                return p / name
        raise AnalysisError(f"--checkpoint {str(path)!r} is a directory without {ckpt.LAST} or {ckpt.BEST}; "
                            "allowed: a .pth file or a run dir holding one")
    if not p.is_file():
        raise AnalysisError(f"--checkpoint {str(path)!r} does not exist; allowed: a .pth file or a run dir")
    return p


def from_checkpoint(path: str | Path, ema: bool = False, map_location: str = "cpu") -> LoadedModel:
    """Rebuild the trainer's model from a checkpoint (``config`` key) and load its (EMA) weights."""
    from omegaconf import OmegaConf

    from dcls_vision.engine.trainer import build_model

    file = resolve_checkpoint(path, ema)
    try:
        state = ckpt.load_checkpoint(file, map_location=map_location)
    except Exception as e:  # torch raises many kinds for a corrupt or non-checkpoint file
        raise AnalysisError(f"--checkpoint {str(file)!r} cannot be loaded with weights_only=True: {e}") from e
    if not isinstance(state, dict) or "model" not in state or not isinstance(state.get("config"), dict):
        raise AnalysisError(f"--checkpoint {str(file)!r} has no 'model' and 'config' keys; allowed: a checkpoint "
                            "written by the trainer (last.pth, best.pth, best_ema.pth, epoch_XXXX.pth)")
    weights = state["model"]
    if ema:
        if state.get("ema") is not None:
            weights = state["ema"]
        elif file.name != ckpt.BEST_EMA:
            raise AnalysisError(f"--ema: {str(file)!r} holds no EMA weights; allowed: last.pth of a run with "
                                "trainer.ema.enabled=true, or best_ema.pth")
    cfg = OmegaConf.create(state["config"])
    data = cfg.get("data", {})
    num_classes, in_chans = int(data.get("num_classes", 1000)), int(data.get("in_chans", 3))
    model = build_model(cfg, num_classes, in_chans)
    model.load_state_dict(weights)
    size = int(data.get("test_img_size") or data.get("img_size") or 224)
    mean = tuple(float(v) for v in data.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in data.get("std", (0.229, 0.224, 0.225)))
    epoch = state.get("epoch")
    return LoadedModel(model.eval(), str(cfg.model.name), str(file), num_classes, in_chans, (size, size), mean, std,
                       OmegaConf.to_container(cfg, resolve=True), None if epoch is None else int(epoch))


def load(model: str | None = None, checkpoint: str | None = None, ema: bool = False) -> LoadedModel:
    """The model a tool analyses: ``checkpoint`` if given, else the timm ``model`` spec."""
    if checkpoint:
        return from_checkpoint(checkpoint, ema)
    if model:
        return from_timm(model)
    raise AnalysisError("no model given; allowed: --model NAME (timm name) or --checkpoint PATH (file or run dir)")


def example_input(loaded: LoadedModel, batch: int = 1, img_size: int | None = None,
                  device: str | torch.device = "cpu", seed: int = 0) -> torch.Tensor:
    """A reproducible standard-normal batch of the model's input shape."""
    h, w = (img_size, img_size) if img_size else loaded.img_size
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, loaded.in_chans, h, w, generator=g).to(device)
