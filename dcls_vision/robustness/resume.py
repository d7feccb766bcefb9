"""Resume an interrupted evaluation from the ``results.json`` it wrote after every split.

A saved result is reused only when it was made by the same command: the ``resume_key`` stored with it (checkpoint
path, size and mtime, weights, classes, amp, channels_last, benchmarks, and per benchmark its root, effective
crop_pct, corruptions and severities) equals this run's. Anything else is said in one line and re-evaluated; the
older files are moved to ``superseded-<time>/`` rather than overwritten.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dcls_vision.data.paths import resolve_path
from dcls_vision.models.hub import hub_weights_file, is_hub_source

from .benchmarks import BENCHMARKS, Benchmark
from .config import as_list

RESULT_FILES = ("results.json", "results.csv", "table.md")


def resume_key(
    cfg: DictConfig,
    checkpoint: Path,
    weights: str,
    amp: torch.dtype | None,
    channels_last: bool,
    benchmarks: Sequence[str],
    crop_pct: Callable[[Benchmark], float],
) -> dict[str, Any]:
    """What makes saved results valid for this command: eval.py's ``cfg`` and the settings it resolved to
    (``weights`` loaded, ``amp``, ``channels_last``, the effective ``crop_pct`` of each benchmark)."""
    hub = is_hub_source(checkpoint)
    weights_file = hub_weights_file(checkpoint) if hub else checkpoint  # a Hub folder: its weights file
    st = weights_file.stat() if weights_file is not None and weights_file.is_file() else None
    key: dict[str, Any] = {
        "checkpoint": str(checkpoint) if hub else str(checkpoint.resolve()),
        "checkpoint_size": None if st is None else st.st_size,
        "checkpoint_mtime_ns": None if st is None else st.st_mtime_ns,
        "weights": weights,
        "classes": cfg.get("classes"),
        "amp": str(amp),
        "channels_last": channels_last,
        "benchmarks": list(benchmarks),
    }
    given = {k: v for k, v in OmegaConf.to_container(cfg.data).items() if v is not None}
    if given:  # data.* overrides change every figure
        key["data"] = given
    if cfg.model.name:  # weights without a run config: the architecture they were loaded into
        key["model"] = {"name": str(cfg.model.name), "kwargs": OmegaConf.to_container(cfg.model.kwargs)}
    for k in benchmarks:
        section = cfg.get(k, {})
        root = section.get("root")
        key[f"{k}.root"] = None if root in (None, "") else str(resolve_path(str(root), f"{k}.root").resolve())
        key[f"{k}.crop_pct"] = crop_pct(BENCHMARKS[k])
        if BENCHMARKS[k].corrupted:
            key[f"{k}.corruptions"] = [str(c) for c in as_list(section.get("corruptions"), f"{k}.corruptions")]
            key[f"{k}.severities"] = [int(v) for v in as_list(section.get("severities"), f"{k}.severities")]
    return key


def read_results(out_dir: Path) -> dict[str, Any] | None:
    """The ``results.json`` in ``out_dir`` if it is a readable eval result with a resume key, else None."""
    path = out_dir / "results.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("resume_key"), dict) else None


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two resume keys (missing on one side counts as changed)."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def supersede(out_dir: Path) -> Path:
    """Move the result files of an earlier, different command out of the way (kept, not overwritten)."""
    dest = out_dir / f"superseded-{time.strftime('%Y%m%d-%H%M%S')}"
    dest.mkdir(exist_ok=True)
    for name in RESULT_FILES:
        if (out_dir / name).is_file():
            (out_dir / name).replace(dest / name)
    return dest


def unfinished_sibling(parent: Path, exclude: Path, key: dict[str, Any]) -> tuple[Path | None, str | None]:
    """The newest unfinished run in ``parent`` (the default ``outputs/eval/``) for the same checkpoint.

    Returns (its dir, None) when its resume key equals ``key``, or (None, a one-line note naming what changed) when
    the newest unfinished run of this checkpoint came from a different command, or (None, None) when there is none.
    """
    if not parent.is_dir():
        return None, None
    found = []
    for d in parent.iterdir():
        if d.is_dir() and d.resolve() != exclude.resolve():
            saved = read_results(d)
            if saved and not saved.get("complete") and saved["resume_key"].get("checkpoint") == key["checkpoint"]:
                found.append(((d / "results.json").stat().st_mtime, d, saved))
    if not found:
        return None, None
    _, d, saved = max(found, key=lambda t: t[0])
    changed = changed_fields(saved["resume_key"], key)
    if not changed:
        return d, None
    return None, (
        f"the unfinished evaluation in {d} was another command (changed: {', '.join(changed)}); "
        f"not resuming it, evaluating afresh"
    )
