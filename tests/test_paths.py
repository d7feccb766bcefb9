"""configs/ is found through the package (utils.paths.config_dir), also in a non-editable install where no
repository is around: ``pip install --target`` a copy of the project, then import it from another directory."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from dcls_vision.utils.paths import config_dir

ROOT = Path(__file__).resolve().parents[1]


def test_config_dir_in_the_checkout_is_the_repository_configs():
    assert config_dir() == (ROOT / "configs").resolve()
    assert (config_dir() / "config.yaml").is_file()


def test_config_dir_in_a_non_editable_install(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src)
    for name in ("dcls_vision", "configs"):  # dcls_vision/configs stays a symlink, as in git
        shutil.copytree(ROOT / name, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target)]
    proc = subprocess.run([*pip, str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shutil.rmtree(src)  # nothing may point back at the source tree
    code = (
        "import dcls_vision; from dcls_vision.utils.paths import config_dir; d = config_dir(); "
        "print(dcls_vision.__file__); print(d); print(sorted(p.name for p in d.iterdir()))"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=elsewhere,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    package_file, found, names = out.stdout.splitlines()
    assert Path(package_file).is_relative_to(target) and Path(found).is_relative_to(target)
    assert not Path(found).is_symlink() and (Path(found) / "config.yaml").is_file()
    assert {"config.yaml", "eval.yaml", "experiment", "model", "downstream"} <= set(ast.literal_eval(names))
    shipped = {p.relative_to(found) for p in Path(found).rglob("*") if p.is_file() and p.suffix in (".yaml", ".py")}
    assert shipped == {p.relative_to(ROOT / "configs") for p in (ROOT / "configs").rglob("*") if p.is_file()}


def test_fashion_folder_default_data_config_comes_from_the_package_configs():
    """``python -m dcls_vision.robustness.fashion_folder`` without --checkpoint: configs/data/fashion_mnist.yaml."""
    import argparse

    from dcls_vision.robustness.fashion_folder import _data_cfg

    cfg = _data_cfg(argparse.Namespace(checkpoint=None, data_root="somewhere", val_subset=3))
    assert cfg["name"] == "fashion_mnist" and cfg["root"] == "somewhere" and cfg["val_subset"] == 3
