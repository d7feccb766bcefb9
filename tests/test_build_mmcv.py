"""tools/build_mmcv.sh with a tiny real sdist instead of mmcv's 35-minute compile.

The sdist is a minimal setuptools package named mmcv 2.1.0 whose setup.py records the environment its wheel
build sees (and can last until the test lets it finish, to make two runs overlap). Every run is offline
(``PIP_NO_INDEX``, find-links = the sdist's folder), uses its own cache (``DCLS_CACHE``), installs into a target
folder (``DCLS_MMCV_TARGET``) and runs in a venv over the system site-packages, so the real mmcv and setuptools
are never replaced.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "build_mmcv.sh"
MARK = "FAKE_MMCV_FOR_TESTS"
FAKE_SETUP = f'''
import json, os, sys, time
from pkg_resources import parse_version  # as mmcv 2.1.0's setup.py: needs setuptools < 81
from setuptools import setup

CXX_FLAGS = ["-std=c++17"]  # build_mmcv.sh patches this to c++20, as in mmcv's setup.py
if "bdist_wheel" in sys.argv:  # one line per wheel build (not per metadata query)
    keys = ("CUDA_VISIBLE_DEVICES", "FORCE_CUDA", "MMCV_WITH_OPS", "TORCH_CUDA_ARCH_LIST")
    seen = {{**{{k: os.environ.get(k) for k in keys}}, "cxx": CXX_FLAGS[0], "pid": os.getpid()}}
    if os.environ.get("FAKE_MMCV_PROBE_CUDA"):  # what mmcv's setup.py asks (on GPU machines; torch is slow to load)
        import torch

        seen["cuda_available"] = torch.cuda.is_available()
    with open(os.environ["FAKE_MMCV_RECORD"], "a") as f:
        f.write(json.dumps(seen) + "\\n")
    hold = os.environ.get("FAKE_MMCV_HOLD")  # the build lasts until the test creates this file
    for _ in range(3000 if hold else 0):
        if os.path.exists(hold):
            break
        time.sleep(0.1)
setup(name="mmcv", version="2.1.0", packages=["mmcv", "mmcv.ops"], description="{MARK}")
'''


PYPROJECT = '[build-system]\nrequires = ["setuptools>=40.8.0"]\nbuild-backend = "setuptools.build_meta"\n'


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def make_sdist(folder: Path, top: str = "mmcv-2.1.0") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "mmcv-2.1.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        _add(tar, f"{top}/setup.py", FAKE_SETUP)
        _add(tar, f"{top}/PKG-INFO", "Metadata-Version: 2.1\nName: mmcv\nVersion: 2.1.0\n")
        # mmcv's sdist has no pyproject.toml, which this pip (23.x) prepares without build isolation; newer pips
        # prepare it in an isolated env (newest setuptools, no pkg_resources). This file makes pip 23 do the same.
        _add(tar, f"{top}/pyproject.toml", PYPROJECT)
        _add(tar, f"{top}/mmcv/__init__.py", f"__version__ = '2.1.0'  # {MARK}\n")
        _add(tar, f"{top}/mmcv/ops/__init__.py", "")
    return path


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv over the system site-packages (torch, pip, setuptools): whatever pip installs lands in it."""
    path = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(path)], check=True)
    return path


@pytest.fixture
def env(venv, tmp_path) -> dict[str, str]:
    sdist = make_sdist(tmp_path / "sdists")
    (tmp_path / "record.jsonl").touch()
    out = {k: v for k, v in os.environ.items() if not k.startswith(("DCLS_", "PIP_", "TORCH_CUDA", "FORCE_CUDA"))}
    out.update(
        PATH=f"{venv / 'bin'}:{os.environ['PATH']}",
        VIRTUAL_ENV=str(venv),
        PIP_NO_INDEX="1",
        PIP_FIND_LINKS=str(sdist.parent),
        DCLS_CACHE=str(tmp_path / "cache"),
        DCLS_MMCV_SDIST=str(sdist),
        DCLS_MMCV_TARGET=str(tmp_path / "target"),
        FAKE_MMCV_RECORD=str(tmp_path / "record.jsonl"),
        DCLS_MMCV_CUDA="0",
        MAX_JOBS="1",
    )
    return out


def run(env: dict[str, str], *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300, **kw)


def records(env: dict[str, str]) -> list[dict]:
    return [json.loads(line) for line in Path(env["FAKE_MMCV_RECORD"]).read_text().splitlines()]


def key(env: dict[str, str]) -> str:
    proc = run(env, "--print-key")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def installed(target: str | Path) -> str:
    """The build key marked in the mmcv installed in ``target`` ('' if none)."""
    marker = Path(target) / "mmcv" / ".dcls_build_key"
    assert MARK in (Path(target) / "mmcv" / "__init__.py").read_text()
    return marker.read_text().strip()


