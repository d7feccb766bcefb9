"""Peak memory of one call: CUDA's allocator statistics, or on CPU the live-tensor high-water mark.

On CPU, process RSS mostly measures libraries and thread start-up, so the peak is taken from the PyTorch
profiler's allocation events instead: the bytes live before the call (the tensors passed as ``resident``:
model, optimizer state, input) plus the highest sum of allocations minus frees during the call. On CUDA it
is ``torch.cuda.max_memory_allocated`` over the call, which counts the same things.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._pytree import tree_leaves


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence the profiler's C++ log lines (kineto prints start/stop markers and a CUDA probe error)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_allocated_bytes(fn: Callable[[], Any]) -> int:
    """High-water mark of tensor bytes allocated (net of frees) during ``fn()`` on CPU (profiler events)."""
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak


def resident_bytes(*objects: Any) -> int:
    """Bytes of the distinct tensor storages reachable from modules, optimizers, tensors and containers."""
    seen: set[int] = set()
    total = 0

    def tensors(obj: Any) -> Iterable[torch.Tensor]:
        if isinstance(obj, torch.nn.Module):
            yield from obj.parameters()
            yield from obj.buffers()
            yield from (p.grad for p in obj.parameters() if p.grad is not None)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                yield from (t for t in tree_leaves(state) if isinstance(t, torch.Tensor))
        else:
            yield from (t for t in tree_leaves(obj) if isinstance(t, torch.Tensor))

    for obj in objects:
        for t in tensors(obj):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device, resident: tuple[Any, ...] = ()) -> int:
    """Peak bytes in use during ``fn()``: CUDA allocator peak, or CPU resident + profiler high-water mark."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device))
    return resident_bytes(*resident) + peak_allocated_bytes(fn)
