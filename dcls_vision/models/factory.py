"""Config → model and checkpoint → model, in one place.

:func:`build_model` is how a run config becomes a network (the trainer's call): ``timm.create_model`` of
``model.name`` with ``model.kwargs`` and ``model.drop_path_rate`` (and, with ``model.pretrained_file``, timm's
own weights from that local file). :func:`init_from_checkpoint` starts a new run from any checkpoint
(``model.init_checkpoint``; the classifier is skipped when ``num_classes`` differs). :func:`load_model` gives a
ready model (eval mode) from any source: one of our checkpoints (rebuilt from the run config stored in it), a
run dir, a bare or wrapped state dict (with ``model_name=``) or a timm model spec, with its data config, which
weights were loaded and where they came from. Files are read with ``weights_only=True`` by the first matching reader of
:data:`CHECKPOINT_FORMATS`; teaching the factory a new source (published releases) is appending a reader.
This module sits in the models layer: it imports ops/utils/timm, never engine, data or anything above.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from dcls_vision.ops import DclsLayer
from dcls_vision.utils.config import plain_dict
from dcls_vision.utils.errors import UserError
from dcls_vision.utils.io import BEST, BEST_EMA, LAST, UnsafeCheckpointError, load_checkpoint

from .audio_release import AUDIO_RELEASE_DESCRIPTION, AudioReleaseError, convert_audio_release, is_audio_release
from .hub import HubSourceError, is_hub_source, read_hub
from .release import (
    RELEASE_DESCRIPTION,
    ReleaseFormatError,
    ReleaseNoEmaError,
    convert_release,
    is_release,
    names_ema,
    pick_release_entry,
)

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP, torch.compile
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors", ".tar")


class ModelLoadError(UserError):
    """A source that cannot become a model; the message is one line naming the file/value and what is allowed.

    ``reason`` lets callers that speak another option vocabulary (``--ema``, ``checkpoint_key``) rephrase:
    ``missing``, ``unreadable``, ``unknown_format``, ``no_ema``, ``no_config``, ``mismatch``, ``bad_spec``.
    """

    def __init__(self, message: str, reason: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.reason, self.path = reason, path


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
class CheckpointInfo:
    """Where a state dict came from: file, format, entry, weights label and what the file says about them."""

    path: Path
    format: str  # a CheckpointFormat name
    key: str | None  # the file entry holding the weights ("model", "ema", "state_dict"; None: the file itself)
    weights: str  # "model" or "ema"
    config: dict[str, Any] | None = None  # the run's resolved config (our checkpoints)
    epoch: int | None = None
    metrics: dict[str, Any] | None = None  # best*.pth: the trainer's val figures for these weights
    ignored: tuple[str, ...] = ()  # the file's other entries, not used (the other weights, optimizer, args, ...)
    # a key mapping that needs the built model (timm's checkpoint_filter_fn of a foreign layout), or None
    filter_fn: Callable[[Mapping[str, Tensor], nn.Module], Mapping[str, Tensor]] | None = None


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


# ------------------------------------------------------------------------------- checkpoint formats
def strip_prefix(name: str) -> str:
    """``name`` without ``module.`` / ``_orig_mod.`` wrapper prefixes (DDP, torch.compile), however nested."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if name.startswith(prefix):
                name, changed = name[len(prefix) :], True
    return name


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, Tensor) for v in obj.values())


def _no_ema(path: Path, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"use_ema=true but checkpoint={str(path)!r} holds no EMA weights ({why}); allowed: use_ema=false, or "
        "last.pth / best_ema.pth of a run with trainer.ema.enabled=true",
        "no_ema",
        path,
    )


def _read_ours(obj: Mapping[str, Any], path: Path, use_ema: bool) -> tuple[Mapping[str, Tensor], CheckpointInfo]:
    """The trainer's files. ``best_ema.pth`` holds EMA weights under ``model`` (``save_best``): labelled "ema"."""
    weights, key = ("ema" if path.name == BEST_EMA else "model"), "model"
    if use_ema and weights != "ema":
        if obj.get("ema") is None:
            raise _no_ema(path, "trained with trainer.ema.enabled=false, or a best.pth: one set under 'model'")
        weights, key = "ema", "ema"
    epoch = obj.get("epoch", obj.get("next_epoch"))
    metrics = obj.get("metrics") if "optimizer" not in obj else None  # best*.pth: figures of these weights
    info = CheckpointInfo(
        path, "ours", key, weights, dict(obj["config"]), None if epoch is None else int(epoch), metrics
    )
    return obj[key], info


