"""Generate an embedded data set once into ``data.root``, atomically (the audio words and the spiking digits)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

DONE = "embedded.json"  # written last, holding the settings: its presence with equal settings = a complete set


def is_generated(root: Path, settings: dict[str, Any]) -> bool:
    """True when ``root`` holds a complete set made with exactly these settings."""
    done = root / DONE
    return done.is_file() and json.loads(done.read_text()) == settings


def generate_once(
    root: Path, settings: dict[str, Any], write: Callable[[Path], None], error: type[Exception], what: str
) -> Path:
    """Run ``write(folder)`` into a temporary sibling of ``root`` and rename it to ``root``, unless done already.

    An interrupted run leaves nothing half-made; a set made with other settings is replaced; a non-empty ``root``
    that is not an embedded set (the user's own data) is never touched: ``error`` says so in one line.
    """
    if is_generated(root, settings):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    try:
        write(tmp)
        (tmp / DONE).write_text(json.dumps(settings))
        tmp.chmod(0o755)  # mkdtemp makes it 0700
        if is_generated(root, settings):
            return root  # another process (a DDP rank) finished the same set meanwhile: keep its copy
        if root.exists():
            if not (root / DONE).is_file() and any(root.iterdir()):
                raise error(f"data.root={root} exists and is not an {what}; choose an empty folder")
            shutil.rmtree(root)  # an embedded set made with other settings
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root
