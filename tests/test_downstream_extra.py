"""Without the OpenMMLab extra, the downstream entry points stop with one line naming tools/install_mm.sh.

The extra's absence is real for the child process: ``sys.modules[name] = None`` makes every ``import name`` raise
ModuleNotFoundError, as on a machine without it, whether or not this machine has it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_SEG = ROOT / "configs/downstream/tiny/upernet_tiny-dcls-gauss_ade-shapes.py"
WITHOUT = """import runpy, sys
sys.modules[sys.argv[1]] = None  # as if not installed
target, sys.argv = sys.argv[2], sys.argv[2:]
if target.endswith(".py"):
    runpy.run_path(target, run_name="__main__")
else:
    runpy.run_module(target, run_name="__main__", alter_sys=True)
"""


def _without(module: str, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-c", WITHOUT, module, *argv]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("missing", ["mmcv", "mmengine"])
def test_entry_points_name_the_installer_when_the_extra_is_missing(tmp_path, missing):
    from PIL import Image

    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(image)
    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"")
    for argv, prog in (
        (["dcls_vision.downstream.test", str(TINY_SEG), str(ckpt)], "python -m dcls_vision.downstream.test"),
        (
            ["dcls_vision.downstream.demo", str(TINY_SEG), str(ckpt), str(image), "--out", str(tmp_path / "o")],
            "python -m dcls_vision.downstream.demo",
        ),
        ([str(ROOT / "tools" / "downstream_flops.py"), str(TINY_SEG)], "downstream_flops.py"),
    ):
        proc = _without(missing, *argv)
        assert proc.returncode == 2, (argv, proc.stderr[-2000:])
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr[-2000:]
        found = re.match(
            rf"{re.escape(prog)}: error: the OpenMMLab extra is not installed \(no module '([\w.]+)'\)", lines[0]
        )
        assert found, lines[0]
        # the blocked package, or one that this machine really lacks and the entry point needed first
        root = found.group(1).split(".")[0]
        assert root == missing or importlib.util.find_spec(root) is None, lines[0]
        assert "bash tools/install_mm.sh" in lines[0]
