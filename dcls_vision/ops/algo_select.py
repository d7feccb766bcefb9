"""Per-shape algorithm choice by measurement, cached in memory and in a JSON file per device model.

On the first call for a key (shape, dtype, layout, stride, padding, which gradients), :class:`AlgoSelector`
times every candidate with its timer (CUDA events by default), skips candidates that raise, keeps the
fastest and stores it in memory and in ``<cache dir>/depthwise/<device name>.json`` (written atomically,
merged with what other processes wrote meanwhile). Entries written by another torch/triton version are
ignored, so an upgrade re-measures. ``DCLS_DEPTHWISE_ALGO`` forces one algorithm for every call.

Cache directory: ``$DCLS_DEPTHWISE_CACHE`` if set (``off`` keeps the choice in memory only), else
``$XDG_CACHE_HOME/dcls-vision`` (default ``~/.cache/dcls-vision``).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from dcls_vision.utils.errors import UserError

__all__ = [
    "ALGORITHMS",
    "AlgoSelector",
    "AlgorithmError",
    "CudaEventTimer",
    "PerfCounterTimer",
    "cache_dir",
    "forced_algorithm",
    "selector_for",
]

# aten_*: F.conv2d (cuDNN on CUDA) on an NCHW / channels_last copy; triton: ops/triton_depthwise.py;
# fft: the FFT custom path; custom: the CPU-tuned custom path (choose_algorithms).
ALGORITHMS = ("aten_nchw", "aten_cl", "triton", "fft", "custom")
ENV_ALGO = "DCLS_DEPTHWISE_ALGO"
ENV_CACHE = "DCLS_DEPTHWISE_CACHE"
_FORMAT = 1


class AlgorithmError(UserError):
    """A bad DCLS_DEPTHWISE_ALGO value, or no candidate that runs."""


class Timer(Protocol):
    def __call__(self, name: str, fn: Callable[[], object]) -> float:
        """Seconds one call of ``fn`` takes (``name`` lets a test timer answer per candidate)."""
        ...


class CudaEventTimer:
    """Median of ``repeats`` CUDA-event timings after ``warmup`` untimed calls (JIT compiles, cuDNN plans)."""

    def __init__(self, warmup: int = 3, repeats: int = 5) -> None:
        self.warmup, self.repeats = warmup, repeats

    def __call__(self, name: str, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.repeats)
        ]
        for start, end in events:
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return statistics.median(s.elapsed_time(e) for s, e in events) / 1e3


class PerfCounterTimer:
    """Wall-clock median for CPU tensors (the benchmark's ``--device cpu`` mode)."""

    def __init__(self, warmup: int = 1, repeats: int = 3) -> None:
        self.warmup, self.repeats = warmup, repeats

    def __call__(self, name: str, fn: Callable[[], object]) -> float:
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times)


def forced_algorithm() -> str | None:
    """The algorithm DCLS_DEPTHWISE_ALGO forces, None for unset/``auto``; a bad value raises one line."""
    value = os.environ.get(ENV_ALGO, "").strip()
    if value in ("", "auto"):
        return None
    if value not in ALGORITHMS:
        raise AlgorithmError(f"{ENV_ALGO}={value!r} is invalid; allowed: auto, {', '.join(ALGORITHMS)}")
    return value


def cache_dir() -> Path | None:
    """Where the per-device JSON files go (None: memory only)."""
    override = os.environ.get(ENV_CACHE)
    if override is not None:
        return None if override.strip().lower() in ("", "0", "off", "none") else Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "dcls-vision"


def _versions() -> dict[str, str]:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"torch": torch.__version__, "triton": triton_version}