def assert_site_packages_untouched() -> None:
    init = Path(sysconfig.get_paths()["purelib"]) / "mmcv" / "__init__.py"
    assert not (init.is_file() and MARK in init.read_text()), "the test mmcv replaced the real one"


def source(env: dict[str, str], *lines: str) -> subprocess.CompletedProcess:
    """Run bash lines after `source tools/build_mmcv.sh` (functions only, main does not run; the test env keeps
    a script that would run anyway offline and away from the real cache)."""
    script = "\n".join([f"source {SCRIPT}", *lines])
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)


# ------------------------------------------------------------------------------------------------- cache key
def test_cpu_key_is_unchanged_and_cuda_keys_carry_the_arch_list(env):
    proc = source(
        env,
        "cache_key 2.14.1 none 311",
        'cache_key 2.14.1 13.0 311 "8.0;9.0+PTX"',
        'cache_key 2.14.1 13.0 311 "9.0"',
        'cache_key 2.14.1 13.0 311 "8.0 9.0+PTX"',
    )
    assert proc.returncode == 0, proc.stderr
    cpu, cuda_89, cuda_9, spaces = proc.stdout.split()
    assert cpu == "mmcv-2.1.0_torch-2.14.1_cpu_py311"  # the key of wheels cached before archs were keyed
    assert cuda_89 == spaces == "mmcv-2.1.0_torch-2.14.1_cu13.0_arch-8.0-9.0+PTX_py311"
    assert cuda_9 == "mmcv-2.1.0_torch-2.14.1_cu13.0_arch-9.0_py311"
    import torch

    torch_v = torch.__version__.split("+")[0]
    py = f"{sys.version_info.major}{sys.version_info.minor}"
    assert key(env) == f"mmcv-2.1.0_torch-{torch_v}_cpu_py{py}"  # DCLS_MMCV_CUDA=0 on this machine
    if torch.version.cuda and shutil.which("nvcc"):  # a CUDA torch: the forced CUDA key has the arch list
        forced = {**env, "DCLS_MMCV_CUDA": "1", "TORCH_CUDA_ARCH_LIST": "8.0;9.0"}
        assert key(forced) == f"mmcv-2.1.0_torch-{torch_v}_cu{torch.version.cuda}_arch-8.0-9.0_py{py}"
        if torch.cuda.is_available():  # auto: the visible GPUs' archs, the highest +PTX
            caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
            archs = "-".join(f"{a}.{b}" for a, b in caps) + "+PTX"
            auto = {**env, "DCLS_MMCV_CUDA": "auto"}
            assert key(auto) == f"mmcv-2.1.0_torch-{torch_v}_cu{torch.version.cuda}_arch-{archs}_py{py}"
        else:
            proc = run({**env, "DCLS_MMCV_CUDA": "1"}, "--print-key")
            assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
            assert "needs TORCH_CUDA_ARCH_LIST" in proc.stderr


def test_bad_arch_list_and_sdist_are_one_line_errors(env, tmp_path):
    proc = source(env, 'cache_key 2.14.1 13.0 311 "8.0;9.0\\$(touch x)"')
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "TORCH_CUDA_ARCH_LIST='8.0;9.0$(touch x)' is invalid; allowed:" in proc.stderr
    missing = run({**env, "DCLS_MMCV_SDIST": str(tmp_path / "nope.tar.gz")})
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1, missing.stderr
    assert f"DCLS_MMCV_SDIST='{tmp_path / 'nope.tar.gz'}' is not a file; allowed:" in missing.stderr
    other = make_sdist(tmp_path / "other", top="mmcv-2.2.0")
    wrong = run({**env, "DCLS_MMCV_SDIST": str(other)})
    assert wrong.returncode == 2 and "is not an mmcv 2.1.0 sdist (top dir 'mmcv-2.2.0')" in wrong.stderr
    assert records(env) == []


