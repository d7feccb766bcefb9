"""Fine-tune initialisation: a new run's model starts from the weights of any checkpoint (``model.init_checkpoint``).

Unlike :func:`.factory.load_model` (strict: the file's own architecture), a new run may change what the file
cannot know about: the classifier (another ``num_classes``), the input stem (another ``in_chans``, e.g. a
spectrogram stem) and, for a DCLS model started from its baseline's weights, the DCLS layers (the file holds
dense kernels). Those parts keep their fresh initialisation and are named in the one line returned; anything
else that does not fit is a :class:`.checkpoint_formats.ModelLoadError`. The engine calls this when a run starts
from ``model.init_checkpoint`` (not on a resume).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from dcls_vision.ops import DclsLayer

from .checkpoint_formats import ModelLoadError, apply_filter, read_checkpoint, resolve_checkpoint, shape_text


def _head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier (``get_classifier()``, else timm's ``pretrained_cfg['classifier']``)."""
    classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
    prefixes = [f"{n}." for n, m in model.named_modules() if n and classifier is not None and m is classifier]
    if not prefixes:
        names = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
        prefixes = [f"{n}." for n in ([names] if isinstance(names, str) else names)]
    return {k for k in model.state_dict() if k.startswith(tuple(prefixes))} if prefixes else set()


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
        f"{k}: {shape_text(v)} in the file vs {shape_text(own[k])} here"
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
            f"{k} {shape_text(state[k]) if k in state else '-'}->{shape_text(own[k]) if k in own else '-'}"
            for k in sorted(keys)
        )
        if part == "DCLS kernels":
            layers = len({k.rsplit(".", 1)[0] for k in keys})
            line += f"; skipped {layers} DCLS kernels (the file holds dense kernels), freshly initialised"
            continue
        why = "another num_classes" if part == "classifier" else "another input stem"
        line += f"; skipped the {part} ({why}), freshly initialised: {shapes}"
    return line
