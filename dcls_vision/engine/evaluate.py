"""Validation: exact top-1/top-5 and CE loss over a whole (rank-sharded) val set; for multi-label data (AudioSet)
mAP, AUC and d-prime over all val clips (scores gathered from every rank) and BCE loss.

Shared by the trainer (model and EMA every epoch) and the robustness runner (every corrupted split).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from .distributed import all_gather_objects, all_reduce_sum
from .loader import EpochLoader
from .runlog import RunLogger


def amp_context(device: torch.device, dtype: str | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype`` (a torch dtype name), or a no-op without AMP."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype))


def _val_outputs(
    model: nn.Module,
    loader: EpochLoader,
    device: torch.device,
    amp: str | None,
    channels_last: bool,
    logger: RunLogger | None,
    desc: str,
    transform: nn.Module | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float outputs, targets) of every non-empty val batch, on ``device`` (``transform`` first), with the bar:
    the one batch loop of :func:`evaluate` and :func:`evaluate_multilabel`."""
    data = loader.epoch(0)
    bar = logger.bar(len(data), desc) if logger else None
    try:
        for batch in data:
            if batch is not None and len(batch[1]):
                x, y = batch[0].to(device, non_blocking=True), batch[1].to(device, non_blocking=True)
                if transform is not None:
                    x = transform(x)
                if channels_last and x.dim() == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                with amp_context(device, amp):
                    out = model(x)
                yield out.float(), y
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


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
    for out, y in _val_outputs(model, loader, device, amp, channels_last, logger, desc):
        top = out.topk(min(5, out.shape[1]), dim=1).indices
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


def average_precision(target: np.ndarray, score: np.ndarray) -> float:
    """Binary average precision exactly as scikit-learn's ``average_precision_score`` (step-wise, no interpolation).

    One point per distinct score: AP = sum_k (R_k - R_{k-1}) P_k. A class without positives gives 0 (sklearn warns
    and counts it as 0 in the macro mean too).
    """
    order = np.argsort(-score, kind="mergesort")
    s, y = score[order], target[order].astype(np.float64)
    last = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    if tps[-1] <= 0:
        return 0.0
    precision = tps / (last + 1.0)
    recall = tps / tps[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(target: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) formula with tied scores averaged; nan if a label value is absent."""
    pos = target.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    s = score[order]
    starts = np.r_[0, np.nonzero(np.diff(s))[0] + 1]
    ends = np.r_[starts[1:], len(s)]
    for a, b in zip(starts, ends, strict=True):
        ranks[order[a:b]] = (a + b + 1) / 2.0  # average 1-based rank of a tie group
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def multilabel_metrics(target: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """Macro mAP and AUC (%) and d-prime over classes, as DCLS-Audio engine.py (sklearn's macro averages).

    d' = mean over classes of sqrt(2) * Phi^-1(AUC_c), AUC clipped to [1e-6, 1 - 1e-6] so a perfect class stays
    finite; classes whose val labels are all equal have no AUC and are left out of AUC and d'.
    """
    aps = [average_precision(target[:, c], score[:, c]) for c in range(target.shape[1])]
    aucs = np.array([roc_auc(target[:, c], score[:, c]) for c in range(target.shape[1])])
    valid = aucs[~np.isnan(aucs)]
    clipped = torch.from_numpy(np.clip(valid, 1e-6, 1 - 1e-6))
    d_prime = float((math.sqrt(2.0) * torch.special.ndtri(clipped)).mean()) if len(valid) else math.nan
    return {
        "mAP": 100.0 * float(np.mean(aps)),
        "AUC": 100.0 * float(valid.mean()) if len(valid) else math.nan,
        "d_prime": d_prime,
    }


@torch.no_grad()
def evaluate_multilabel(
    model: nn.Module,
    loader: EpochLoader,
    device: torch.device,
    amp: str | None = None,
    channels_last: bool = False,
    logger: RunLogger | None = None,
    desc: str = "val",
    transform: nn.Module | None = None,
) -> dict[str, float]:
    """mAP/AUC/d' (:func:`multilabel_metrics`) and mean BCE over the whole val set; ``transform`` runs on device."""
    was_training = model.training
    model.eval()
    scores, targets, loss_sum = [], [], 0.0
    for out, y in _val_outputs(model, loader, device, amp, channels_last, logger, desc, transform):
        y = y.float()
        loss_sum += nn.functional.binary_cross_entropy_with_logits(out, y, reduction="sum").item() / y.shape[1]
        scores.append(torch.sigmoid(out).cpu().numpy())
        targets.append(y.cpu().numpy())
    parts = all_gather_objects((scores, targets, loss_sum))
    score = np.concatenate([s for p in parts for s in p[0]])
    target = np.concatenate([t for p in parts for t in p[1]])
    model.train(was_training)
    n = len(target)
    return {
        **multilabel_metrics(target > 0.5, score),
        "loss": sum(p[2] for p in parts) / max(n, 1),
        "samples": n,
        "skipped": int(max(0, len(loader.loader.dataset) - n)),
    }


__all__ = ["amp_context", "average_precision", "evaluate", "evaluate_multilabel", "multilabel_metrics", "roc_auc"]
