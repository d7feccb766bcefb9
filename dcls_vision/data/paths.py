"""Path resolution that behaves the same inside and outside a Hydra run (which may chdir)."""

from __future__ import annotations

import os
from pathlib import Path


def original_cwd() -> Path:
    """The directory the program was started from (Hydra's original cwd when a Hydra run is active)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return Path(HydraConfig.get().runtime.cwd)
    except (ImportError, ValueError):
        pass
    return Path(os.getcwd())


def resolve_path(path: str | os.PathLike[str], key: str) -> Path:
    """Expand ``~``/env vars; relative paths are taken against the original cwd, not Hydra's run dir."""
    if path is None or str(path) in ("", "???"):
        raise ValueError(f"{key} is not set; give a path, e.g. {key}=/path/to/data")
    p = Path(os.path.expandvars(os.path.expanduser(str(path))))
    return p if p.is_absolute() else original_cwd() / p
