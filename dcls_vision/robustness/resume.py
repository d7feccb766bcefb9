"""Resume an interrupted evaluation from the ``results.json`` it wrote after every split.

A saved result is reused only when it was made by the same command: the ``resume_key`` stored with it (checkpoint
path, size and mtime, weights, classes, amp, channels_last, benchmarks, and per benchmark its root, effective
crop_pct, corruptions and severities) equals this run's. Anything else is said in one line and re-evaluated; the
older files are moved to ``superseded-<time>/`` rather than overwritten.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULT_FILES = ("results.json", "results.csv", "table.md")


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
