"""The published ConvNeXt-dcls ImageNet-1k releases, read into our registered ``convnext_*_dcls`` models.

The ConvNeXt-dcls repository (K-H-Ismail/ConvNeXt-dcls, ``models/convnext_dcls.py``) released
``convnext_dcls_{tiny,small,base}_1k_224_ema.pth``: ``{"model": state_dict}`` with ``downsample_layers.*``,
``stages.{i}.{j}.{dwconv,norm,pwconv1,pwconv2,gamma}``, ``norm`` and ``head``; each stage's blocks use one
``dwconv.P`` (2, C, 1, K) tensor, repeated under every block's key (and ``dwconv.SIG`` for a Gauss model, the
``dcls`` package's name for σ). :func:`convert_release` maps such a state dict onto our keys, checks that the
copies of a stage's ``P`` are equal (our models hold one shared tensor per stage) and translates positions with
the one rule of :func:`dcls_vision.ops.compat.positions_from_dcls`.

Which ``dcls`` semantics the releases were trained with (evidence, read from the two repositories' history):

- ConvNeXt-dcls ``fddc673377f26f40008c723d0a0b8bac6960566d`` (2022-09-25, first commit) and
  ``44e75a4de15f8b2d4379fc4aae22f1c648292ede`` (2022-09-26, which points the download links at the Zenodo record
  7112021 that holds the three files) build every ``dwconv`` as ``Dcls2d(dim, dim, kernel_count=K,
  dilated_kernel_size=17, padding=8, groups=dim, scaling=1, use_implicit_gemm=True)`` from
  ``DCLS.construct.modules.Dcls``, and create the per-stage ``P`` as N(0, 0.5) clamped to ±8 and divided by
  ``scaling`` = 1. ``a41aea0e111bcb009c670ab5af87825fdeddec91`` (2023-05-20) dropped ``scaling``;
  ``696715995e224e53cb0dbddcc6f1c4d2677154f0`` (2023-10-03) added ``version='v0'`` explicitly once the package's
  default had moved away from the original construction (see below).
- In the DCLS repository, that signature (``scaling``, ``use_implicit_gemm``, no ``version``) is the one of
  ``main`` at ``3076e298a4eab6613a88f271545231baf9700be7`` (2022-09-25) and of the ``cuda`` branch tip
  ``87ea108284daaa99484deb76d61595c21d90e956`` (2022-10-06); the kernel construction files are identical at the
  two. ``DCLS/construct/modules/Dcls.py``: ``forward`` passes ``P[0]`` as ``P1`` and ``P[1]`` as ``P2`` to
  ``ConstructKernel2d``. ``DCLS/construct/src/cuda/dcls_construct_2d_cuda_kernel.cu``: positions are multiplied
  by ``scaling``, shifted by ``dilated_kernel_size // 2`` (centre floor(s/2)), floored and clamped into
  [0, s-1]; ``P1`` indexes kernel rows (height), ``P2`` columns (width); each element spreads its weight over
  the four neighbours with bilinear factors (1-r_h)(1-r_w), r_h(1-r_w), (1-r_h)r_w, r_h r_w, unnormalised.
- ``b5e3521e0e817eb8eea900c7595bd622bf60235f`` (2022-11-08) replaced the CUDA construction with a torch one
  (``DCLS/construct/modules.py`` ``ConstructKernel2d``, lines 210-239): same unnormalised bilinear weights, centre
  s//2, but **no clamp** (an element past the border loses its off-grid share) and ``P[0]`` compared with the
  **column** index (``I``, line 231): kernels built with ``P[0]`` along W. ``ea8d05b70ca041b5e1b1f05b5b9b18dd3b4b0fcb``
  (2023-06-01) named that construction ``version="v0"`` and added "v1"/"max"/"gauss" (default "v1"), keeping
  ``P[0]`` along W; ``d718ed896b94d79828d08d9edb644b390b350ec0`` (2023-10-03) swapped ``I``/``J`` in
  ``forward_v0`` (``modules.py`` lines 303-304), putting ``P[0]`` back on rows. The ``dcls`` PyPI releases of that
  window, 0.0.2 (b5e3521) to 0.0.5 (7b61671, 2023-06-02), therefore build bilinear kernels **transposed**; 0.0.6
  (be1825f) and later, ``dcls`` 0.1.1 included, build "v0" with ``P[0]`` on rows and no clamp.
  ``096daf8f476bc2dda4eec728fba5b69850bcf971`` (2023-10-19) made "gauss" the default.

Conventions (``convention=``, ``--convention``), each the construction a file was trained with:

- "v0" (default without ``SIG``): the 2022 CUDA construction the releases were trained with: ``P[0]`` along H,
  positions clamped into the kernel. In our layout that is ``positions`` clamped to [-(s//2), s-1-s//2]: the CUDA
  code takes the rests from the clamped position (``dcls_construct_2d_cuda_kernel.cu`` lines 128-137 at 87ea108),
  so a clamped element puts its whole weight on the border cell, exactly like our bilinear construction of the
  clamped position. Inside the kernel it equals ``dcls`` >= 0.0.6 "v0". The fork clamps after each step but
  updates its EMA *before* clamping (``engine.py`` lines 85-99 at aad45f3), so EMA positions of the released
  files may sit slightly past ±s//2: those are the ones clamped (:attr:`Conversion.positions_clamped`).
- "v0-transposed": ``dcls`` 0.0.2-0.0.5 (Nov 2022 - Jun 2023) bilinear: ``P[0]`` along W, no clamp.
- "gauss" (default with ``SIG``): ``dcls`` >= 2023-06 "gauss", ``P[0]``/``SIG[0]`` along W, no clamp.

The fork has no Gauss release; a Gauss model in the release layout comes from a user's own training.
The dilated kernel size is not stored in the files: 17 (bilinear, the releases) or 23 (gauss) unless given; a
given size must be odd (the layout is trained with odd sizes) and hold the positions (one cell of EMA overshoot
past ±s//2 at most).
Training checkpoints of the fork (``utils.py`` ``save_model``, lines 474-490 at aad45f3: ``checkpoint-N.pth``,
``checkpoint-best.pth``, ``checkpoint-best-ema.pth``) hold ``model``, ``optimizer``, ``epoch``, ``scaler``,
``args`` and, with EMA, ``model_ema``; :func:`pick_release_entry` chooses between ``model`` and ``model_ema``.
This module reads and maps tensors only (no file IO, no model building); :mod:`.checkpoint_formats` registers
the format.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from timm.models import get_pretrained_cfg
from torch import Tensor

from dcls_vision.ops.compat import positions_from_dcls
from dcls_vision.utils.errors import UserError

from .zoo import VARIANTS

RELEASE_DESCRIPTION = (
    "release: a ConvNeXt-dcls ImageNet release (convnext_dcls_{tiny,small,base}_1k_224_ema.pth: a state dict "
    "under 'model' with downsample_layers.* and stages.i.j.dwconv.P)"
)
CONVENTIONS = ("v0", "v0-transposed", "gauss")  # the dcls construction a file was trained with (docstring)
# the dcls version whose axis order each convention shares (positions_from_dcls): "v0-transposed" moves P[0]
# along W like "v1"/"gauss"
_AXIS_ORDER = {"v0": "v0", "v0-transposed": "v1", "gauss": "gauss"}
CLAMPED = ("v0",)  # conventions whose construction clamps positions into the kernel (the 2022 CUDA code)
EMA_ENTRY = "model_ema"  # the fork's training checkpoints (utils.py save_model)
DEFAULT_CONVENTION = {"bilinear": "v0", "gauss": "gauss"}
DEFAULT_DILATED_KERNEL_SIZE = {"bilinear": 17, "gauss": 23}
SIZES = {  # (depths, dims) of ConvNeXt-T/S/B
    "tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "small": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024)),
}
_EMA_WORD = re.compile(r"(^|[-_.])ema([-_.]|$)")
_DWCONV = re.compile(r"^stages\.(\d+)\.(\d+)\.dwconv\.(P|SIG)$")
_RENAMES = (  # release key pattern -> our key (timm ConvNeXt names)
    (re.compile(r"^downsample_layers\.0\.([01])\.(.+)$"), r"stem.\1.\2"),
    (re.compile(r"^downsample_layers\.(\d+)\.([01])\.(.+)$"), r"stages.\1.downsample.\2.\3"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.dwconv\.(weight|bias)$"), r"stages.\1.blocks.\2.conv_dw.\3"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.dwconv\.P$"), r"stages.\1.blocks.\2.conv_dw.positions"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.dwconv\.SIG$"), r"stages.\1.blocks.\2.conv_dw.sigma"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.norm\.(.+)$"), r"stages.\1.blocks.\2.norm.\3"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.pwconv1\.(.+)$"), r"stages.\1.blocks.\2.mlp.fc1.\3"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.pwconv2\.(.+)$"), r"stages.\1.blocks.\2.mlp.fc2.\3"),
    (re.compile(r"^stages\.(\d+)\.(\d+)\.gamma$"), r"stages.\1.blocks.\2.gamma"),
    (re.compile(r"^norm\.(.+)$"), r"head.norm.\1"),
    (re.compile(r"^head\.(.+)$"), r"head.fc.\1"),
)


class ReleaseFormatError(UserError):
    """A release file whose contents cannot become one of our models; one line naming the tensor and the fix."""


class ReleaseNoEmaError(ReleaseFormatError):
    """EMA weights asked for from a release-layout file that holds none."""


def _release_layout(state: Any) -> bool:
    if not isinstance(state, Mapping) or "downsample_layers.0.0.weight" not in state:
        return False
    if not any(isinstance(k, str) and _DWCONV.match(k) for k in state):
        return False
    return all(isinstance(v, Tensor) for v in state.values())


def release_state(obj: Any) -> Mapping[str, Tensor] | None:
    """The release weights in a loaded file (``{"model": sd, ...}`` or the bare state dict), or None."""
    state = obj.get("model") if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) else obj
    return state if _release_layout(state) else None


@dataclass(frozen=True)
class ReleaseEntry:
    """The weights taken from a release-layout file: the entry (None: the file is the state dict), whether they
    are EMA weights, and the file's other entries, left unused."""

    key: str | None
    state: Mapping[str, Tensor]
    weights: str  # "model" or "ema"
    ignored: tuple[str, ...]


