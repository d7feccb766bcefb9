"""Fail-fast validation of an eval config (configs/eval.yaml): one line naming the key, value and what is allowed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from dcls_vision.data.paths import original_cwd, resolve_path
from dcls_vision.engine.config import AMP_DTYPES, ConfigError
from dcls_vision.models.hub import absolute_hub_source, hub_source_exists, is_hub_source

from .benchmarks import BENCHMARKS, SEVERITIES, allowed_corruptions


class EvalConfigError(ConfigError):
    """An eval config value that cannot work (exit code 2 in eval.py)."""


def _select(cfg: DictConfig, key: str) -> Any:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if OmegaConf.is_dict(parent) and leaf in parent.keys() and OmegaConf.is_missing(parent, leaf):
        raise EvalConfigError(f"{key}=??? is required (set it on the command line: {key}=...)")
    value = OmegaConf.select(cfg, key)
    return OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value


def as_list(value: Any, key: str) -> list[Any]:
    """A list from a list or a comma-separated string (``benchmarks=val,c`` on a shell is a string)."""
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Sequence):
        return list(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    raise EvalConfigError(f"{key}={value!r} must be a list, e.g. {key}=[a,b]")


def _choices(cfg: DictConfig, key: str, allowed: Sequence[Any]) -> list[Any]:
    values = as_list(_select(cfg, key), key)
    bad = [v for v in values if v not in allowed]
    if bad or not values:
        shown = bad[0] if bad else values
        raise EvalConfigError(
            f"{key}={shown!r} is not supported; allowed: a non-empty list of {', '.join(map(str, allowed))}"
        )
    if len(set(values)) != len(values):
        raise EvalConfigError(f"{key}={values!r} has duplicates; allowed: each of {', '.join(map(str, allowed))} once")
    return values


def _optional_int(cfg: DictConfig, key: str, minimum: int) -> None:
    value = _select(cfg, key)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise EvalConfigError(f"{key}={value!r} must be an integer >= {minimum} or null")


def _optional_bool(cfg: DictConfig, key: str) -> None:
    value = _select(cfg, key)
    if value is not None and not isinstance(value, bool):
        raise EvalConfigError(f"{key}={value!r} must be true, false or null")


_SOURCES = (
    "a .pth written by train.py (last/best/best_ema/epoch_XXXX), a release / state dict / .safetensors file "
    "with model.name=<timm name>, a timm Hub model local-dir:FOLDER / hf-hub:ORG/NAME, or checkpoint=null with "
    "model.name=<timm name> model.pretrained_file=<file>"
)


def _validate_weights_source(cfg: DictConfig) -> None:
    """Exactly one weights file: ``checkpoint`` or ``model.pretrained_file`` (which needs ``model.name``)."""
    ckpt, pretrained = _select(cfg, "checkpoint"), _select(cfg, "model.pretrained_file")
    if ckpt in (None, "") and pretrained in (None, ""):
        raise EvalConfigError(f"checkpoint=None is required; allowed: {_SOURCES}")
    if ckpt not in (None, "") and pretrained not in (None, ""):
        raise EvalConfigError(
            f"checkpoint={ckpt!r} and model.pretrained_file={pretrained!r} are both set; allowed: {_SOURCES}"
        )
    key, value = ("checkpoint", ckpt) if ckpt not in (None, "") else ("model.pretrained_file", pretrained)
    if key == "checkpoint" and is_hub_source(value):
        if not hub_source_exists(absolute_hub_source(str(value), original_cwd())):
            raise EvalConfigError(
                f"checkpoint={value!r} is not a timm Hub folder (no config.json); allowed: {_SOURCES}"
            )
    elif not resolve_path(str(value), key).is_file():
        raise EvalConfigError(f"{key}={value!r} is not a file; allowed: {_SOURCES}")
    if key == "model.pretrained_file" and _select(cfg, "model.name") in (None, ""):
        raise EvalConfigError(f"model.pretrained_file={value!r} needs model.name=<the timm model it belongs to>")


def validate_eval_config(cfg: DictConfig) -> list[str]:
    """Raise :class:`EvalConfigError` for the first unusable value; returns the benchmarks to run, in order."""
    _validate_weights_source(cfg)
    if not isinstance(_select(cfg, "use_ema"), bool):
        raise EvalConfigError(f"use_ema={_select(cfg, 'use_ema')!r} must be true or false")
    benchmarks = _choices(cfg, "benchmarks", list(BENCHMARKS))
    for key in ("c", "cbar"):
        if key in benchmarks:
            _choices(cfg, f"{key}.corruptions", allowed_corruptions(key))
            _choices(cfg, f"{key}.severities", SEVERITIES)
    for key in benchmarks:
        pct = _select(cfg, f"{key}.crop_pct")
        if pct is not None and (isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 < pct <= 1):
            raise EvalConfigError(f"{key}.crop_pct={pct!r} must be a number in (0, 1] or null")
        root = _select(cfg, f"{key}.root")
        if root is not None and not isinstance(root, str):
            raise EvalConfigError(f"{key}.root={root!r} must be a folder path or null")
    _optional_int(cfg, "batch_size", 1)
    _optional_int(cfg, "num_workers", 0)
    _optional_bool(cfg, "channels_last")
    _optional_bool(cfg, "progress")
    amp = _select(cfg, "amp")
    if amp is not None and str(amp).lower() not in AMP_DTYPES:
        raise EvalConfigError(f"amp={amp!r} is not supported; allowed: none, bf16, fp16, or null (the checkpoint's)")
    device = str(_select(cfg, "device"))
    if device != "auto" and not (device == "cpu" or device.startswith("cuda")):
        raise EvalConfigError(f"device={device!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    classes = _select(cfg, "classes")
    if classes is not None and not resolve_path(str(classes), "classes").is_file():
        raise EvalConfigError(
            f"classes={classes!r} is not a file; allowed: a text file with one class folder name "
            f"per line (model output order), or null"
        )
    if _select(cfg, "output_dir") in (None, ""):
        raise EvalConfigError("output_dir=None is required; allowed: a directory path")
    return benchmarks


def checkpoint_path(cfg: DictConfig) -> Path:
    """The weights file evaluated: ``checkpoint``, else ``model.pretrained_file``."""
    if cfg.checkpoint and is_hub_source(cfg.checkpoint):  # local-dir:FOLDER / hf-hub:ORG/NAME, read by timm
        return Path(absolute_hub_source(str(cfg.checkpoint), original_cwd()))
    if cfg.checkpoint:
        return resolve_path(str(cfg.checkpoint), "checkpoint")
    return resolve_path(str(cfg.model.pretrained_file), "model.pretrained_file")
