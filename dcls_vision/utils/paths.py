"""Where the project's files are, found through the installed package rather than parent-directory counting.

``configs/`` ships inside the package (``dcls_vision/configs`` is a symlink to the repository's ``configs/``
and is package data in ``pyproject.toml``), so the same call works from a checkout, an editable install and a
wheel/``pip install .`` where no repository is around.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def config_dir() -> Path:
    """The Hydra/mmengine ``configs/`` directory (holds ``config.yaml``) as a real filesystem path."""
    path = Path(str(files("dcls_vision") / "configs"))
    if not (path / "config.yaml").is_file():
        raise FileNotFoundError(
            f"configs/config.yaml not found under {path}: this dcls_vision install lacks its configs; "
            "reinstall with `pip install .` (it ships them as package data)"
        )
    return path.resolve()


__all__ = ["config_dir"]
