"""Weights shared the way timm users share them: a Hugging Face Hub folder (``config.json``, ``model.safetensors``,
a model card ``README.md``), written with timm's own ``save_for_hf`` and read back with timm's own loaders.

A folder written by :func:`save_hub_folder` opens with ``timm.create_model("local-dir:FOLDER", pretrained=True)``
(after ``import dcls_vision.models`` registers the architectures), and the same folder pushed to a hub is an
``hf-hub:ORG/NAME`` model. Our registered models accept such sources through :func:`load_pretrained_source`; the
checkpoint reader (:mod:`.checkpoint_formats`) reads ``local-dir:`` / ``hf-hub:`` sources through
:func:`read_hub` (the run's model and data config come from ``config.json``). Only ``hf-hub:`` ever downloads
(timm's ``download_from_hf``).
This module sits in the models layer: timm, torch and utils only.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dcls_vision.utils.errors import UserError

HUB_PREFIXES = ("local-dir:", "hf-hub:")
WEIGHTS_FILE = "model.safetensors"  # timm's HF_SAFE_WEIGHTS_NAME
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
_DATA_KEYS = ("input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "test_input_size")


class HubSourceError(UserError):
    """A ``local-dir:`` / ``hf-hub:`` source that is not a timm Hub folder; one line naming it."""


def is_hub_source(source: Any) -> bool:
    """Whether ``source`` names a timm Hub model (``local-dir:FOLDER`` or ``hf-hub:ORG/NAME``)."""
    return isinstance(source, (str, os.PathLike)) and str(source).startswith(HUB_PREFIXES)


def hub_weights_file(source: str | os.PathLike) -> Path | None:
    """The local weights file behind a ``local-dir:`` source (what changes when the folder is rewritten), else
    None (``hf-hub:``: nothing local until timm downloads it)."""
    source = str(source)
    if not source.startswith("local-dir:"):
        return None
    folder = Path(source.removeprefix("local-dir:")).expanduser()
    candidates = (folder / WEIGHTS_FILE, folder / "pytorch_model.bin")
    return next((f for f in candidates if f.is_file()), candidates[0])


def hub_source_exists(source: str | os.PathLike) -> bool:
    """Whether a Hub source can be read without a network: a ``local-dir:`` folder with ``config.json`` (an
    ``hf-hub:`` id is only known to exist once downloaded, so it counts as existing)."""
    source = str(source)
    if source.startswith("hf-hub:"):
        return len(source.removeprefix("hf-hub:")) > 0
    return (Path(source.removeprefix("local-dir:")).expanduser() / CONFIG_FILE).is_file()


def absolute_hub_source(source: str, base: Path) -> str:
    """``local-dir:FOLDER`` with a relative FOLDER taken against ``base`` (the directory the program started in)."""
    if not source.startswith("local-dir:"):
        return source
    folder = Path(os.path.expandvars(source.removeprefix("local-dir:"))).expanduser()
    return f"local-dir:{folder if folder.is_absolute() else base / folder}"


def _local_folder(source: str) -> Path:
    folder = Path(source.removeprefix("local-dir:")).expanduser()
    missing = [n for n in (CONFIG_FILE,) if not (folder / n).is_file()]
    has_weights = folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))
    if not folder.is_dir() or missing or not has_weights:
        why = "is not a directory" if not folder.is_dir() else f"lacks {CONFIG_FILE} or a weights file"
        raise HubSourceError(
            f"checkpoint={source!r}: {str(folder)!r} {why}; allowed: local-dir:FOLDER holding {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (written by tools/export_hub.py or timm's save_for_hf)"
        )
    return folder


def read_hub(source: str) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """The state dict and a run config (``model``: name, kwargs; ``data``: classes, size, crop, mean/std) of a
    ``local-dir:`` or ``hf-hub:`` source, by timm's own readers (``weights_only`` / safetensors)."""
    from timm.models._hub import (
        load_model_config_from_hf,
        load_model_config_from_path,
        load_state_dict_from_hf,
        load_state_dict_from_path,
    )

    source = str(source)
    try:
        if source.startswith("local-dir:"):
            folder = _local_folder(source)
            cfg, name, model_args = load_model_config_from_path(folder)
            state = load_state_dict_from_path(folder)
        else:
            hub_id = source.removeprefix("hf-hub:")
            cfg, name, model_args = load_model_config_from_hf(hub_id)
            state = load_state_dict_from_hf(hub_id)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise HubSourceError(f"checkpoint={source!r} cannot be read as a timm Hub model ({first})") from err
    kwargs = {k: v for k, v in dict(model_args).items() if k not in ("num_classes", "in_chans")}
    input_size = tuple(cfg.get("input_size") or (3, 224, 224))
    data = {
        "num_classes": int(cfg.get("num_classes") or model_args.get("num_classes") or 1000),
        "in_chans": int(model_args.get("in_chans") or input_size[0]),
        "img_size": int(input_size[-1]),
        "crop_pct": cfg.get("crop_pct"),
        "interpolation": cfg.get("interpolation"),
        "mean": list(cfg.get("mean") or ()),
        "std": list(cfg.get("std") or ()),
    }
    return dict(state), {"model": {"name": name, "kwargs": kwargs}, "data": data}


