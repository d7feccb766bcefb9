"""A checkpoint file or Hub source → its state dict and what the file says about it, whatever wrote it.

Every entry point reads weights through :func:`read_checkpoint`: our trainer's files, published ConvNeXt-dcls
and DCLS-Audio releases, MetaFormer weights, timm/mmengine state dicts (wrapped or bare) and timm Hub folders.
Files are read with ``weights_only=True`` (``.safetensors``: safetensors) by the first matching reader of
:data:`CHECKPOINT_FORMATS`; teaching the project a new source is appending a reader. A reader only maps
tensors and labels them (:class:`CheckpointInfo`); building the model they go into is :mod:`.factory`'s job,
and starting a new run from them is :mod:`.finetune_init`'s. :class:`ModelLoadError` is the one-line error of
this whole load path (readers, factory, fine-tune initialisation), so it is defined here, at its lowest point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

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


class ModelLoadError(UserError):
    """A source that cannot become a model; the message is one line naming the file/value and what is allowed.

    ``reason`` lets callers that speak another option vocabulary (``--ema``, ``checkpoint_key``) rephrase:
    ``missing``, ``unreadable``, ``unknown_format``, ``no_ema``, ``no_config``, ``mismatch``, ``bad_spec``.
    """

    def __init__(self, message: str, reason: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.reason, self.path = reason, path


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


# ------------------------------------------------------------------------------------------- readers
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


# ---------------------------------------------------------------------------------- files and models
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


def shape_text(t: Tensor) -> str:
    """A tensor's shape as the mismatch messages print it (``3x4``, ``scalar``)."""
    return "x".join(map(str, t.shape)) or "scalar"
