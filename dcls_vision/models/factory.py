"""Config → model and checkpoint → model: the model factory every entry point builds and loads networks with.

:func:`build_model` is how a run config becomes a network (the trainer's call): ``timm.create_model`` of
``model.name`` with ``model.kwargs`` and ``model.drop_path_rate`` (and, with ``model.pretrained_file``, timm's
own weights from that local file). :func:`load_model` gives a ready model (eval mode) from any source: one of our
checkpoints (rebuilt from the run config stored in it), a run dir, a bare or wrapped state dict (with
``model_name=``) or a timm model spec, with its data config, which weights were loaded and where they came from.
Files are read by :func:`.checkpoint_formats.read_checkpoint` (the formats understood); starting a new run from a
checkpoint is :func:`.finetune_init.init_from_checkpoint`. :class:`ModelLoadError` (defined with the readers) is
the error of :func:`build_model` and :func:`load_model` too, so it is part of this module's public API.
This module sits in the models layer: it imports utils/timm and its sibling readers, never engine, data or above.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dcls_vision.utils.config import plain_dict

from .checkpoint_formats import (
    CheckpointInfo,
    ModelLoadError,
    apply_filter,
    read_checkpoint,
    resolve_checkpoint,
    shape_text,
)
from .hub import is_hub_source

__all__ = ["DataConfig", "LoadedModel", "ModelLoadError", "Provenance", "build_model", "load_model", "parse_model_spec"]

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar")


# ------------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class DataConfig:
    """What feeding the model needs: classes, channels, eval size, crop, interpolation, normalisation."""

    num_classes: int
    in_chans: int
    img_size: tuple[int, int]
    crop_pct: float | None
    interpolation: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class Provenance:
    """Where the weights of a :class:`LoadedModel` came from."""

    source: str  # the checkpoint path, or "timm:<spec>"
    format: str  # a CheckpointFormat name ("ours", "release", ...), "timm" (fresh), "timm-file" (pretrained_file)
    key: str | None = None


@dataclass
class LoadedModel:
    """A model in eval mode with its data config, which weights it holds and their provenance."""

    model: nn.Module
    name: str  # model.name of the run, or the timm spec
    model_cfg: dict[str, Any]  # name, kwargs (, drop_path_rate): what build_model was given
    data: DataConfig
    weights: str  # "model", "ema", "init" (a freshly initialised timm model) or "pretrained" (timm's, from a file)
    provenance: Provenance
    config: DictConfig | None = None  # the training run's resolved config (our checkpoints)
    epoch: int | None = None
    stored_metrics: dict[str, Any] | None = None  # best.pth / best_ema.pth: the trainer's val figures
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        return self.provenance.source

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def in_chans(self) -> int:
        return self.data.in_chans

    @property
    def img_size(self) -> tuple[int, int]:
        return self.data.img_size

    @property
    def mean(self) -> tuple[float, ...]:
        return self.data.mean

    @property
    def std(self) -> tuple[float, ...]:
        return self.data.std

    def describe(self) -> dict[str, Any]:
        """The JSON-able summary the analysis reports carry."""
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "img_size": list(self.img_size),
            "epoch": self.epoch,
            "weights": self.weights,
            "format": self.provenance.format,
        }


# ------------------------------------------------------------------------------------- build_model
def build_model(model_cfg: Mapping[str, Any], num_classes: int, in_chans: int) -> nn.Module:
    """The network of a run config: ``timm.create_model(name, **kwargs, drop_path_rate=...)``.

    ``model_cfg`` is the model group (``name``, ``kwargs``, ``drop_path_rate``) or a whole run config holding it
    under ``model`` (the trainer passes its config).
    """
    inner = model_cfg.get("model")
    node = inner if isinstance(inner, Mapping) else model_cfg
    name, kwargs = str(node["name"]), plain_dict(node.get("kwargs"))
    drop_path = node.get("drop_path_rate")
    if drop_path is not None:
        kwargs["drop_path_rate"] = drop_path
    pretrained_file = node.get("pretrained_file")
    if not pretrained_file:
        return timm.create_model(name, num_classes=num_classes, in_chans=in_chans, **kwargs)
    overlay = _pretrained_file_overlay(name, str(pretrained_file))
    try:  # timm's own loader: its filter_fn, a different num_classes drops the head, in_chans adapts the stem
        return timm.create_model(
            name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=num_classes, in_chans=in_chans, **kwargs
        )
    except (RuntimeError, ValueError, KeyError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"model.pretrained_file={pretrained_file!r} cannot be loaded into {name!r} ({first}); allowed: timm's "
            "weights of that baseline (safetensors, .bin or .pth); for a DCLS model or one of our checkpoints use "
            "model.init_checkpoint= (train.py) or checkpoint= (eval.py)",
            "mismatch",
            Path(pretrained_file),
        ) from err


PRETRAINED_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def _pretrained_file_overlay(name: str, pretrained_file: str) -> dict[str, Any]:
    """timm's ``pretrained_cfg_overlay`` that loads ``pretrained_file`` and can never download (no hub id, url)."""
    path = Path(pretrained_file).expanduser()
    if not path.is_file() or not path.name.endswith(PRETRAINED_SUFFIXES):
        why = "does not exist" if not path.is_file() else "is not a weights file"
        raise ModelLoadError(
            f"model.pretrained_file={pretrained_file!r} {why}; allowed: a local file of timm weights for {name!r} "
            f"({', '.join(PRETRAINED_SUFFIXES)}); nothing is downloaded",
            "missing",
            path,
        )
    return {"file": str(path.resolve()), "source": "", "hf_hub_id": None, "url": None, "state_dict": None}


