"""Validation: exact top-1/top-5 and CE loss over a whole (rank-sharded) val set.

Shared by the trainer (model and EMA every epoch) and the robustness runner (every corrupted split).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from .distributed import all_reduce_sum
from .loader import EpochLoader
from .runlog import RunLogger


def amp_context(device: torch.device, dtype: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` (a torch dtype name), or a no-op without AMP."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: EpochLoader,
    device: torch.device,
    amp: str | None = None,
    channels_last: bool = False,
    logger: RunLogger | None = None,
    desc: str = "val",
) -> dict[str, float]:
    """Top-1/top-5 (%) and CE loss over the whole val set; counts are summed over ranks, so exact."""
    was_training = model.training
    model.eval()
    stats = torch.zeros(5, dtype=torch.float64, device=device)  # correct1, correct5, n, loss_sum, seen_batches
    data = loader.epoch(0)
    bar = logger.bar(len(data), desc) if logger else None
    for batch in data:
        if batch is None:
            continue
        x, y = batch[0], batch[1]
        if len(y) == 0:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_context(device, amp):
            out = model(x)
        out = out.float()
        k = min(5, out.shape[1])
        top = out.topk(k, dim=1).indices
        hit = top.eq(y[:, None])
        stats += torch.stack(
            [
                hit[:, 0].sum().double(),
                hit.any(1).sum().double(),
                torch.tensor(len(y), device=device, dtype=torch.float64),
                nn.functional.cross_entropy(out, y, reduction="sum").double(),
                torch.ones((), dtype=torch.float64, device=device),
            ]
        )
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    all_reduce_sum(stats)
    model.train(was_training)
    n = max(stats[2].item(), 1.0)
    expected = float(len(loader.loader.dataset))
    return {
        "top1": 100.0 * stats[0].item() / n,
        "top5": 100.0 * stats[1].item() / n,
        "loss": stats[3].item() / n,
        "samples": int(stats[2].item()),
        "skipped": int(max(0.0, expected - stats[2].item())),
    }


__all__ = ["amp_context", "evaluate"]