class AlgoSelector:
    """Measured choice per key for one device model; thread-safe; ``cache_file=None`` keeps it in memory."""

    def __init__(
        self, device_name: str, cache_file: Path | None, timer: Timer, versions: dict[str, str] | None = None
    ) -> None:
        self.device_name = device_name
        self.cache_file = cache_file
        self.timer = timer
        self.versions = versions if versions is not None else _versions()
        self.memory: dict[str, dict[str, Any]] = {}
        self._loaded = False
        self._lock = threading.Lock()

    def choose(self, key: str, names: Sequence[str], make: Callable[[str], Callable[[], object]]) -> str:
        """The cached or measured fastest of ``names``; ``make(name)`` builds the step the timer runs."""
        with self._lock:
            entry = self._lookup(key)
            if entry is not None and entry["algorithm"] in names:
                return entry["algorithm"]
            entry = self.measure(names, make)
            if entry["algorithm"] is None:
                raise AlgorithmError(f"no depthwise algorithm runs for {key}: {entry['errors']}")
            self.memory[key] = entry
            self._persist(key, entry)
            return entry["algorithm"]

    def measure(self, names: Sequence[str], make: Callable[[str], Callable[[], object]]) -> dict[str, Any]:
        """Time every candidate; one that raises is recorded under ``errors`` and skipped."""
        seconds: dict[str, float] = {}
        errors: dict[str, str] = {}
        for name in names:
            try:
                seconds[name] = float(self.timer(name, make(name)))
            except Exception as e:  # noqa: BLE001 -- any failing candidate is skipped, never chosen
                errors[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        best = min(seconds, key=seconds.__getitem__) if seconds else None
        return {"algorithm": best, "ms": {k: 1e3 * v for k, v in seconds.items()}, "errors": errors}

    def _lookup(self, key: str) -> dict[str, Any] | None:
        if key not in self.memory and not self._loaded:
            self._loaded = True
            self.memory.update({k: v for k, v in self._read().items() if k not in self.memory})
        return self.memory.get(key)

    def _read(self) -> dict[str, dict[str, Any]]:
        """Entries of the JSON file written by this torch/triton version ({} if absent, foreign or corrupt)."""
        if self.cache_file is None or not self.cache_file.is_file():
            return {}
        try:
            data = json.loads(self.cache_file.read_text())
        except (OSError, ValueError) as e:
            warnings.warn(f"ignoring unreadable depthwise algorithm cache {self.cache_file}: {e}", stacklevel=3)
            return {}
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("versions") != self.versions:
            return {}
        entries = data.get("entries")
        return (
            {k: v for k, v in entries.items() if isinstance(v, dict) and "algorithm" in v}
            if isinstance(entries, dict)
            else {}
        )

    def _persist(self, key: str, entry: dict[str, Any]) -> None:
        """Merge with the file (other processes may have added keys) and replace it atomically."""
        if self.cache_file is None:
            return
        entries = self._read()
        entries[key] = entry
        data = {"format": _FORMAT, "device": self.device_name, "versions": self.versions, "entries": entries}
        try:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.cache_file.parent, prefix=".tmp-", suffix=".json")
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f, indent=1, sort_keys=True)
                os.replace(tmp, self.cache_file)
            except BaseException:
                os.unlink(tmp)
                raise
        except OSError as e:
            warnings.warn(f"depthwise algorithm cache not written ({self.cache_file}): {e}", stacklevel=3)


def _file_name(device_name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", device_name).strip("_") or "device"


_SELECTORS: dict[str, AlgoSelector] = {}


def selector_for(device: torch.device) -> AlgoSelector:
    """The process-wide selector of ``device``'s model (one JSON file per GPU model)."""
    if device.type == "cuda":
        name, timer = torch.cuda.get_device_name(device), CudaEventTimer()
    else:
        name, timer = f"{device.type}", PerfCounterTimer()
    if name not in _SELECTORS:
        directory = cache_dir()
        path = None if directory is None else directory / "depthwise" / f"{_file_name(name)}.json"
        _SELECTORS[name] = AlgoSelector(name, path, timer)
    return _SELECTORS[name]
