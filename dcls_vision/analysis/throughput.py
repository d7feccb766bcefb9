"""Inference and training throughput, latency and peak memory of a model over a batch sweep.

Inference: ``model.eval()`` forward under ``torch.no_grad()`` (DCLS layers reuse their cached kernel).
Training: ``model.train()``, forward + cross-entropy + backward + AdamW step + position clamp, i.e. one
real optimizer step of the trainer without data loading. Each point: ``warmup`` untimed steps, then
``repeats`` timed ones (CUDA synchronised); the median gives latency and images/s. Peak memory is taken on
one more step, separately, so profiling never slows the timed ones (see :mod:`.memory`).
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dcls_vision.ops import clamp_positions_

from .errors import AnalysisError
from .memory import peak_memory_bytes

MODES = ("infer", "train")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step_fn(
    model: nn.Module,
    mode: str,
    x: torch.Tensor,
    y: torch.Tensor,
    amp: torch.dtype | None,
    optimizer: torch.optim.Optimizer | None,
) -> Callable[[], None]:
    device = x.device
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp is not None else contextlib.nullcontext

    if mode == "infer":

        def step() -> None:
            with torch.no_grad(), autocast():
                model(x)

        return step

    def train_step() -> None:
        with autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clamp_positions_(model)

    return train_step


def time_step(
    step: Callable[[], Any], device: torch.device, batch: int, warmup: int = 2, repeats: int = 5
) -> dict[str, Any]:
    """``warmup`` untimed then ``repeats`` timed calls of ``step`` (CUDA synchronised): median latency and
    images/s for a step that processes ``batch`` images. Any step: a classifier's, a whole detector's."""
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        "batch": batch,
        "median_ms": 1e3 * median,
        "min_ms": 1e3 * min(times),
        "images_per_s": batch / median,
        "repeats": repeats,
    }


def measure(
    model: nn.Module,
    mode: str,
    batch: int,
    input_size: tuple[int, int, int],
    device: torch.device,
    warmup: int = 2,
    repeats: int = 5,
    channels_last: bool = True,
    amp: torch.dtype | None = None,
    memory: bool = True,
) -> dict[str, Any]:
    """Median latency, images/s and peak memory of ``mode`` at ``batch`` (model already on ``device``)."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not supported; allowed: {', '.join(MODES)}")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *input_size, generator=g).to(device).contiguous(memory_format=fmt)
    num_classes = int(getattr(model, "num_classes", 0) or 1000)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    model.train(mode == "train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-8) if mode == "train" else None
    step = _step_fn(model, mode, x, y, amp, optimizer)
    out = time_step(step, device, batch, warmup, repeats)
    if memory:
        resident = (model, x, y) if optimizer is None else (model, optimizer, x, y)
        out["peak_mem_mb"] = peak_memory_bytes(step, device, resident) / 2**20
    model.eval()
    return out


def sweep(
    model: nn.Module,
    modes: list[str],
    batches: list[int],
    input_size: tuple[int, int, int],
    device: torch.device,
    **kwargs: Any,
) -> dict[str, list[dict[str, Any]]]:
    """:func:`measure` for every mode and batch size; a batch that runs out of memory is recorded as such."""
    results: dict[str, list[dict[str, Any]]] = {}
    for mode in modes:
        rows = results.setdefault(mode, [])
        for batch in batches:
            try:
                rows.append(measure(model, mode, batch, input_size, device, **kwargs))
            except torch.OutOfMemoryError:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                rows.append({"batch": batch, "error": "out of memory"})
    return results


def parse_device(name: str, allow_auto: bool = True) -> torch.device:
    """``--device`` of the benchmark tools as a torch device that exists here (``auto``: CUDA when present);
    one line naming what is allowed otherwise."""
    allowed = "cpu" + (", cuda, cuda:N" if torch.cuda.is_available() else "") + (", auto" if allow_auto else "")
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if allow_auto and name == "auto" else name
    try:
        device = torch.device(device_name)
    except RuntimeError as e:
        raise AnalysisError(f"--device {name!r} is invalid; allowed: {allowed}") from e
    if device.type not in ("cpu", "cuda") or (device.type == "cuda" and not torch.cuda.is_available()):
        raise AnalysisError(f"--device {name!r} is not available here; allowed: {allowed}")
    return device
