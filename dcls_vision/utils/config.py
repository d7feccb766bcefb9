"""Config nodes as plain Python values, for every layer that hands a config group to a library call.

The ``kwargs`` groups of the model, optimizer and scheduler configs arrive as OmegaConf nodes from Hydra, or as
plain dicts from a checkpoint's stored config or a caller; timm, torch and mmengine factories want plain dicts.
The models layer (building a network), the engine (optimizers, schedulers, grouped runs), robustness and the
analysis tools all need that one conversion, so it lives here at the bottom, importable by each of them.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf


def plain_dict(node: Any) -> dict[str, Any]:
    """A plain dict from an optional DictConfig/dict node (``kwargs`` groups for timm factories)."""
    if node is None:
        return {}
    return dict(OmegaConf.to_container(node, resolve=True)) if OmegaConf.is_config(node) else dict(node)