# -------------------------------------------------------------------------------------------- build / install
def test_cpu_build_hides_gpus_caches_and_installs_into_the_target(env):
    import torch

    gpu = torch.cuda.is_available()
    env = {**env, "CUDA_VISIBLE_DEVICES": "0", "FORCE_CUDA": "1"}  # a GPU node's environment
    proc = run({**env, "FAKE_MMCV_PROBE_CUDA": "1"} if gpu else env)
    assert proc.returncode == 0, proc.stderr
    (rec,) = records(env)
    assert rec.get("cuda_available", False) is False  # recorded where a GPU is visible to the test
    assert rec["CUDA_VISIBLE_DEVICES"] == "" and rec["FORCE_CUDA"] == "0"  # mmcv sees no GPU: CPU ops only
    assert rec["MMCV_WITH_OPS"] == "1" and rec["cxx"] == "-std=c++20"
    k = key(env)
    assert installed(env["DCLS_MMCV_TARGET"]) == k
    assert [p.name for p in (Path(env["DCLS_CACHE"]) / "wheels" / k).iterdir()] == ["mmcv-2.1.0-py3-none-any.whl"]
    assert sorted(p.name for p in (Path(env["DCLS_CACHE"]) / "wheels").iterdir()) == [k, f"{k}.lock"]  # no stage
    again = run(env)  # the installed mmcv carries the key: nothing to do
    assert again.returncode == 0 and again.stdout == "" and len(records(env)) == 1
    other_target = {**env, "DCLS_MMCV_TARGET": env["DCLS_MMCV_TARGET"] + "2"}
    reuse = run(other_target)  # a new environment reuses the cached wheel
    assert reuse.returncode == 0 and "building" not in reuse.stderr and len(records(env)) == 1
    assert installed(other_target["DCLS_MMCV_TARGET"]) == k
    assert_site_packages_untouched()


def test_download_uses_the_installed_setuptools(env):
    """Without DCLS_MMCV_SDIST pip fetches the sdist and prepares its metadata with the installed setuptools < 81:
    an isolated build env would get the newest setuptools (no pkg_resources) or, offline as here, none at all."""
    env = {k: v for k, v in env.items() if k != "DCLS_MMCV_SDIST"}
    proc = run(env)
    assert proc.returncode == 0, proc.stderr
    assert len(records(env)) == 1 and installed(env["DCLS_MMCV_TARGET"]) == key(env)


def test_concurrent_builds_compile_once(env, tmp_path):
    hold = tmp_path / "release"
    env = {**env, "FAKE_MMCV_HOLD": str(hold), "DCLS_MMCV_CUDA": "auto"}
    second = {**env, "DCLS_MMCV_TARGET": env["DCLS_MMCV_TARGET"] + "2"}
    logs = [tmp_path / "first.err", tmp_path / "second.err"]
    with logs[0].open("w") as err1, logs[1].open("w") as err2:
        first = subprocess.Popen(["bash", str(SCRIPT)], env=env, stdout=subprocess.DEVNULL, stderr=err1)
        try:
            assert _wait(lambda: records(env) or first.poll() is not None) and records(env), logs[0].read_text()
            other = subprocess.Popen(["bash", str(SCRIPT)], env=second, stdout=subprocess.DEVNULL, stderr=err2)
            assert _wait(lambda: "waiting for another build" in logs[1].read_text() or other.poll() is not None)
        finally:
            hold.touch()  # the first build finishes; the second one takes the lock and finds the wheel cached
        assert first.wait(timeout=300) == 0, logs[0].read_text()
        assert other.wait(timeout=300) == 0, logs[1].read_text()
    assert "waiting for another build" in logs[1].read_text() and "building" not in logs[1].read_text()
    assert len(records(env)) == 1  # one compile for both
    assert installed(env["DCLS_MMCV_TARGET"]) == installed(second["DCLS_MMCV_TARGET"]) == key(env)


def _wait(condition, timeout: float = 240) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _read_only(path: Path, env: dict[str, str]) -> list[str]:
    """A command prefix that runs the script with ``path`` read-only (a private ro bind mount for root)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        for p in [path, *path.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        return ["bash", str(SCRIPT)]
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        pytest.skip("root without mount namespaces: cannot make a read-only cache")
    mount = f'mount --bind "{path}" "{path}" && mount -o remount,ro,bind "{path}" && exec bash "{SCRIPT}"'
    return ["unshare", "-m", "bash", "-c", mount]


def test_read_only_cache_still_installs(env, tmp_path):
    cache = Path(env["DCLS_CACHE"])
    proc = subprocess.run(_read_only(cache, env), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("build_mmcv.sh: warning")]
    assert warnings == [
        f"build_mmcv.sh: warning: cannot write the cache {cache}/wheels/{key(env)}; installing the built wheel uncached"
    ]
    assert installed(env["DCLS_MMCV_TARGET"]) == key(env) and len(records(env)) == 1
    assert list(cache.iterdir()) == []
    # a read-only cache that holds the wheel (a shared cache filled elsewhere) is used as is
    filled = {**env, "DCLS_CACHE": str(tmp_path / "filled"), "DCLS_MMCV_TARGET": str(tmp_path / "t2")}
    assert run(filled).returncode == 0 and len(records(env)) == 2
    shutil.rmtree(filled["DCLS_MMCV_TARGET"])
    proc = subprocess.run(
        _read_only(Path(filled["DCLS_CACHE"]), filled), env=filled, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0 and "build_mmcv.sh: warning" not in proc.stderr, proc.stderr
    assert len(records(env)) == 2 and installed(filled["DCLS_MMCV_TARGET"]) == key(env)
    assert_site_packages_untouched()
