"""Any checkpoint the model factory reads (ours, a run dir, a release) as a timm Hub folder with its model card."""

from __future__ import annotations

import os
from typing import Any

from omegaconf import OmegaConf

from dcls_vision.models.factory import LoadedModel, load_model, parse_model_spec
from dcls_vision.models.hub import save_hub_folder
from dcls_vision.utils.config import plain_dict


def _card(loaded: LoadedModel, top1: float | None) -> dict[str, Any]:
    """Model card facts: the recipe and data of the run config, and a measured top-1 (``top1`` given: measured
    by the caller; else the val top-1 train.py stored in best*.pth with these weights)."""
    config = OmegaConf.to_container(loaded.config, resolve=True) if loaded.config is not None else {}
    data = config.get("data") or {}
    trainer = config.get("trainer") or {}
    recipe = ", ".join(
        f"{k} {v}"
        for k, v in (
            ("experiment", config.get("experiment_name")),
            ("optimizer", (config.get("optim") or {}).get("name")),
            ("epochs", trainer.get("epochs")),
            ("weights", loaded.weights),
        )
        if v is not None
    )
    stored = (loaded.stored_metrics or {}).get("top1")
    source = "given with --top1" if top1 is not None else f"val top-1 stored by train.py at epoch {loaded.epoch}"
    return {
        "recipe": recipe or None,
        "dataset": data.get("name"),
        "top1": top1 if top1 is not None else stored,
        "top1_source": source,
        "source": f"{loaded.source} ({loaded.provenance.format} format)",
    }


def export_hub_folder(
    source: str | os.PathLike,
    folder: str | os.PathLike,
    model: str | None = None,
    use_ema: bool = False,
    top1: float | None = None,
) -> dict[str, Any]:
    """Write any checkpoint the factory reads (ours, a run dir, a release) as a timm Hub folder
    (:func:`dcls_vision.models.hub.save_hub_folder`); returns a report with the files and the model card facts."""
    name, kwargs = parse_model_spec(model) if model else (None, {})
    loaded = load_model(source, use_ema=use_ema, model_name=name, **kwargs)
    d = loaded.data
    data_config = {
        "input_size": (d.in_chans, *d.img_size),
        "crop_pct": d.crop_pct,
        "interpolation": d.interpolation,
        "mean": tuple(d.mean),
        "std": tuple(d.std),
    }
    model_args = {**plain_dict(loaded.model_cfg.get("kwargs")), "num_classes": d.num_classes, "in_chans": d.in_chans}
    card = _card(loaded, top1)
    out = save_hub_folder(
        loaded.model, folder, loaded.name, model_args, {k: v for k, v in data_config.items() if v is not None}, card
    )
    return {
        "source": str(source),
        "folder": str(out),
        "files": sorted(p.name for p in out.iterdir()),
        "architecture": loaded.name,
        "model_args": model_args,
        "card": card,
        "load_with": f"timm.create_model('local-dir:{out}', pretrained=True) after import dcls_vision.models",
    }


__all__ = ["export_hub_folder"]