EMA_KEYS = ("ema", "model_ema", "state_dict_ema")  # ours (last.pth), ConvNeXt / ConvNeXt-dcls, timm train.py


def _wrapped_key(obj: Any) -> str | None:
    if not isinstance(obj, Mapping):
        return None
    return next((k for k in ("state_dict", "model") if _is_state_dict(obj.get(k))), None)


def _read_wrapped(obj: Mapping[str, Any], path: Path, use_ema: bool) -> tuple[Mapping[str, Tensor], CheckpointInfo]:
    """A state dict under ``state_dict`` (timm, mmengine) or ``model`` (without a run config), maybe with EMA
    weights (:data:`EMA_KEYS`): taken with ``use_ema``, or by default when the file name says EMA (ConvNeXt's
    ``checkpoint-best-ema.pth`` holds the non-EMA weights under ``model``)."""
    key, weights = _wrapped_key(obj), "model"
    ema_key = next((k for k in EMA_KEYS if _is_state_dict(obj.get(k))), None)
    if use_ema and ema_key is None:
        raise _no_ema(path, f"a state dict under {key!r} without an entry of {', '.join(EMA_KEYS)}")
    if ema_key is not None and (use_ema or names_ema(path.name)):
        key, weights = ema_key, "ema"
    config = obj.get("config") if isinstance(obj.get("config"), Mapping) else None
    ignored = tuple(str(k) for k in obj if k != key)
    return obj[key], CheckpointInfo(
        path, "wrapped", key, weights, None if config is None else dict(config), ignored=ignored
    )


def _read_plain(obj: Mapping[str, Tensor], path: Path, use_ema: bool) -> tuple[Mapping[str, Tensor], CheckpointInfo]:
    if use_ema:
        raise _no_ema(path, "a bare state dict: one set of weights")
    return obj, CheckpointInfo(path, "plain", None, "model")


def _read_release(obj: Any, path: Path, use_ema: bool) -> tuple[Mapping[str, Tensor], CheckpointInfo]:
    """A ConvNeXt-dcls release or fork training checkpoint (:mod:`.release`) in our layout; its config (model,
    data) is inferred from the tensors; the entry (``model`` / ``model_ema``) and label: ``pick_release_entry``."""
    try:
        entry = pick_release_entry(obj, path.name, use_ema)
        conv = convert_release(entry.state)
    except ReleaseNoEmaError as err:
        raise _no_ema(path, str(err)) from err
    except ReleaseFormatError as err:
        raise ModelLoadError(f"checkpoint={str(path)!r}: {err}", "mismatch", path) from err
    epoch = obj.get("epoch") if isinstance(obj, Mapping) and isinstance(obj.get("epoch"), int) else None
    info = CheckpointInfo(path, "release", entry.key, entry.weights, conv.run_config(), epoch, ignored=entry.ignored)
    return conv.state, info


def _metaformer_layout(obj: Any) -> bool:
    """The MetaFormer repository's layout (sail-sg/metaformer ``metaformer_baselines.py``: ``downsample_layers.N``
    of ``Downsampling`` with ``conv`` / ``pre_norm`` / ``post_norm``, blocks as ``stages.i.j``), bare or wrapped."""
    key = _wrapped_key(obj)
    state = obj[key] if key is not None else obj
    return (
        _is_state_dict(state)
        and "downsample_layers.0.conv.weight" in state
        and any(k.startswith("stages.0.0.") for k in state)
    )


def _metaformer_filter(state: Mapping[str, Tensor], model: nn.Module) -> Mapping[str, Tensor]:
    """timm's own key mapping for that layout (``timm.models.metaformer.checkpoint_filter_fn``: renames, and
    reshapes the repository's Linear weights into timm's 1x1 convs)."""
    from timm.models.metaformer import checkpoint_filter_fn

    return checkpoint_filter_fn(dict(state), model)


def _read_metaformer(obj: Any, path: Path, use_ema: bool) -> tuple[Mapping[str, Tensor], CheckpointInfo]:
    """ConvFormer / CAFormer / PoolFormerV2 weights of the MetaFormer repository (``model_name=`` names the timm
    model); keys are mapped by timm's filter once that model is built."""
    reader = _read_wrapped if _wrapped_key(obj) is not None else _read_plain
    state, info = reader(obj, path, use_ema)
    return state, replace(info, format="metaformer", filter_fn=_metaformer_filter)


