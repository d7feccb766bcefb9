"""Reliability round 3 (issue 31), with real short runs on a Fashion-MNIST subset.

1. A failed save (a full disk: a real filled tmpfs where this user may mount one, else an injected ``OSError``;
   a quota, a read-only filesystem) ends in one line and exit code 4, the previous checkpoint intact; the same for
   eval.py's results files (tests/test_eval.py) and the downstream checkpoint hook.
2. Every checkpoint the trainer writes has a sha256 sidecar; at resume a torn or bit-flipped ``last.pth`` is
   skipped for the newest intact snapshot; none intact: one line, exit code 2.
3. ``trainer.resume_schedule=checkpoint|config`` for a run started with 1 epoch and continued with 2.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_train_reliability import EXTRA, ROOT, SMALL, _cfg

from dcls_vision.engine import ConfigError, train, validate_config
from dcls_vision.engine.checkpoint import load_checkpoint
from dcls_vision.engine.checkpointing import CheckpointError
from dcls_vision.utils import io as io_mod
from dcls_vision.utils.errors import EXIT_SAVE_FAILED, SaveError, UserError, run_cli

FIRST_OF_TWO = ("trainer.epochs=2", "trainer.max_epochs_per_run=1")
UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}


def _bytes(text: str) -> float:
    number, unit = text.split()
    return float(number) * UNITS[unit]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "last.pth")["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _temp_files(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))


# ----------------------------------------------------------------------------------- 1. a failed save
def test_save_error_is_one_line_and_exit_code_4(capsys):
    def fail():
        raise SaveError("writing /x/last.pth failed: [Errno 28] No space left on device; ...")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(fail)
    assert exit_info.value.code == EXIT_SAVE_FAILED == 4
    assert capsys.readouterr().err == "SaveError: writing /x/last.pth failed: [Errno 28] No space left on device; ...\n"


def _fail_checkpoint_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """Every torch.save into a checkpoint file writes 100 bytes, then fails with ``code`` (as a full disk does)."""
    real = io_mod._serialise

    def failing(obj, path, f):
        if not hasattr(f, "fileno"):  # not a file: the size the write needed, counted in memory
            return real(obj, path, f)
        f.write(b"\0" * 100)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(io_mod, "_serialise", failing)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_failed_checkpoint_write_is_one_line_and_the_run_resumes(tmp_path, monkeypatch, code):
    run_dir = tmp_path / "run"
    train(_cfg(run_dir, *FIRST_OF_TWO))
    _fail_checkpoint_writes(monkeypatch, code)
    with pytest.raises(SaveError) as err:
        train(_cfg(run_dir, "trainer.epochs=2"))
    line = str(err.value)
    assert "\n" not in line
    found = re.fullmatch(
        rf"writing {run_dir}/(best|last)\.pth failed: \[Errno {code}\] {os.strerror(code)}; "
        rf"{run_dir} has (\S+ \S+) free, the file needs (\S+ \S+); the previous (best|last)\.pth is intact; "
        rf"the run's newest intact checkpoint is {run_dir}/last\.pth \(end of epoch 1, global step 2\): "
        r"free space \(or fix the permissions\) and rerun the same command to resume from it",
        line,
    )
    assert found, line
    assert _bytes(found[3]) > 100  # the real checkpoint's size, not what was written before the failure
    assert _temp_files(run_dir) == []
    assert load_checkpoint(run_dir / "last.pth")["next_epoch"] == 1
    assert io_mod.checksum_problem(run_dir / "last.pth") is None
    monkeypatch.undo()
    assert train(_cfg(run_dir, "trainer.epochs=2"))["epochs_done"] == 2


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 4 MB tmpfs (root only); unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip("mounting a tmpfs needs root; test_failed_checkpoint_write_is_one_line... injects the error")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(mount: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of the filesystem's free space."""
    filler = mount / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, shutil.disk_usage(mount).free - leave))
        f.flush()
        os.fsync(f.fileno())
    return filler


