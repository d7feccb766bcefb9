"""Checkpoint conversion into our trainer's format, with the checks that make a conversion trustworthy.

A published ConvNeXt-dcls release (:mod:`dcls_vision.models.release`) or any file the model factory reads
becomes a ``best.pth``-like file of ours: ``{"model": state_dict, "config": <a full run config>, ...}``, so
train.py, eval.py, the downstream backbones and the analysis tools all read it. Checks reported in JSON:
logits of the release as the ``dcls`` package computes them against ours (max |diff| on a random batch, when
``DCLS`` is importable; the release's constructions: :mod:`.release_construction`), the written file reloaded
against the converted model, and on request top-1 on N ImageNet-val images with our val transform, warned about
loudly below the published figure minus 2 points.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf, open_dict
from torch import nn

from dcls_vision.models.checkpoint_formats import ModelLoadError, load_file
from dcls_vision.models.factory import build_model, load_model, parse_model_spec
from dcls_vision.models.release import (
    ReleaseFormatError,
    convert_release,
    is_release,
    pick_release_entry,
)
from dcls_vision.utils.errors import UserError
from dcls_vision.utils.io import atomic_save

from .release_construction import REFERENCES, release_reference

PUBLISHED_TOP1 = {"convnext_tiny_dcls": 82.5, "convnext_small_dcls": 83.7, "convnext_base_dcls": 84.1}  # Table 2.2
WARN_BELOW = 2.0  # points under the published top-1 that make verify-val warn
SUFFIXES = (".pth", ".pt", ".safetensors")


class ConvertError(UserError):
    """Bad converter input (destination suffix, model name, verification folder)."""


def run_config(model_cfg: Mapping[str, Any], data: Mapping[str, Any]) -> dict[str, Any]:
    """A full training config (the package's Hydra defaults) for ``model_cfg`` with the release's data settings."""
    from hydra import compose, initialize_config_dir

    from dcls_vision.engine.schema import register_configs
    from dcls_vision.utils.paths import config_dir

    register_configs()
    group = Path(config_dir()) / "model" / f"{model_cfg['name']}.yaml"
    overrides = [f"model={model_cfg['name']}" if group.is_file() else f"model.name={model_cfg['name']}"]
    overrides.append("data=imagenet")
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    with open_dict(cfg):
        cfg.model.kwargs = dict(model_cfg.get("kwargs") or {})
        for key, value in data.items():
            if value is not None:
                cfg.data[key] = value
    return OmegaConf.to_container(cfg, resolve=True)


@torch.no_grad()
def _max_diff(a: nn.Module, b: nn.Module, in_chans: int, size: int, seed: int) -> float:
    x = torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(seed))
    return float((a.eval()(x) - b.eval()(x)).abs().max())


def _release_source(obj: Any, src: Path, model: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """A release or fork training checkpoint: the entry taken (``model_ema`` / ``model``), converted."""
    try:
        entry = pick_release_entry(obj, src.name, bool(options.get("use_ema")))
        conv = convert_release(entry.state, options.get("convention"), options.get("dilated_kernel_size"))
    except ReleaseFormatError as err:
        raise ConvertError(f"{str(src)!r}: {err}") from err
    if model is not None and model != conv.model["name"]:
        raise ConvertError(
            f"--model {model!r} but {src.name} is a {conv.arch.interpolation} ConvNeXt-dcls release of depths "
            f"{list(conv.arch.depths)}, dims {list(conv.arch.dims)}; allowed: --model {conv.model['name']}"
        )
    return {
        "format": "release",
        "conv": conv,
        "raw": entry.state,
        "state": conv.state,
        "model": conv.model,
        "data": conv.data,
        "mapped": conv.mapped,
        "skipped": conv.skipped,
        "shape_changes": conv.shape_changes,
        "entry": entry.key,
        "weights": entry.weights,
        "ignored_entries": list(entry.ignored),
    }


def _source(src: Path, model: str | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """The state dict in our layout, model/data config and mapping report, from a release or a factory format.
    ``options``: ``convention``, ``dilated_kernel_size`` (releases) and ``use_ema``."""
    obj = load_file(src)  # the factory's one-line errors: missing, a directory, not a torch file
    if is_release(obj):
        return _release_source(obj, src, model, options)
    if options.get("convention") is not None or options.get("dilated_kernel_size") is not None:
        raise ConvertError(f"--convention/--dilated-kernel-size apply to ConvNeXt-dcls releases; {src.name} is not one")
    name, kwargs = parse_model_spec(model) if model else (None, {})
    try:
        loaded = load_model(src, model_name=name, use_ema=bool(options.get("use_ema")), **kwargs)
    except ModelLoadError as err:
        if err.reason != "no_config":
            raise
        raise ConvertError(
            f"{str(src)!r} is a state dict without a model config; allowed: --model NAME[:num_classes=N,...]"
        ) from err
    d = loaded.data
    data = {
        "num_classes": d.num_classes,
        "in_chans": d.in_chans,
        "img_size": d.img_size[0],
        "crop_pct": d.crop_pct,
        "interpolation": d.interpolation,
        "mean": list(d.mean),
        "std": list(d.std),
    }
    state = loaded.model.state_dict()
    return {
        "format": loaded.provenance.format,
        "conv": None,
        "raw": None,
        "state": state,
        "model": loaded.model_cfg,
        "data": data,
        "mapped": len(state),
        "skipped": [],
        "shape_changes": [],
        "entry": loaded.provenance.key,
        "weights": loaded.weights,
        "ignored_entries": list(loaded.extra.get("ignored_entries", [])),
    }


def convert_checkpoint(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    model: str | None = None,
    convention: str | None = None,
    dilated_kernel_size: int | None = None,
    check_size: int = 64,
    use_ema: bool = False,
    val_root: str | os.PathLike | None = None,
) -> tuple[dict[str, Any], nn.Module]:
    """Convert ``src`` into our format at ``dst``; returns the JSON report and the converted model (eval mode).

    ``val_root`` (``--verify-val``) is checked before anything is written, so a bad folder costs no conversion.
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix not in SUFFIXES:
        raise ConvertError(f"destination {str(dst)!r} has suffix {dst.suffix!r}; allowed: {', '.join(SUFFIXES)}")
    options = {"convention": convention, "dilated_kernel_size": dilated_kernel_size, "use_ema": use_ema}
    got = _source(src, model, options)
    data = got["data"]
    if val_root is not None:
        _check_val_root(Path(val_root), int(data["num_classes"]))
    net = build_model(got["model"], int(data["num_classes"]), int(data["in_chans"]))
    net.load_state_dict(got["state"])  # strict: every tensor of our model is accounted for
    net.eval()
    payload = {
        "model": net.state_dict(),
        "config": run_config(got["model"], data),
        "converted_from": {"path": str(src), "format": got["format"], "entry": got["entry"]},
    }
    atomic_save(payload, dst)
    reloaded = load_model(dst).model
    size = max(32, int(check_size))
    report: dict[str, Any] = {
        "source": str(src),
        "format": got["format"],
        "entry": got["entry"],
        "weights": got["weights"],
        "ignored_entries": got["ignored_entries"],
        "destination": str(dst),
        "model": got["model"]["name"],
        "model_kwargs": dict(got["model"].get("kwargs") or {}),
        "mapped": got["mapped"],
        "skipped": got["skipped"],
        "shape_changes": got["shape_changes"],
        "reload_max_logit_diff": _max_diff(net, reloaded, int(data["in_chans"]), size, 0),
        "max_logit_diff": None,
    }
    conv = got["conv"]
    if conv is not None:
        report.update(
            convention=conv.convention,
            dilated_kernel_size=conv.dilated_kernel_size,
            positions_max_abs=conv.positions_max_abs,
            positions_clamped=conv.positions_clamped,
        )
        ref = release_reference(net, got["raw"], conv)
        report["max_logit_diff"] = None if ref is None else _max_diff(ref, net, int(data["in_chans"]), size, 1)
        report["logit_check"] = REFERENCES[conv.convention] if ref is not None else "DCLS missing"
    return report, net


def _check_val_root(root: Path, num_classes: int) -> None:
    if not root.is_dir():
        raise ConvertError(f"--verify-val {str(root)!r} is not a directory; allowed: ImageNet val as class folders")
    found = sum(1 for d in root.iterdir() if d.is_dir())
    if found != num_classes:
        raise ConvertError(
            f"--verify-val {str(root)!r} has {found} class folders but the model has {num_classes} classes; "
            "allowed: ImageNet val in ImageFolder layout (the 1000 synset folders n01440764 ... n15075141)"
        )


def verify_val(
    model: nn.Module,
    data: Mapping[str, Any],
    root: str | os.PathLike,
    limit: int | None = None,
    published: float | None = None,
    batch_size: int = 32,
    num_workers: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Top-1/top-5 of ``model`` on (``limit`` images of) an ImageNet-val folder, with our val transform at the
    model's crop; ``ok`` is False when top-1 is more than :data:`WARN_BELOW` points under ``published``."""
    from dcls_vision.data.imagefolder import SkipBadImageFolder
    from dcls_vision.data.transforms import imagenet_transforms
    from dcls_vision.engine.evaluate import evaluate
    from dcls_vision.engine.loader import EpochLoader

    root = Path(root)
    _check_val_root(root, int(data["num_classes"]))
    _, transform = imagenet_transforms(data, None)
    dataset = SkipBadImageFolder(root, transform=transform)
    if limit is not None and limit < len(dataset):  # spread over the sorted set: every class, not the first few
        indices = torch.linspace(0, len(dataset) - 1, max(1, int(limit))).round().long().unique().tolist()
        dataset = SkipBadImageFolder(root, transform=transform, indices=indices)
    loader = EpochLoader(
        dataset, batch_size, train=False, num_replicas=1, rank=0, seed=0, num_workers=num_workers, pin_memory=False
    )
    metrics = evaluate(model.to(device), loader, torch.device(device))
    threshold = None if published is None else published - WARN_BELOW
    return {
        "root": str(root),
        "images": metrics["samples"],
        "skipped": metrics["skipped"],
        "top1": metrics["top1"],
        "top5": metrics["top5"],
        "published_top1": published,
        "warn_below": threshold,
        "ok": None if threshold is None else metrics["top1"] >= threshold,
    }


__all__ = [
    "PUBLISHED_TOP1",
    "WARN_BELOW",
    "ConvertError",
    "convert_checkpoint",
    "run_config",
    "verify_val",
]