def _read_audio_release(obj: Any, path: Path, use_ema: bool) -> tuple[Mapping[str, Tensor], CheckpointInfo]:
    """A DCLS-Audio AudioSet checkpoint (:mod:`.audio_release`) in our ``*_audio`` model's layout; ``model_ema``
    is taken as for the fork's files (asked for, or the file name says EMA), and the label says which was taken."""
    key = "model" if isinstance(obj, Mapping) and "model" in obj else None
    has_ema = isinstance(obj, Mapping) and isinstance(obj.get("model_ema"), Mapping)
    if use_ema and not has_ema:
        raise _no_ema(path, "a DCLS-Audio file without a 'model_ema' entry")
    if has_ema and (use_ema or names_ema(path.name)):
        obj, key = {"model": obj["model_ema"]}, "model_ema"
    try:
        conv = convert_audio_release(obj)
    except AudioReleaseError as err:
        raise ModelLoadError(f"checkpoint={str(path)!r}: {err}", "mismatch", path) from err
    weights = "ema" if key == "model_ema" else "model"
    return conv.state, CheckpointInfo(path, "audio-release", key, weights, conv.run_config())


@dataclass(frozen=True)
class CheckpointFormat:
    """One kind of checkpoint file: ``detect(obj, path)`` says if a loaded file is one, ``read`` takes its weights."""

    name: str
    description: str  # for the error that lists the formats understood
    detect: Callable[[Any, Path], bool]
    read: Callable[[Any, Path, bool], tuple[Mapping[str, Tensor], CheckpointInfo]]


CHECKPOINT_FORMATS: list[CheckpointFormat] = [
    CheckpointFormat(
        "ours",
        "ours: a train.py run's last.pth, best.pth, best_ema.pth or epoch_XXXX.pth (a dict with 'model' and "
        "'config' entries)",
        lambda obj, path: (
            isinstance(obj, Mapping)
            and isinstance(obj.get("model"), Mapping)
            and isinstance(obj.get("config"), Mapping)
        ),
        _read_ours,
    ),
    CheckpointFormat(  # before "release": the DCLS-Audio ConvNeXt shares its layout but has a one-channel stem
        "audio-release", AUDIO_RELEASE_DESCRIPTION, lambda obj, path: is_audio_release(obj), _read_audio_release
    ),
    CheckpointFormat("release", RELEASE_DESCRIPTION, lambda obj, path: is_release(obj), _read_release),
    CheckpointFormat(
        "metaformer",
        "metaformer: ConvFormer/CAFormer/PoolFormerV2 weights of the MetaFormer repository (downsample_layers.N.conv, "
        "stages.i.j; needs model_name=, e.g. convformer_s18)",
        lambda obj, path: _metaformer_layout(obj),
        _read_metaformer,
    ),
    CheckpointFormat(
        "wrapped",
        "wrapped: a state dict under 'state_dict' or 'model' (timm, mmengine; needs model_name=)",
        lambda obj, path: _wrapped_key(obj) is not None,
        _read_wrapped,
    ),
    CheckpointFormat(
        "plain", "plain: a bare state dict (needs model_name=)", lambda obj, path: _is_state_dict(obj), _read_plain
    ),
]


def _formats(names: Sequence[str] | None) -> list[CheckpointFormat]:
    if names is None:
        return list(CHECKPOINT_FORMATS)
    known = {f.name: f for f in CHECKPOINT_FORMATS}
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"formats={list(names)!r}: {bad[0]!r} is not a checkpoint format; allowed: {', '.join(known)}")
    return [known[n] for n in names]


def load_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", allowed: str | None = None) -> Any:
    """A checkpoint file's contents (``weights_only=True``; ``.safetensors``: safetensors), or a
    :class:`ModelLoadError` of one line for a missing path, a directory, or a file torch cannot read safely."""
    path = Path(path)
    allowed = allowed or "; ".join(f.description for f in CHECKPOINT_FORMATS)
    if not path.is_file():
        why = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise ModelLoadError(
            f"checkpoint={str(path)!r} {why}; allowed: a file in a format read here: {allowed}", "missing", path
        )
    try:
        return load_checkpoint(path, map_location=map_location)
    except UnsafeCheckpointError as err:  # one line naming the refused type
        raise ModelLoadError(str(err), "unreadable", path) from err
    except Exception as err:  # pickle/zip errors: not a torch file, or one holding non-tensor objects
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"checkpoint={str(path)!r} cannot be loaded with weights_only=True ({first}); allowed: {allowed}",
            "unreadable",
            path,
        ) from err