def test_full_tmpfs_train_py_one_line_exit_4_then_resume(small_tmpfs, tmp_path):
    """A really full filesystem under train.py: one stderr line (no Hydra banner, no traceback), exit code 4,
    last.pth intact; after freeing space the same command ends bit-identical to an uninterrupted run."""
    run_dir = small_tmpfs / "run"  # the quickstart net at full size (SMALL alone): a checkpoint of ~0.5 MB
    cmd = [sys.executable, str(ROOT / "train.py"), *SMALL, *EXTRA, f"trainer.output_dir={run_dir}"]
    first = subprocess.run([*cmd, *FIRST_OF_TWO], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    filler = _fill(small_tmpfs, leave=64 * 1024)
    full = subprocess.run([*cmd, "trainer.epochs=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert full.returncode == 4, full.stderr[-2000:]
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1, full.stderr
    found = re.fullmatch(
        rf"SaveError: writing {run_dir}/(?:best|last)\.pth failed: \[Errno 28\] No space left on device; "
        rf"{run_dir} has (\S+ \S+) free, the file needs (\S+ \S+); the previous (?:best|last)\.pth is intact; "
        rf"the run's newest intact checkpoint is {run_dir}/last\.pth \(end of epoch 1, global step 2\): .*",
        lines[0],
    )
    assert found, lines[0]
    assert _bytes(found[2]) > _bytes(found[1])
    assert _temp_files(run_dir) == []
    assert load_checkpoint(run_dir / "last.pth")["next_epoch"] == 1
    filler.unlink()
    resumed = subprocess.run([*cmd, "trainer.epochs=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ref = tmp_path / "ref"
    with_full_net = _cfg(ref, "trainer.epochs=2", "model=dcls_quickstart")  # `model=` keeps the full-size net
    train(with_full_net)
    _assert_same_weights(run_dir, ref)


# ------------------------------------------------------------------------ 2. checksums, torn checkpoints
def _sidecars_verify(run_dir: Path) -> None:
    """Every checkpoint has a sidecar (and no sidecar is left without its checkpoint); ``sha256sum -c`` agrees."""
    pths = sorted(p.name for p in run_dir.glob("*.pth"))
    assert sorted(p.name.removesuffix(".sha256") for p in run_dir.glob("*.pth.sha256")) == pths
    for name in pths:
        check = subprocess.run(["sha256sum", "-c", f"{name}.sha256"], cwd=run_dir, capture_output=True, text=True)
        assert check.returncode == 0 and check.stdout == f"{name}: OK\n", check.stdout + check.stderr


def test_truncated_last_pth_is_skipped_for_the_intact_epoch_file(tmp_path):
    """A half-size copy of last.pth without its sidecar (an interrupted ``cp``): it does not load, so the run
    resumes from epoch_0000.pth and ends bit-identical to an uninterrupted run."""
    run_dir, ref = tmp_path / "run", tmp_path / "ref"
    train(_cfg(run_dir, *FIRST_OF_TWO))
    last = run_dir / "last.pth"
    torn = run_dir / "torn"
    torn.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    os.replace(torn, last)  # a new inode: epoch_0000.pth (the old one) stays intact
    (run_dir / "last.pth.sha256").unlink(missing_ok=True)  # a copy made without its sidecar
    assert train(_cfg(run_dir, "trainer.epochs=2"))["epochs_done"] == 2
    log = (run_dir / "log.txt").read_text()
    # torch's reader fails on the torn zip (which error depends on where the cut falls)
    assert re.search(rf"^checkpoint {last} cannot be loaded \((RuntimeError|OSError): .+\), skipped$", log, re.M), log
    assert (
        f"resuming from {run_dir}/epoch_0000.pth, the newest intact snapshot (end of epoch 1, global step 2)\n" in log
    )
    train(_cfg(ref, "trainer.epochs=2"))
    _assert_same_weights(run_dir, ref)
    _sidecars_verify(run_dir)


def _tensors(tree):
    if torch.is_tensor(tree):
        yield tree
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _tensors(value)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _tensors(value)


def _flip_a_weight_bit(path: Path) -> None:
    """Flip one bit inside a tensor's bytes, in place (every hard link of the file sees it)."""
    data = bytearray(path.read_bytes())
    offset = len(data) // 2
    data[offset] ^= 0x10
    with open(path, "r+b") as f:
        f.write(data)


def test_bit_flipped_last_pth_fails_its_checksum_and_the_older_epoch_file_is_used(tmp_path):
    """The flip loads silently (torch does not notice); the checksum does. last.pth and epoch_0001.pth are one
    inode, so both are damaged: the run goes back to epoch_0000.pth and ends as the uninterrupted run."""
    run_dir, ref = tmp_path / "run", tmp_path / "ref"
    train(_cfg(run_dir, "trainer.epochs=3", "trainer.max_epochs_per_run=2"))
    last = run_dir / "last.pth"
    assert last.stat().st_ino == (run_dir / "epoch_0001.pth").stat().st_ino
    before = load_checkpoint(last)
    _flip_a_weight_bit(last)
    after = load_checkpoint(last)  # loads without complaint: only the checksum catches it
    assert after["next_epoch"] == 2
    changed = [not torch.equal(a, b) for a, b in zip(_tensors(before), _tensors(after), strict=True)]
    assert sum(changed) == 1  # one tensor (a weight or an optimizer moment) silently differs
    assert train(_cfg(run_dir, "trainer.epochs=3"))["epochs_done"] == 3
    log = (run_dir / "log.txt").read_text()
    assert re.search(
        rf"^checkpoint {last} fails its checksum \(sha256 [0-9a-f]{{12}}\.\.\. differs from [0-9a-f]{{12}}\.\.\. "
        r"in last\.pth\.sha256\), skipped$",
        log,
        flags=re.M,
    ), log
    assert f"checkpoint {run_dir}/epoch_0001.pth is the same file as last.pth (a hard link), skipped\n" in log
    assert f"resuming from {run_dir}/epoch_0000.pth, the newest intact snapshot (end of epoch 1, global step 2)" in log
    assert "config differs" not in log  # the same command: nothing to report
    train(_cfg(ref, "trainer.epochs=3"))
    _assert_same_weights(run_dir, ref)
    _sidecars_verify(run_dir)


def test_no_intact_checkpoint_is_one_line(tmp_path):
    run_dir = tmp_path / "run"
    train(_cfg(run_dir, *FIRST_OF_TWO))  # last.pth and epoch_0000.pth: one inode
    _flip_a_weight_bit(run_dir / "last.pth")
    with pytest.raises(CheckpointError) as err:
        train(_cfg(run_dir, "trainer.epochs=2"))
    assert str(err.value) == (
        f"no intact checkpoint to resume from: checkpoint {run_dir}/last.pth "
        + re.search(r"fails its checksum \(.*?\)", str(err.value))[0]
        + f", skipped; checkpoint {run_dir}/epoch_0000.pth is the same file as last.pth (a hard link), skipped; "
        "allowed: move the damaged files away (or use another trainer.output_dir) to start afresh, or restore a copy"
    )
    assert isinstance(err.value, UserError)  # exit code 2 in train.py


# ----------------------------------------------------------------------------- 3. resume_schedule
def _lrs(run_dir: Path) -> dict[int, float]:
    return {r["epoch"]: r["lr"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}


def test_resume_schedule_checkpoint_and_config_for_1_then_2_epochs(tmp_path):
    """Started with trainer.epochs=1, continued with 2: ``checkpoint`` (default) keeps the 1-epoch schedule (epoch 2
    at sched.min_lr), ``config`` follows the 2-epoch one from the resumed step (the uninterrupted 2-epoch run's LR);
    both name the changed key and what they do."""
    one, ref = tmp_path / "one", tmp_path / "ref"
    train(_cfg(one, "trainer.epochs=1"))
    copy = tmp_path / "copy"
    shutil.copytree(one, copy)
    train(_cfg(ref, "trainer.epochs=2"))

    train(_cfg(one, "trainer.epochs=2"))
    log = (one / "log.txt").read_text()
    assert "config differs from the checkpoint's: trainer.epochs 1 -> 2\n" in log
    assert (
        "  trainer.resume_schedule=checkpoint: the LR schedule continues as the checkpoint's, not this config's "
        "(t_initial 2 -> 4); lr now 1.000e-05 at global step 2; pass trainer.resume_schedule=config to rebuild it "
        "from this config at this step\n"
    ) in log
    assert _lrs(one)[1] == pytest.approx(1e-5)  # the 1-epoch schedule's end: sched.min_lr

    train(_cfg(copy, "trainer.epochs=2", "trainer.resume_schedule=config"))
    log = (copy / "log.txt").read_text()
    assert "config differs from the checkpoint's: trainer.epochs 1 -> 2\n" in log
    ref_lr = _lrs(ref)
    assert (
        "  trainer.resume_schedule=config: the LR schedule is rebuilt from this config (t_initial 2 -> 4) and "
        f"continues at global step 2; lr now {ref_lr[0]:.3e}\n"
    ) in log
    assert _lrs(copy)[1] == ref_lr[1] and ref_lr[1] < ref_lr[0]
    state = load_checkpoint(copy / "last.pth")
    assert state["scheduler"]["t_initial"] == 4 and state["config"]["trainer"]["resume_schedule"] == "config"


def test_resume_schedule_bad_value_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^trainer\.resume_schedule='later' is not supported; allowed: "):
        validate_config(_cfg(tmp_path, "trainer.resume_schedule=later"))


# --------------------------------------------------------------------------- 1. downstream checkpoint hook
def test_downstream_checkpoint_hook_failed_write_is_one_line_and_leaves_no_torn_file(tmp_path, monkeypatch):
    pytest.importorskip("mmengine")
    from mmengine.fileio.backends.local_backend import LocalBackend
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from dcls_vision.downstream.hooks import DclsSafeCheckpointHook

    class Toy(BaseModel):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 1)

        def forward(self, inputs, data_samples=None, mode="tensor"):
            out = self.lin(inputs)
            return {"loss": out.pow(2).mean()} if mode == "loss" else out

    data = [{"inputs": torch.randn(2)} for _ in range(8)]
    runner = Runner(
        model=Toy(),
        work_dir=str(tmp_path / "work"),
        train_dataloader=torch.utils.data.DataLoader(data, batch_size=2),
        optim_wrapper={"optimizer": {"type": "SGD", "lr": 0.01}},
        train_cfg={"by_epoch": False, "max_iters": 4},
        default_hooks={"checkpoint": {"type": "CheckpointHook", "interval": 2, "by_epoch": False}},
        custom_hooks=[DclsSafeCheckpointHook()],
        default_scope="mmengine",
    )
    work = tmp_path / "work"  # made by the Runner
    (work / ".iter_9.pth.123.tmp").write_bytes(b"torn")  # left by a run killed inside a save
    real_put = LocalBackend.put

    def put(self, obj, filepath):
        if "iter_4" in str(filepath):  # the second checkpoint: half written, then the disk is full
            with open(filepath, "wb") as f:
                f.write(obj[: len(obj) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_put(self, obj, filepath)

    monkeypatch.setattr(LocalBackend, "put", put)
    with pytest.raises(SaveError) as err:
        runner.train()
    assert re.fullmatch(
        rf"writing {work}/iter_4\.pth failed: \[Errno 28\] No space left on device; {work} has \S+ \S+ free; "
        rf"no previous iter_4\.pth was there; the previous checkpoint {work}/iter_2\.pth \(iter_2, \S+ \S+\) is "
        r"intact: free space \(or fix the permissions\) and rerun with --resume to continue from it",
        str(err.value),
    ), str(err.value)
    assert sorted(p.name for p in work.iterdir() if p.suffix in (".pth", ".tmp")) == ["iter_2.pth"]
    assert load_checkpoint(work / "iter_2.pth")["meta"]["iter"] == 2


def test_schedule_changes_name_the_part_of_a_grouped_scheduler():
    """optim.positions runs two schedulers (weights, positions): a change is named per part and field."""
    from dcls_vision.engine.resume_config import schedule_changes

    saved = {"weights": {"t_initial": 1, "lr_min": 0.0}, "positions": {"t_initial": 1, "lr_min": 0.0}}
    rebuilt = {"weights": {"t_initial": 2, "lr_min": 0.0}, "positions": {"t_initial": 2, "lr_min": 0.0}}
    assert schedule_changes(saved, rebuilt) == {"weights.t_initial": (1, 2), "positions.t_initial": (1, 2)}
    assert schedule_changes({"t_initial": 1}, {"t_initial": 2}) == {"t_initial": (1, 2)}
    assert schedule_changes({"_step_count": 2, "total_steps": 1}, {"_step_count": 1, "total_steps": 2}) == {
        "total_steps": (1, 2)
    }  # torch's private counters are not settings