def load_pretrained_source(model: nn.Module, name: str, pretrained_cfg: Any) -> None:
    """``pretrained=True`` for our registered models: timm's ``load_pretrained`` from the ``local-dir:`` folder or
    ``hf-hub:`` id the model is being created from; any other request is refused (no weights are published)."""
    from timm.models import load_pretrained

    cfg = pretrained_cfg.to_dict() if hasattr(pretrained_cfg, "to_dict") else dict(pretrained_cfg or {})
    source = cfg.get("source")
    if not ((source == "local-dir" and cfg.get("file")) or (source == "hf-hub" and cfg.get("hf_hub_id"))):
        raise ValueError(
            f"pretrained=True is not supported for {name!r} without a Hub source: no pretrained weights are "
            "published under this name; allowed: timm.create_model('local-dir:FOLDER' or 'hf-hub:ORG/NAME', "
            "pretrained=True), or pretrained=False"
        )
    in_chans = int((cfg.get("input_size") or (3,))[0])
    load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, in_chans=in_chans, strict=True)
    # the folder's preprocessing is what resolve_data_config(model=...) must give a timm user
    data = {k: cfg[k] for k in _DATA_KEYS if cfg.get(k) is not None}
    model.pretrained_cfg = model.default_cfg = {**(getattr(model, "pretrained_cfg", None) or {}), **data}


def _unshared(model: nn.Module) -> nn.Module:
    """A copy whose parameters are all distinct tensors: safetensors refuses aliased tensors, and our DCLS
    models share one positions tensor per stage (loading writes the equal copies back into the shared one)."""
    out, seen = copy.deepcopy(model), set()
    for module in out.modules():
        for pname, param in list(module.named_parameters(recurse=False)):
            if id(param) in seen:
                setattr(module, pname, nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad))
            seen.add(id(param))
    return out


def model_card(name: str, card: Mapping[str, Any]) -> str:
    """timm's model card text (``generate_readme``) naming the recipe, the data and the measured top-1."""
    from timm.models._hub import generate_readme

    top1 = card.get("top1")
    details = {
        "Model Type": "Image classification / feature backbone (DCLS: Dilated Convolution with Learnable Spacings)",
        "Recipe": card.get("recipe") or "not recorded",
        "Dataset": card.get("dataset") or "not recorded",
        "Top-1 (measured)": f"{float(top1):.2f} % ({card.get('top1_source') or 'as given'})"
        if top1 is not None
        else "not measured",
        "Source": card.get("source") or "not recorded",
    }
    usage = (
        "```python\nimport timm\nimport dcls_vision.models  # registers the DCLS architectures\n\n"
        f"model = timm.create_model('local-dir:FOLDER', pretrained=True).eval()  # or 'hf-hub:ORG/{name}'\n```"
    )
    return generate_readme({"details": details, "usage": usage, "tags": ["image-classification", "timm"]}, name)


def save_hub_folder(
    model: nn.Module,
    folder: str | os.PathLike,
    name: str,
    model_args: Mapping[str, Any],
    data_config: Mapping[str, Any],
    card: Mapping[str, Any],
) -> Path:
    """Write ``model`` as a timm Hub folder with timm's ``save_for_hf`` (``config.json`` with architecture,
    num_classes, model_args, pretrained_cfg; ``model.safetensors``) plus the model card ``README.md``.

    Written into a temporary sibling and moved into place in one rename, so ``folder`` is either the old or the
    new complete folder, never a half-written one.
    """
    from timm.models._hub import save_for_hf

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        save_for_hf(
            _unshared(model),
            str(tmp),
            model_config={"pretrained_cfg": {"architecture": name}},
            model_args=dict(model_args),
            safe_serialization=True,
            data_config=dict(data_config),
        )
        (tmp / CARD_FILE).write_text(model_card(name, card))
        old = folder.with_name(f".{folder.name}.old") if folder.exists() else None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


__all__ = [
    "HUB_PREFIXES",
    "HubSourceError",
    "absolute_hub_source",
    "hub_source_exists",
    "hub_weights_file",
    "is_hub_source",
    "load_pretrained_source",
    "model_card",
    "read_hub",
    "save_hub_folder",
]