def names_ema(file_name: str) -> bool:
    """Whether a file name says EMA (``*_ema.pth``, ``checkpoint-best-ema.pth``), as a word, not a substring."""
    return _EMA_WORD.search(file_name.lower()) is not None


def pick_release_entry(obj: Any, file_name: str, use_ema: bool) -> ReleaseEntry:
    """``model_ema`` when EMA is asked for, or by default when the file name says EMA (the fork's
    ``checkpoint-best-ema.pth`` holds the non-EMA weights under ``model``); else ``model``. A file with ``model``
    only is labelled EMA when its name says so (the published ``*_ema.pth`` hold the EMA weights there)."""
    named_ema = names_ema(file_name)
    has_ema = isinstance(obj, Mapping) and _release_layout(obj.get(EMA_ENTRY))
    if has_ema and (use_ema or named_ema):
        key, weights = EMA_ENTRY, "ema"
    elif use_ema and not named_ema:
        raise ReleaseNoEmaError(
            f"no {EMA_ENTRY!r} entry and the file name does not say EMA (a release's *_ema.pth holds EMA weights "
            "under 'model')"
        )
    else:
        key = "model" if isinstance(obj, Mapping) and "model" in obj else None
        weights = "ema" if named_ema and not has_ema else "model"
    state = obj if key is None else obj[key]
    if not _release_layout(state):
        raise ReleaseFormatError(f"{file_name}: entry {key!r} is not a ConvNeXt-dcls state dict")
    ignored = tuple(str(k) for k in obj if k != key) if key is not None else ()
    return ReleaseEntry(key, state, weights, ignored)


