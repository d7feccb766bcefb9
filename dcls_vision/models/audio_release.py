"""DCLS-Audio's AudioSet checkpoints, read into our ``*_audio`` models (issue 28.6).

The DCLS-Audio repository (K-H-Ismail/DCLS-Audio; files on Zenodo record 8370979, README table) publishes
``convnext_dcls_audio_tiny.pth``, ``convformer_audio_s18.pth``, ``convformer_dcls_audio_s18.pth`` and
``fastvit_dcls_audio_sa24.pth``: the state dicts of its own model code, saved by its ConvNeXt-style ``utils.py``
under ``model`` (possibly with ``model_ema``, ``optimizer``, ``epoch``, ``args``). Three layouts, each with the
(2, 16)/(2, 16) one-channel stem that tells them apart from image checkpoints:

- ConvNeXt (models/convnext.py:265-331): Facebook's ConvNeXt layout, stem ``downsample_layers.0.0``;
- ConvFormer (models/metaformer.py:684-731): the sail-sg MetaFormer layout, stem ``downsample_layers.0.conv``;
- FastViT (models/fastvit.py:1016-1075): Apple's ml-fastvit layout, stem ``patch_embed``.

The dense parts are mapped by timm's own ``checkpoint_filter_fn`` of each family (written for exactly these
layouts); the DCLS convolutions (``Dcls2d`` of the ``dcls`` package, ``version="gauss"`` 23/26 by default,
``replace_depthwise_dcls`` in each model file) keep their ``P``/``SIG`` under every layer that shares them, which
become our ``positions``/``sigma`` by :func:`dcls_vision.ops.compat.positions_from_dcls` (``P[0]`` of "gauss" moves
along W). ConvNeXt's ``convnext_dcls_audio_tiny17`` (``version="v0"``, 17/34, no ``SIG``) reads as bilinear "v0".
The dilated kernel size is not stored: 23 (gauss) or 17 (v0). This module maps tensors only; :mod:`.checkpoint_formats`
registers the format (``CHECKPOINT_FORMATS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import timm
import torch
from torch import Tensor

from dcls_vision.ops.compat import positions_from_dcls
from dcls_vision.utils.errors import UserError

from .audio import AUDIO_MODELS, AUDIOSET_MEAN, AUDIOSET_STD
from .zoo import VARIANTS

AUDIO_RELEASE_DESCRIPTION = (
    "audio-release: a DCLS-Audio AudioSet checkpoint (convnext_dcls_audio_tiny.pth, convformer_[dcls_]audio_s18.pth, "
    "fastvit_dcls_audio_sa24.pth: a state dict, maybe under 'model', with the one-channel (2,16) stem)"
)
STEM_SHAPE = (1, 2, 16)  # (in_chans, kernel) of the common audio stem
# family -> (stem key in the reference layout, our base name, timm module holding checkpoint_filter_fn)
FAMILIES = {
    "convnext": ("downsample_layers.0.0.weight", "convnext_tiny", timm.models.convnext),
    "metaformer": ("downsample_layers.0.conv.weight", "convformer_s18", timm.models.metaformer),
    "fastvit": ("patch_embed.weight", "fastvit_sa24", timm.models.fastvit),
}
_DCLS_KEY = re.compile(r"^(.*)\.(P|SIG)$")
SIZE_OF = {"gauss": 23, "v0": 17}


class AudioReleaseError(UserError):
    """A DCLS-Audio file whose tensors cannot become one of our audio models; one line naming the tensor."""


def audio_release_state(obj: Any) -> tuple[str, Mapping[str, Tensor]] | None:
    """``(family, state dict)`` of a loaded DCLS-Audio file (the ``model`` entry or the file), else None."""
    state = obj.get("model") if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) else obj
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        return None
    for family, (stem, _, _) in FAMILIES.items():
        weight = state.get(stem)
        if weight is not None and tuple(weight.shape[1:]) == STEM_SHAPE:
            return family, state
    return None


def is_audio_release(obj: Any) -> bool:
    return audio_release_state(obj) is not None


@dataclass
class AudioConversion:
    """The file in our layout and the model config it needs; ``convention`` None for a dense model."""

    state: dict[str, Tensor]
    model: dict[str, Any]
    convention: str | None
    num_classes: int

    def run_config(self) -> dict[str, Any]:
        """The ``model`` and ``data`` groups the factory rebuilds the model from (one mono mel input)."""
        data = {"num_classes": self.num_classes, "in_chans": 1, "crop_pct": 1.0, "interpolation": "bilinear"}
        data |= {"mean": list(AUDIOSET_MEAN), "std": list(AUDIOSET_STD)}  # DCLS-Audio datasets.py:16-18
        return {"model": dict(self.model), "data": data}


def _translate_positions(state: Mapping[str, Tensor], convention: str, size: int) -> dict[str, Tensor]:
    """Every layer's ``P``/``SIG`` as our ``positions``/``sigma`` (other tensors as they are)."""
    gauss = convention == "gauss"
    out = {}
    for key, value in state.items():
        match = _DCLS_KEY.match(key)
        if not match:
            out[key] = value
        elif match[2] == "P":
            sig = state.get(f"{match[1]}.SIG")
            positions, sigma = positions_from_dcls(value, sig, convention, (size, size), gauss)
            out[f"{match[1]}.positions"] = positions
            if gauss:
                out[f"{match[1]}.sigma"] = sigma
    return out


