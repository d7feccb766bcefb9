"""EMA of model weights: timm's ``ModelEmaV3`` made safe for shared positions tensors.

``ModelEmaV3.apply_update_`` walks ``state_dict().values()``, where a positions tensor shared by every
layer of a stage appears once per layer, so it would be lerped N times per step (effective decay
``decay**N``). Here each distinct tensor is updated exactly once.
"""

from __future__ import annotations

import torch
from timm.utils import ModelEmaV3
from torch import nn


class ModelEma(ModelEmaV3):
    """``ModelEmaV3`` whose update visits each distinct parameter/buffer once."""

    @torch.no_grad()
    def apply_update_(self, model: nn.Module, decay: float) -> None:
        ema_lerp, model_lerp = [], []
        seen: set[int] = set()
        pairs = zip(self.module.state_dict(keep_vars=True).values(), model.state_dict(keep_vars=True).values())
        for ema_v, model_v in pairs:
            if ema_v is None or id(ema_v) in seen:
                continue
            seen.add(id(ema_v))
            ema_v, model_v = ema_v.detach(), model_v.detach()
            if self.device is not None:
                model_v = model_v.to(device=self.device)
            if ema_v.is_floating_point():
                ema_lerp.append(ema_v)
                model_lerp.append(model_v)
            else:
                ema_v.copy_(model_v)
        if self.foreach:
            self._foreach_lerp_(ema_lerp, model_lerp, weight=1.0 - decay)
        else:
            for e, m in zip(ema_lerp, model_lerp):
                self._lerp_(e, m, weight=1.0 - decay)
