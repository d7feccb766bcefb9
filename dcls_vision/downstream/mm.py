"""Register the DCLS pieces with the OpenMMLab registries (configs: ``custom_imports``; importing is enough).

- Backbones ``DclsBackbone``, ``DclsConvNeXt``, ``DclsConvFormer`` in ``mmdet.registry.MODELS`` and
  ``mmseg.registry.MODELS`` (each where the package is installed).
- ``DclsOptimWrapperConstructor``, hooks ``DclsClampHook`` / ``DclsRepulsiveLossHook`` / ``DclsSafeCheckpointHook``,
  the CPU DDP wrapper and the test transform ``DclsShortSideResize`` (``--tta convnext-dcls``) in
  mmengine's root registries, which the mmdet and mmseg registries fall back to.
"""

from __future__ import annotations

from typing import Any

try:
    import mmcv  # noqa: F401  (the test transform subclasses mmcv's Resize)
    from mmengine.model import MMDistributedDataParallel, revert_sync_batchnorm
    from mmengine.registry import HOOKS, MODEL_WRAPPERS, OPTIM_WRAPPER_CONSTRUCTORS, TRANSFORMS
except ImportError as err:  # pragma: no cover - exercised only without the mm extra
    raise ImportError(
        f"dcls_vision.downstream.mm needs the OpenMMLab stack ({err}); install it with `bash tools/install_mm.sh`"
    ) from err
from torch import nn

from .backbone import DclsBackbone, DclsConvFormer, DclsConvNeXt
from .hooks import DclsClampHook, DclsRepulsiveLossHook, DclsSafeCheckpointHook
from .optim import DclsOptimWrapperConstructor
from .transforms import DclsShortSideResize

BACKBONES = (DclsBackbone, DclsConvNeXt, DclsConvFormer)


class DclsCPUDistributedDataParallel(MMDistributedDataParallel):
    """MMDistributedDataParallel for CPU processes (gloo): mmengine always passes ``device_ids=[LOCAL_RANK]``,
    which torch rejects for CPU modules; SyncBN (CUDA only) becomes BatchNorm."""

    def __init__(self, module: nn.Module, device_ids: Any = None, **kwargs: Any) -> None:
        super().__init__(module=revert_sync_batchnorm(module), device_ids=None, **kwargs)


def _register() -> list[str]:
    """Register everything; returns the downstream packages whose MODELS registry got the backbones."""
    OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=DclsOptimWrapperConstructor, force=True)
    HOOKS.register_module(module=DclsClampHook, force=True)
    HOOKS.register_module(module=DclsRepulsiveLossHook, force=True)
    HOOKS.register_module(module=DclsSafeCheckpointHook, force=True)
    MODEL_WRAPPERS.register_module(module=DclsCPUDistributedDataParallel, force=True)
    TRANSFORMS.register_module(module=DclsShortSideResize, force=True)  # mmcv's and mmseg's/mmdet's parent registry
    done = []
    for package in ("mmdet", "mmseg"):
        try:
            registry = __import__(f"{package}.registry", fromlist=["MODELS"]).MODELS
        except ImportError:
            continue
        for cls in BACKBONES:
            registry.register_module(module=cls, force=True)
        done.append(package)
    return done


REGISTERED_IN = _register()

__all__ = [
    "BACKBONES",
    "REGISTERED_IN",
    "DclsBackbone",
    "DclsCPUDistributedDataParallel",
    "DclsClampHook",
    "DclsConvFormer",
    "DclsConvNeXt",
    "DclsOptimWrapperConstructor",
    "DclsRepulsiveLossHook",
    "DclsSafeCheckpointHook",
    "DclsShortSideResize",
]