# ------------------------------------------------------------------------------------- load_model
def _is_timm_spec(source: str | os.PathLike) -> bool:
    """``timm:...``, or a string that is neither an existing path nor shaped like one (no ``/``, no .pth)."""
    if not isinstance(source, str) or is_hub_source(source):
        return False
    if source.startswith("timm:"):
        return True
    return not (os.path.exists(source) or os.sep in source or source.endswith(_FILE_SUFFIXES))


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``"name:key=value,key=value"`` (values parsed as JSON when they can be) -> (name, kwargs)."""
    name, _, rest = spec.removeprefix("timm:").partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ModelLoadError(
                f"model spec {spec!r}: {item!r} is not key=value; allowed: name:key=value,key=value", "bad_spec"
            )
        try:
            kwargs[key] = json.loads(value)
        except json.JSONDecodeError:
            kwargs[key] = value
    if not timm.is_model(name):
        raise ModelLoadError(
            f"model {name!r} is not a registered timm model; allowed: a timm.list_models() name such as "
            "convnext_tiny, convnext_tiny_dcls, convnext_tiny_dcls_gauss, dcls_quickstart",
            "bad_spec",
        )
    return name, kwargs


def _data_from_run(config: Mapping[str, Any]) -> DataConfig:
    data = config.get("data") or {}
    size = int(data.get("test_img_size") or data.get("img_size") or 224)
    crop = data.get("crop_pct")
    return DataConfig(
        int(data.get("num_classes") or 1000),
        int(data.get("in_chans") or 3),
        (size, size),
        None if crop is None else float(crop),
        data.get("interpolation"),
        tuple(float(v) for v in data.get("mean") or IMAGENET_MEAN),
        tuple(float(v) for v in data.get("std") or IMAGENET_STD),
    )


def _data_from_timm(model: nn.Module, in_chans: int | None = None) -> DataConfig:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    input_size = tuple(cfg.get("input_size", (3, 224, 224)))
    in_chans = int(in_chans or input_size[0])
    mean, std = tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    if len(mean) != in_chans:
        mean, std = (sum(mean) / len(mean),) * in_chans, (sum(std) / len(std),) * in_chans
    crop = cfg.get("crop_pct")
    return DataConfig(
        int(getattr(model, "num_classes", 0)),
        in_chans,
        (int(input_size[1]), int(input_size[2])),
        None if crop is None else float(crop),
        cfg.get("interpolation"),
        mean,
        std,
    )


def _from_timm(spec: str, overrides: dict[str, Any], pretrained_file: str | None = None) -> LoadedModel:
    """A timm model: freshly initialised (weights "init", the analysis tools' ``--model``), or with timm's own
    weights from ``pretrained_file`` (weights "pretrained", via :func:`build_model`)."""
    spec = spec.removeprefix("timm:")
    name, kwargs = parse_model_spec(spec)
    kwargs = {**kwargs, **overrides}
    if pretrained_file:
        num_classes = kwargs.pop("num_classes", None) or timm.get_pretrained_cfg_value(name, "num_classes") or 1000
        in_chans = int(kwargs.pop("in_chans", None) or 3)
        model_cfg = {"name": name, "kwargs": kwargs, "pretrained_file": str(pretrained_file)}
        model = build_model(model_cfg, int(num_classes), in_chans)
        data = _data_from_timm(model, in_chans)
        provenance = Provenance(str(pretrained_file), "timm-file")
        return LoadedModel(model.eval(), spec, model_cfg, data, "pretrained", provenance)
    try:
        model = timm.create_model(name, **kwargs)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"cannot build model {spec!r}: {e}", "bad_spec") from e
    data = _data_from_timm(model, kwargs.get("in_chans"))
    return LoadedModel(
        model.eval(), spec, {"name": name, "kwargs": kwargs}, data, "init", Provenance(f"timm:{spec}", "timm")
    )


def _model_cfg(info: CheckpointInfo, model_name: str | None, overrides: dict[str, Any]) -> dict[str, Any]:
    run_model = (info.config or {}).get("model")
    if isinstance(run_model, Mapping):
        if model_name is not None and model_name != run_model.get("name"):
            raise ModelLoadError(
                f"model_name={model_name!r} but checkpoint={str(info.path)!r} was trained as "
                f"{run_model.get('name')!r}; allowed: model_name=None",
                "mismatch",
                info.path,
            )
        # the run's initial weights (a timm file, a fine-tuning source) are superseded by these: never reload them
        cfg = {k: v for k, v in run_model.items() if k not in ("pretrained_file", "init_checkpoint")}
    elif model_name is None:
        raise ModelLoadError(
            f"checkpoint={str(info.path)!r} ({info.format} format) stores no model config; allowed: "
            "pass model_name=<timm name> (and num_classes=, in_chans= if not timm's defaults)",
            "no_config",
            info.path,
        )
    else:
        cfg = {"name": model_name}
    if overrides:
        cfg["kwargs"] = {**plain_dict(cfg.get("kwargs")), **overrides}
    return cfg


def _key_problems(own: Mapping[str, Tensor], state: Mapping[str, Tensor], shown: int = 3) -> str:
    """Counts and the first few keys that are missing, unexpected or of another shape (torch's own message is a
    paragraph per key; its first line names none)."""
    groups = (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        (
            "of another shape",
            [
                f"{k} {shape_text(v)} vs {shape_text(own[k])}"
                for k, v in state.items()
                if k in own and v.shape != own[k].shape
            ],
        ),
    )
    return "; ".join(
        f"{len(keys)} {what}: {', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''}"
        for what, keys in groups
        if keys
    )


def _load_weights(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    problems = _key_problems(model.state_dict(), state)
    if problems:
        raise ModelLoadError(
            f"checkpoint={str(path)!r}: weights do not fit the model rebuilt from its config ({problems}); allowed: "
            "model_name= / model kwargs of the architecture the file was trained with",
            "mismatch",
            path,
        )
    model.load_state_dict(state)


def load_model(
    source: str | os.PathLike,
    *,
    use_ema: bool = False,
    map_location: str | torch.device = "cpu",
    model_name: str | None = None,
    formats: Sequence[str] | None = None,
    pretrained_file: str | None = None,
    **overrides: Any,
) -> LoadedModel:
    """A model in eval mode from a checkpoint file, a run dir or a timm spec (``"timm:name:k=v"`` or a bare name).

    Checkpoints are rebuilt with :func:`build_model` from the run config they store (``model_name=`` for state
    dicts without one) and their weights (``use_ema``: the EMA ones) loaded strictly. ``overrides``: more
    ``timm.create_model`` kwargs (``num_classes`` / ``in_chans`` replace the run's). ``formats`` restricts the
    readers. ``pretrained_file`` (with a timm spec only): timm's own weights of that model from a local file.
    Without a run config in the file the data config is the model's timm pretrained config.
    """
    if _is_timm_spec(source):
        return _from_timm(str(source), overrides, pretrained_file)
    if pretrained_file:
        raise ModelLoadError(
            f"model.pretrained_file={pretrained_file!r} and checkpoint={str(source)!r} both given; allowed: one "
            "source of weights",
            "bad_spec",
        )
    state, info = read_checkpoint(resolve_checkpoint(source, use_ema), use_ema, map_location, formats)
    num_classes, in_chans = overrides.pop("num_classes", None), overrides.pop("in_chans", None)
    model_cfg = _model_cfg(info, model_name, overrides)
    has_data = bool(info.config) and isinstance(info.config.get("data"), Mapping)  # else: timm's pretrained cfg
    run_data = _data_from_run(info.config) if has_data else None
    if run_data is not None:
        num_classes, in_chans = num_classes or run_data.num_classes, in_chans or run_data.in_chans
        run_data = replace(run_data, num_classes=int(num_classes), in_chans=int(in_chans))
    model = build_model(model_cfg, int(num_classes or 1000), int(in_chans or 3))
    _load_weights(model, apply_filter(info, state, model), info.path)
    data = run_data if run_data is not None else _data_from_timm(model, in_chans)
    config = OmegaConf.create(info.config) if info.config else None
    return LoadedModel(
        model.eval(),
        str(model_cfg["name"]),
        model_cfg,
        data,
        info.weights,
        Provenance(str(info.path), info.format, info.key),
        config,
        info.epoch,
        info.metrics,
        {"ignored_entries": list(info.ignored)},
    )