def _read_hub_source(source: str, use_ema: bool) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """A ``local-dir:`` / ``hf-hub:`` timm Hub model (:mod:`.hub`): its weights and the config in config.json."""
    if use_ema:
        raise _no_ema(Path(source), "a timm Hub folder holds one set of weights (written EMA or not)")
    try:
        state, config = read_hub(source)
    except HubSourceError as err:
        raise ModelLoadError(str(err), "missing", Path(source)) from err
    return {strip_prefix(k): v for k, v in state.items()}, CheckpointInfo(Path(source), "hub", None, "model", config)


def read_checkpoint(
    path: str | os.PathLike,
    use_ema: bool = False,
    map_location: str | torch.device = "cpu",
    formats: Sequence[str] | None = None,
) -> tuple[dict[str, Tensor], CheckpointInfo]:
    """The (EMA) state dict of a checkpoint file, wrapper prefixes stripped, and what the file says about it.

    Read with ``weights_only=True`` (``.safetensors``: safetensors); the first of :data:`CHECKPOINT_FORMATS` (or
    of ``formats``) that detects the file reads it. ``local-dir:FOLDER`` / ``hf-hub:ORG/NAME`` (a timm Hub model,
    format "hub") are read by timm's own readers. Raises :class:`ModelLoadError` naming the file and the formats
    understood.
    """
    if is_hub_source(path):
        return _read_hub_source(str(path), use_ema)
    path, readers = Path(path), _formats(formats)
    obj = load_file(path, map_location, "; ".join(f.description for f in readers))
    for fmt in readers:
        if fmt.detect(obj, path):
            state, info = fmt.read(obj, path, use_ema)
            return {strip_prefix(k): v for k, v in state.items()}, info
    found = f"keys {sorted(map(str, obj))[:8]}" if isinstance(obj, Mapping) else f"a {type(obj).__name__}"
    allowed = "; ".join(f.description for f in readers)
    raise ModelLoadError(
        f"checkpoint={str(path)!r} is in none of the checkpoint formats read here (found {found}); allowed: {allowed}",
        "unknown_format",
        path,
    )


# ------------------------------------------------------------------------------------- load_model
def resolve_checkpoint(source: str | os.PathLike, use_ema: bool = False) -> Path:
    """A checkpoint file, or a run dir's ``last.pth`` (else ``best_ema.pth`` with ``use_ema``, ``best.pth``)."""
    path = Path(source)
    if not path.is_dir():
        return path  # a missing file is reported by read_checkpoint, with the formats understood
    for name in (LAST, BEST_EMA if use_ema else BEST):
        if (path / name).is_file():
            return path / name
    raise ModelLoadError(
        f"checkpoint={str(source)!r} is a directory without {LAST} or {BEST}; allowed: a checkpoint "
        "file or a run dir holding one",
        "missing",
        path,
    )


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
            [f"{k} {_shape(v)} vs {_shape(own[k])}" for k, v in state.items() if k in own and v.shape != own[k].shape],
        ),
    )
    return "; ".join(
        f"{len(keys)} {what}: {', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''}"
        for what, keys in groups
        if keys
    )


def apply_filter(info: CheckpointInfo, state: Mapping[str, Tensor], model: nn.Module) -> Mapping[str, Tensor]:
    """``state`` in ``model``'s keys: the format's model-dependent mapping (:attr:`CheckpointInfo.filter_fn`)."""
    if info.filter_fn is None:
        return state
    try:
        return info.filter_fn(state, model)
    except KeyError as err:
        raise ModelLoadError(
            f"checkpoint={str(info.path)!r} ({info.format} format): its key maps to {err.args[0]!r}, which "
            f"{type(model).__name__} does not have; allowed: model_name= of the architecture the file holds",
            "mismatch",
            info.path,
        ) from err


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