def _check_shared(state: Mapping[str, Tensor], model: torch.nn.Module) -> None:
    """The reference repeats a stage's shared ``P``/``SIG`` under each layer: every copy must be equal, as our
    models hold one tensor per stage (loading would silently keep the last copy)."""
    first: dict[int, str] = {}
    for key, param in model.state_dict(keep_vars=True).items():
        if not key.endswith((".positions", ".sigma")) or key not in state:
            continue
        ref = first.setdefault(id(param), key)
        if ref != key and not torch.equal(state[ref], state[key]):
            raise AudioReleaseError(
                f"{key} differs from {ref}, which the model shares with it; allowed: a checkpoint whose layers of "
                "one stage hold equal P/SIG copies"
            )


def _blocks(state: Mapping[str, Tensor], stage: int) -> int:
    found = {int(m[1]) for k in state if (m := re.match(rf"^stages\.{stage}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _model_config(family: str, convention: str | None, size: int, state: Mapping[str, Tensor]) -> dict[str, Any]:
    """Our registered audio model for the file, kwargs only where the file differs from it (ConvNeXt's depths and
    widths; the DCLS interpolation, dilated size and count)."""
    base = FAMILIES[family][1]
    name = f"{base}_dcls_audio" if convention else f"{base}_audio"
    kwargs: dict[str, Any] = {}
    if family == "convnext":
        depths = [_blocks(state, i) for i in range(4)]
        downs = ["downsample_layers.0.0.weight", *(f"downsample_layers.{i}.1.weight" for i in (1, 2, 3))]
        dims = [int(state[k].shape[0]) for k in downs if k in state]
        if (depths, dims) != ([3, 3, 9, 3], [96, 192, 384, 768]):
            kwargs |= {"depths": depths, "dims": dims}
    if convention:
        variant = VARIANTS[AUDIO_MODELS[name][1]]
        count = int(next(v for k, v in state.items() if k.endswith(".P")).shape[-1])
        interpolation = "gauss" if convention == "gauss" else "bilinear"
        for key, registered, here in (
            ("dcls_interpolation", variant.interpolation, interpolation),
            ("dcls_dilated_kernel_size", variant.dilated_kernel_size, size),
            ("dcls_kernel_count", variant.kernel_count, count),
        ):
            if registered != here:
                kwargs[key] = here
    return {"name": name, "kwargs": kwargs}


def convert_audio_release(obj: Any, dilated_kernel_size: int | None = None) -> AudioConversion:
    """Our state dict for the ``*_audio`` model of a DCLS-Audio file, with its model config."""
    found = audio_release_state(obj)
    if found is None:
        raise AudioReleaseError("not a DCLS-Audio checkpoint; allowed: a state dict with the (2,16) one-channel stem")
    family, state = found
    dcls = any(_DCLS_KEY.match(k) for k in state)
    gauss = any(k.endswith(".SIG") for k in state)
    convention = ("gauss" if gauss else "v0") if dcls else None
    size = dilated_kernel_size or (SIZE_OF[convention] if convention else 0)
    model_cfg = _model_config(family, convention, size, state)
    with torch.device("meta"):  # shapes only: timm's filters look up the model's tensor shapes
        model = timm.create_model(model_cfg["name"], num_classes=_num_classes(family, state), **model_cfg["kwargs"])
    ours = _translate_positions(state, convention, size) if convention else dict(state)
    filter_fn: Callable[..., dict[str, Tensor]] = FAMILIES[family][2].checkpoint_filter_fn
    try:
        mapped = filter_fn(ours, model)
    except KeyError as err:
        raise AudioReleaseError(f"tensor {err.args[0]!r} has no place in {model_cfg['name']}") from err
    _check_shared(mapped, model)
    return AudioConversion(mapped, model_cfg, convention, _num_classes(family, state))


def _num_classes(family: str, state: Mapping[str, Tensor]) -> int:
    key = {"convnext": "head.weight", "metaformer": "head.fc2.weight", "fastvit": "head.weight"}[family]
    if key not in state:
        raise AudioReleaseError(
            f"tensor {key!r} (the classifier) is missing; allowed: a complete DCLS-Audio state dict"
        )
    return int(state[key].shape[0])


__all__ = [
    "AUDIO_RELEASE_DESCRIPTION",
    "AudioConversion",
    "AudioReleaseError",
    "audio_release_state",
    "convert_audio_release",
    "is_audio_release",
]