def is_release(obj: Any) -> bool:
    """Whether a loaded file is in the release layout (``downsample_layers.*`` + ``stages.i.j.dwconv.P``)."""
    return release_state(obj) is not None


@dataclass(frozen=True)
class ReleaseArch:
    """What the tensors say about the network: stage depths/widths, DCLS elements, interpolation, classes."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    kernel_count: int
    interpolation: str  # "bilinear" (P only) or "gauss" (P and SIG)
    num_classes: int
    in_chans: int


def _need(state: Mapping[str, Tensor], key: str) -> Tensor:
    if key not in state:
        raise ReleaseFormatError(f"release tensor {key!r} is missing; allowed: a complete ConvNeXt-dcls state dict")
    return state[key]


def infer_arch(state: Mapping[str, Tensor]) -> ReleaseArch:
    """Depths from the block indices, widths from the downsampling convs, K from ``P``, σ from ``SIG``."""
    blocks: dict[int, set[int]] = {}
    has_sigma = False
    for key in state:
        match = _DWCONV.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(int(match[2]))
            has_sigma |= match[3] == "SIG"
    if sorted(blocks) != [0, 1, 2, 3] or any(b != set(range(len(b))) for b in blocks.values()):
        found = {i: sorted(b) for i, b in sorted(blocks.items())}
        raise ReleaseFormatError(f"release stages {found} are not 4 stages of consecutive blocks (ConvNeXt layout)")
    dims = tuple(int(_need(state, f"downsample_layers.{i}.{0 if i == 0 else 1}.weight").shape[0]) for i in range(4))
    stem = _need(state, "downsample_layers.0.0.weight")
    head = _need(state, "head.weight")
    return ReleaseArch(
        tuple(len(blocks[i]) for i in range(4)),
        dims,
        int(_need(state, "stages.0.0.dwconv.P").shape[-1]),
        "gauss" if has_sigma else "bilinear",
        int(head.shape[0]),
        int(stem.shape[1]),
    )


def model_config(arch: ReleaseArch, dilated_kernel_size: int | None = None) -> dict[str, Any]:
    """Our model group (``name``, ``kwargs``) for ``arch``: a registered name, kwargs only where it differs."""
    size = next((n for n, (d, w) in SIZES.items() if (d, w) == (arch.depths, arch.dims)), None)
    base = size or "tiny"
    name = f"convnext_{base}_dcls" + ("_gauss" if arch.interpolation == "gauss" and base == "tiny" else "")
    variant = VARIANTS[name]
    s = dilated_kernel_size or DEFAULT_DILATED_KERNEL_SIZE[arch.interpolation]
    kwargs: dict[str, Any] = {} if size else {"depths": list(arch.depths), "dims": list(arch.dims)}
    for key, ours, theirs in (
        ("dcls_interpolation", variant.interpolation, arch.interpolation),
        ("dcls_dilated_kernel_size", variant.dilated_kernel_size, s),
        ("dcls_kernel_count", variant.kernel_count, arch.kernel_count),
    ):
        if ours != theirs:
            kwargs[key] = theirs
    return {"name": name, "kwargs": kwargs}


def data_config(name: str, arch: ReleaseArch) -> dict[str, Any]:
    """The data settings of our registered model (timm's in1k cfg: 224, crop 0.875, bicubic, ImageNet mean/std)."""
    cfg = get_pretrained_cfg(name)
    return {
        "num_classes": arch.num_classes,
        "in_chans": arch.in_chans,
        "img_size": int(cfg.input_size[-1]),
        "crop_pct": float(cfg.crop_pct),
        "interpolation": str(cfg.interpolation),
        "mean": list(cfg.mean),
        "std": list(cfg.std),
    }


@dataclass
class Conversion:
    """A release state dict in our layout, the model/data config it needs, and what was done to each tensor."""

    state: dict[str, Tensor]
    model: dict[str, Any]
    data: dict[str, Any]
    arch: ReleaseArch
    convention: str
    dilated_kernel_size: int
    mapped: int = 0
    skipped: list[str] = field(default_factory=list)
    shape_changes: list[str] = field(default_factory=list)
    positions_max_abs: float = 0.0
    positions_clamped: int = 0  # position values (one per stage, not per block copy) the convention clamped

    def run_config(self) -> dict[str, Any]:
        """The ``model`` and ``data`` groups of a run config (what the factory builds the model from)."""
        return {"model": dict(self.model), "data": dict(self.data)}


def _shared(state: Mapping[str, Tensor], depths: tuple[int, ...], kind: str) -> list[Tensor]:
    """The one ``P`` (or ``SIG``) of each stage, after checking every block's copy equals block 0's."""
    out = []
    for i, depth in enumerate(depths):
        first = _need(state, f"stages.{i}.0.dwconv.{kind}")
        for j in range(1, depth):
            other = _need(state, f"stages.{i}.{j}.dwconv.{kind}")
            if other.shape != first.shape or not torch.equal(other, first):
                diff = (other - first).abs().max().item() if other.shape == first.shape else "shape"
                raise ReleaseFormatError(
                    f"stage {i}: stages.{i}.{j}.dwconv.{kind} differs from stages.{i}.0.dwconv.{kind} (max |diff| "
                    f"{diff}); our models share one {kind} per stage; allowed: a release whose stage {i} blocks "
                    f"hold equal copies"
                )
        out.append(first)
    return out


def _check_convention(convention: str | None, arch: ReleaseArch) -> str:
    convention = convention or DEFAULT_CONVENTION[arch.interpolation]
    if convention not in CONVENTIONS:
        raise ReleaseFormatError(f"convention={convention!r} is not supported; allowed: {', '.join(CONVENTIONS)}")
    return convention


def check_kernel_size(reach: float, s: int, given: bool) -> None:
    """Raise unless ``s`` holds positions reaching ``reach``: odd (the layout is trained with odd sizes) and
    ``reach < s//2 + 1`` (positions within ±s//2, plus under one cell of EMA overshoot, see the module doc)."""
    fits = 2 * int(reach) + 1  # the smallest odd size with s//2 >= floor(reach)
    what = "dilated_kernel_size" + ("" if given else f" (default {s}; not stored in the file)")
    if s % 2 == 0:
        raise ReleaseFormatError(
            f"{what}={s} is even; the release layout is trained with odd sizes (17 bilinear, 23 gauss); allowed: an "
            f"odd size >= {fits} (largest |position| {reach:.2f}) via dilated_kernel_size= / --dilated-kernel-size"
        )
    if reach >= s // 2 + 1:
        raise ReleaseFormatError(
            f"release positions reach {reach:.2f} but {what}={s} holds ±{s // 2}; the smallest size that fits is "
            f"{fits}; allowed: the release's dilated kernel size (dilated_kernel_size=, --dilated-kernel-size)"
        )


def _translate(P: Tensor, SIG: Tensor | None, convention: str, s: int, gauss: bool) -> tuple[Tensor, Tensor, int]:
    """Our (positions, σ) from one stage's ``P``/``SIG`` and how many position values the convention clamped."""
    positions, sigma = positions_from_dcls(P, SIG, _AXIS_ORDER[convention], (s, s), gauss)
    if convention not in CLAMPED:
        return positions, sigma, 0
    low, high = -(s // 2), s - 1 - s // 2  # [0, s-1] of the CUDA code, in offsets from the centre
    clamped = positions.clamp(low, high)
    return clamped, sigma, int((clamped != positions).sum())


def convert_release(
    state: Mapping[str, Tensor], convention: str | None = None, dilated_kernel_size: int | None = None
) -> Conversion:
    """Our state dict (for the model of :func:`model_config`) from a release state dict.

    ``convention``: one of :data:`CONVENTIONS` (default "v0" for bilinear releases, "gauss" with ``SIG``), see
    the module docstring. Raises :class:`ReleaseFormatError` naming the stage whose ``P`` copies differ, or a
    dilated kernel size that cannot hold the positions.
    """
    arch = infer_arch(state)
    convention = _check_convention(convention, arch)
    model = model_config(arch, dilated_kernel_size)
    s = int(model["kwargs"].get("dcls_dilated_kernel_size", VARIANTS[model["name"]].dilated_kernel_size))
    gauss = arch.interpolation == "gauss"
    P = _shared(state, arch.depths, "P")
    SIG = _shared(state, arch.depths, "SIG") if gauss else [None] * 4
    reach = max(float(p.abs().max()) for p in P)
    check_kernel_size(reach, s, dilated_kernel_size is not None)
    translated = [_translate(p, g, convention, s, gauss) for p, g in zip(P, SIG)]
    conv = Conversion({}, model, data_config(model["name"], arch), arch, convention, s, positions_max_abs=reach)
    conv.positions_clamped = sum(t[2] for t in translated)
    for key, value in state.items():
        target = next((rx.sub(rep, key) for rx, rep in _RENAMES if rx.match(key)), None)
        if target is None:
            conv.skipped.append(key)
            continue
        match = _DWCONV.match(key)
        if match:
            value = translated[int(match[1])][0 if match[3] == "P" else 1]
        if value.shape != state[key].shape:
            conv.shape_changes.append(f"{key} {tuple(state[key].shape)} -> {target} {tuple(value.shape)}")
        conv.state[target] = value.clone()
        conv.mapped += 1
    return conv


__all__ = [
    "CONVENTIONS",
    "RELEASE_DESCRIPTION",
    "Conversion",
    "ReleaseEntry",
    "ReleaseArch",
    "ReleaseFormatError",
    "ReleaseNoEmaError",
    "check_kernel_size",
    "convert_release",
    "infer_arch",
    "is_release",
    "model_config",
    "names_ema",
    "pick_release_entry",
    "release_state",
]