# ------------------------------------------------------------------------------ init (fine-tuning)
def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier (``get_classifier()``, else timm's ``pretrained_cfg['classifier']``)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    prefixes = [f"{n}." for n, m in model.named_modules() if n and classifier is not None and m is classifier]
    if not prefixes:
        names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
        prefixes = [f"{n}." for n in ([names] if isinstance(names, str) else names)]
    return {k for k in model.state_dict() if k.startswith(tuple(prefixes))} if prefixes else set()


def _shape(t: Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def _stem_keys(model: nn.Module, keys: Iterable[str]) -> set[str]:
    """Those of ``keys`` under the module holding timm's ``pretrained_cfg['first_conv']`` (e.g. ``stem.``)."""
    first = (getattr(model, "pretrained_cfg", None) or {}).get("first_conv")
    prefix = f"{first.split('.')[0]}." if isinstance(first, str) and first else None
    return {k for k in keys if prefix and k.startswith(prefix)}


def _adaptable(model: nn.Module, state: Mapping[str, Tensor], own: Mapping[str, Tensor]) -> dict[str, set[str]]:
    """The file's classifier / stem tensors to leave freshly initialised: a part is skipped whole when any of its
    tensors differs in shape or presence (another ``num_classes``; another ``in_chans`` or input stem, e.g. the
    (2, 16) spectrogram stem of an ImageNet-initialised audio model)."""
    skip = {}
    for part, keys in (("classifier", _head_keys(model)), ("stem", _stem_keys(model, [*own, *state]))):
        keys = {k for k in keys if k not in skip.get("classifier", set())}
        differs = any(k not in own or k not in state or state[k].shape != own[k].shape for k in keys)
        if keys and differs:
            skip[part] = keys
    dense = _dense_kernel_keys(model, state)
    if dense:
        skip["DCLS kernels"] = dense
    return skip


def _dense_kernel_keys(model: nn.Module, state: Mapping[str, Tensor]) -> set[str]:
    """Our DCLS layers' weight / positions / sigma where the file holds the dense kernel of the baseline (one
    more dimension, no positions): a DCLS model started from its baseline's weights (e.g. ConvFormer-S18 for
    convformer_s18_dcls) keeps these freshly initialised and loads everything else."""
    keys: set[str] = set()
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight")
        if not isinstance(module, DclsLayer) or weight is None or f"{name}.positions" in state:
            continue
        if weight.ndim == module.weight.ndim + 1:
            keys |= {f"{name}.{p}" for p, _ in module.named_parameters(recurse=False) if p != "bias"}
            keys.add(f"{name}.weight")
    return keys


def init_from_checkpoint(model: nn.Module, source: str | os.PathLike, use_ema: bool = False) -> str:
    """Load a checkpoint of any format into ``model`` to start a new run (fine-tuning); one line saying what.

    Strict except for the classifier and the input stem: when one of them differs (another ``num_classes``,
    ``in_chans`` or stem) it keeps its fresh init and is reported as skipped; so do DCLS layers where the file
    holds its baseline's dense kernels (:func:`_dense_kernel_keys`). Any other missing, unexpected or
    mis-shaped key is a :class:`ModelLoadError`. Parameters are copied in place, so optimizer groups built from
    them (DCLS positions/sigma) are unchanged.
    """
    state, info = read_checkpoint(resolve_checkpoint(source, use_ema), use_ema)
    state = apply_filter(info, state, model)
    own = model.state_dict()
    parts = _adaptable(model, state, own)
    skip = set().union(*parts.values()) if parts else set()
    kept = {k: v for k, v in state.items() if k not in skip}
    problems = [
        f"{k}: {_shape(v)} in the file vs {_shape(own[k])} here"
        for k, v in kept.items()
        if k in own and v.shape != own[k].shape
    ]
    problems += [f"unexpected {k}" for k in kept if k not in own]
    problems += [f"missing {k}" for k in own if k not in kept and k not in skip]
    if problems:
        trained = ((info.config or {}).get("model") or {}).get("name")
        was = f", trained as {trained!r}" if trained else ""
        raise ModelLoadError(
            f"model.init_checkpoint={str(source)!r} ({info.format} format{was}) does not fit this model beyond its "
            f"classifier and stem: {len(problems)} problem(s): {'; '.join(problems[:4])}; allowed: a checkpoint of "
            "the same architecture and model.kwargs (only the head and the input stem may differ)",
            "mismatch",
            info.path,
        )
    with torch.no_grad():
        model.load_state_dict(kept, strict=not skip)
    line = f"model.init_checkpoint: loaded {len(kept)} tensors from {info.path} ({info.format} format)"
    for part, keys in parts.items():
        shapes = ", ".join(
            f"{k} {_shape(state[k]) if k in state else '-'}->{_shape(own[k]) if k in own else '-'}"
            for k in sorted(keys)
        )
        if part == "DCLS kernels":
            layers = len({k.rsplit(".", 1)[0] for k in keys})
            line += f"; skipped {layers} DCLS kernels (the file holds dense kernels), freshly initialised"
            continue
        why = "another num_classes" if part == "classifier" else "another input stem"
        line += f"; skipped the {part} ({why}), freshly initialised: {shapes}"
    return line
