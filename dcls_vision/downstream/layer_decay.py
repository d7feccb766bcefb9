"""Layer ids for layer-/stage-wise LR decay, as the ConvNeXt detection/segmentation recipes define them.

The thesis fine-tunes with ConvNeXt's recipes (mmseg's ``LearningRateDecayOptimizerConstructor``): with
``num_layers = N`` (6 for ConvNeXt-T / ConvFormer-S18, whose third stage has 9 blocks; 12 for S/B with 27),
ids run from 0 (stem) to N + 1 (neck and heads) and a parameter's LR is ``lr × rate ** (N + 1 − id)``:

- ``layer_wise``: stem 0; stage 0 → 1; stage 1 (and its downsampling) → 2; stage 2's downsampling → 3 and its
  block b → 3 + b // 3; stage 3 (and its downsampling) → N; anything else → N + 1.
- ``stage_wise``: stem and every downsampling layer → 0; the blocks of stage s → s + 1; anything else → N + 1.

The names are those of timm's ConvNeXt and MetaFormer (``stem.*``, ``stages.S.downsample.*``,
``stages.S.blocks.B.*``); no mm package is needed here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

DECAY_TYPES = ("layer_wise", "stage_wise")
_STAGE_RE = re.compile(r"^stages\.(\d+)\.(downsample|blocks)(?:\.(\d+))?(?:\.|$)")


def check_decay_type(decay_type: str) -> str:
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"decay_type={decay_type!r} is not supported; allowed: {', '.join(DECAY_TYPES)}")
    return decay_type


def default_num_layers(depths: Sequence[int]) -> int:
    """ConvNeXt's ``num_layers`` for these stage depths: 3 + ⌈depth of stage 2 / 3⌉ (6 for T, 12 for S/B)."""
    if len(depths) != 4:
        raise ValueError(f"depths={list(depths)!r} is invalid; allowed: 4 stage depths")
    return 3 + math.ceil(depths[2] / 3)


def layer_id(name: str, decay_type: str, num_layers: int) -> int:
    """Id of backbone parameter ``name`` (timm naming, relative to the timm model) under ``decay_type``."""
    check_decay_type(decay_type)
    if name.startswith("stem.") or name.startswith("stem_"):
        return 0
    match = _STAGE_RE.match(name)
    if match is None:
        return num_layers + 1
    stage, part = int(match.group(1)), match.group(2)
    if decay_type == "stage_wise":
        return 0 if part == "downsample" else stage + 1
    if stage == 3:
        return num_layers
    if part == "downsample":
        return {0: 0, 1: 2, 2: 3}[stage]
    block = int(match.group(3) or 0)
    return {0: 1, 1: 2}.get(stage, 3 + block // 3)


def lr_scale(layer: int, decay_rate: float, num_layers: int) -> float:
    """``decay_rate ** (num_layers + 1 − layer)``: 1 for the heads, smallest for the stem."""
    return float(decay_rate) ** (num_layers + 1 - layer)
