"""Backbone weights from a checkpoint written by our trainer (or a plain timm/mmengine state dict).

Files are read by the models layer's checkpoint reader (one place for formats, EMA and ``module.`` prefixes).
Why a mapping of its own: mmengine's ``Pretrained`` init knows neither the trainer's layout (``model`` /
``ema`` keys of ``last.pth``; ``best_ema.pth`` holds the EMA weights under ``model``) nor timm's key forms,
and it would load classifier heads and stems with the wrong channel count silently or not at all.
Loading is ``weights_only=True`` (no code execution). No mm package is needed here.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dcls_vision.models.checkpoint_formats import ModelLoadError, strip_prefix
from dcls_vision.models.checkpoint_formats import read_checkpoint as read_any_format

CHECKPOINT_KEYS = ("model", "ema")
_HEAD_PREFIXES = ("head.", "head_", "fc.", "classifier.", "norm_pre.", "pre_logits.")
_FEATURE_NET_RE = re.compile(r"^(stem|stages)_(\d+)\.")  # timm FeatureListNet names -> model names


def read_checkpoint(path: str | os.PathLike, key: str = "model") -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict stored under ``key`` and the run's resolved config (``{}`` if none).

    Read by the models layer's reader (:func:`dcls_vision.models.checkpoint_formats.read_checkpoint`): the trainer's
    ``last.pth`` (``model`` or ``ema``), ``best.pth`` / ``best_ema.pth`` (``best_ema.pth``'s weights are EMA ones
    under either key), an mmengine/timm file with ``state_dict``, or a bare state dict.
    """
    if key not in CHECKPOINT_KEYS:
        raise ValueError(f"checkpoint_key={key!r} is not supported; allowed: {', '.join(CHECKPOINT_KEYS)}")
    try:
        state, info = read_any_format(path, use_ema=key == "ema")
    except ModelLoadError as err:
        if err.reason == "missing":
            raise FileNotFoundError(str(err)) from err
        if err.reason == "no_ema":
            raise ValueError(
                f"checkpoint_key={key!r} has no weights in {Path(path).name} (best*.pth hold one set under "
                "'model'; a run without EMA saves ema=None; a state dict holds one set); allowed for this file: model"
            ) from err
        raise
    return state, dict(info.config or {})


def map_state_dict(
    state: Mapping[str, Tensor],
    target: nn.Module,
    first_conv: str | None = None,
    source: str = "checkpoint",
    skip_prefixes: tuple[str, ...] = (),
) -> tuple[dict[str, Tensor], dict[str, list[str]]]:
    """Rename, filter and adapt ``state`` to ``target``'s keys.

    - ``module.`` / ``_orig_mod.`` prefixes (DDP, torch.compile) are stripped; ``stages_N.`` / ``stem_N.``
      (timm ``features_only`` names) become ``stages.N.`` / ``stem.N.``.
    - Classifier keys absent from ``target`` (``head.*``, ``fc.*``, ``norm_pre.*``...) are dropped, and so are
      keys under ``skip_prefixes`` absent from ``target`` (stages a backbone removed: ``stages.3.``).
    - The stem conv (``first_conv``) is adapted when only its input channels differ (timm's
      ``adapt_input_conv``: a 1-channel pre-training feeds an RGB backbone).
    Anything else that does not fit (unknown keys, missing keys, other shape mismatches) raises, naming keys.
    """
    from timm.models import adapt_input_conv

    wanted = target.state_dict()
    mapped: dict[str, Tensor] = {}
    report: dict[str, list[str]] = {"dropped": [], "skipped": [], "adapted": [], "unexpected": [], "mismatched": []}
    mapped_names: set[str] = set()
    for raw, value in state.items():
        name = strip_prefix(raw)
        if name not in wanted:
            name = _FEATURE_NET_RE.sub(r"\1.\2.", name)
        if name not in wanted:
            if name.startswith(_HEAD_PREFIXES):
                report["dropped"].append(raw)
            else:
                skip = bool(skip_prefixes) and name.startswith(skip_prefixes)
                report["skipped" if skip else "unexpected"].append(raw)
            continue
        expected = wanted[name].shape
        if value.shape != expected:
            is_stem = first_conv is not None and name == f"{first_conv}.weight"
            if is_stem and value.ndim == 4 and value.shape[0] == expected[0] and value.shape[2:] == expected[2:]:
                value = adapt_input_conv(int(expected[1]), value)
                report["adapted"].append(f"{name}: in_chans {state[raw].shape[1]} -> {expected[1]}")
            else:
                report["mismatched"].append(f"{name}: {source} {tuple(value.shape)} vs model {tuple(expected)}")
                mapped_names.add(name)
                continue
        mapped[name] = value
    missing = [k for k in wanted if k not in mapped and k not in mapped_names]
    problems = []
    if report["mismatched"]:
        problems.append(f"shape mismatch: {'; '.join(report['mismatched'][:5])}")
    if report["unexpected"]:
        problems.append(f"{len(report['unexpected'])} unexpected key(s): {', '.join(report['unexpected'][:5])}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {', '.join(missing[:5])}")
    if problems:
        raise ValueError(
            f"{source} does not fit {type(target).__name__} (different architecture or model_kwargs?): "
            + " | ".join(problems)
        )
    return mapped, report


def load_backbone_state(
    path: str | os.PathLike,
    target: nn.Module,
    key: str = "model",
    first_conv: str | None = None,
    skip_prefixes: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Load ``key`` weights of checkpoint ``path`` into ``target`` (strictly, after :func:`map_state_dict`).

    Returns a report: ``dropped`` (classifier keys), ``skipped`` (keys under ``skip_prefixes``), ``adapted``
    (stem), ``trained_as`` (the trainer's ``model.name`` when the checkpoint carries its config), ``loaded``
    (tensor count).
    """
    state, config = read_checkpoint(path, key)
    mapped, report = map_state_dict(
        state, target, first_conv=first_conv, source=f"{Path(path).name}[{key}]", skip_prefixes=skip_prefixes
    )
    with torch.no_grad():
        target.load_state_dict(mapped, strict=True)
    model_cfg = config.get("model") if isinstance(config.get("model"), Mapping) else {}
    return {
        "dropped": report["dropped"],
        "skipped": report["skipped"],
        "adapted": report["adapted"],
        "loaded": len(mapped),
        "trained_as": model_cfg.get("name"),
    }
