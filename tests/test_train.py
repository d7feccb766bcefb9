"""End-to-end trainer runs on a tiny real Fashion-MNIST subset: outputs, resume equivalence, SIGKILL, NaN, DDP, CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dcls_vision.engine import NonFiniteLossError, train
from dcls_vision.engine import builders as builders_mod
from dcls_vision.engine import trainer as trainer_mod
from dcls_vision.engine.checkpoint import load_checkpoint
from dcls_vision.ops import dcls_layers, dcls_parameters

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
EXTRA = os.environ.get("DCLS_TEST_HYDRA_OVERRIDES", "").split()  # e.g. a hydra.searchpath for local data configs

# A tiny, fast, fully random configuration: augmentation, drop path, mixup/cutmix, EMA, repulsive loss.
TINY = [
    "experiment=quickstart",
    "data.train_subset=256",
    "data.val_subset=127",  # odd: checks exact (unpadded) evaluation counts
    "data.num_workers=0",
    "+model.kwargs.dim=16",
    "+model.kwargs.depth=2",
    "model.drop_path_rate=0.1",
    "aug.mixup=0.2",
    "aug.cutmix=1.0",
    "trainer.batch_size=32",
    "trainer.epochs=2",
    "trainer.ema.enabled=true",
    "trainer.ema.decay=0.9",
    "trainer.repulsive.weight=1.0",  # the quickstart net is gauss: off by default
    "trainer.repulsive.start_epoch=1",
    "trainer.keep_last=1",
    "sched.warmup_epochs=1",
    "optim.lr=4e-3",
    "logger.wandb=false",
    "logger.progress=false",
]


def _cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*TINY, *EXTRA, f"trainer.output_dir={run_dir}", *overrides])


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_state(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-5), k


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """The reference: 2 epochs without interruption."""
    run_dir = tmp_path_factory.mktemp("straight")
    result = train(_cfg(run_dir))
    return run_dir, result


def test_run_writes_outputs(straight_run):
    run_dir, result = straight_run
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "last.pth", "best.pth", "best_ema.pth", "epoch_0001.pth"} <= names
    assert "epoch_0000.pth" not in names  # keep_last=1
    assert not [n for n in names if n.endswith(".tmp")]
    lines = _metrics(run_dir)
    assert [r["epoch"] for r in lines] == [0, 1]
    for r in lines:
        for key in (
            "train_loss",
            "lr",
            "val_top1",
            "val_top5",
            "ema_top1",
            "ema_top5",
            "epoch_time",
            "skipped_train",
            "skipped_val",
            "pos_delta",
        ):
            assert r[key] is not None, key
        assert r["skipped_train"] == 0 and r["skipped_val"] == 0
        assert list(r["pos_delta"]) == ["stages.0.conv_dw.positions"]  # one stage-shared tensor
        assert r["pos_delta"]["stages.0.conv_dw.positions"] > 0
    assert lines[0]["repulsive"] is None and lines[1]["repulsive"] > 0  # start_epoch=1
    assert result["ema_top1"] == lines[-1]["ema_top1"]  # the EMA is evaluated
    for p in run_dir.glob("*.pth"):
        state = load_checkpoint(p)  # weights_only=True
        assert "model" in state and "config" in state
    last = load_checkpoint(run_dir / "last.pth")
    assert last["next_epoch"] == 2 and last["next_batch"] == 0 and last["global_step"] == 16
    assert len(last["rng"]) == 1 and last["sampler"]["seed"] == 0
    assert not torch.equal(last["ema"]["head.weight"], last["model"]["head.weight"])
    saved = (run_dir / "config.yaml").read_text()
    assert "train_subset: 256" in saved and "${" not in saved  # resolved


def test_stop_and_resume_matches_straight_run(straight_run, tmp_path):
    ref_dir, ref = straight_run
    run_dir = tmp_path / "resumed"
    first = train(_cfg(run_dir, "trainer.max_epochs_per_run=1"))
    assert first["epochs_done"] == 1
    second = train(_cfg(run_dir))  # picks up last.pth in the run dir
    assert second["epochs_done"] == 2
    a, b = load_checkpoint(ref_dir / "last.pth"), load_checkpoint(run_dir / "last.pth")
    _assert_same_state(a["model"], b["model"])
    _assert_same_state(a["ema"], b["ema"])
    assert second["top1"] == pytest.approx(ref["top1"]) and second["ema_top1"] == pytest.approx(ref["ema_top1"])
    assert [r["epoch"] for r in _metrics(run_dir)] == [0, 1]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume(straight_run, tmp_path):
    """SIGKILL right after a mid-epoch checkpoint: every file loads, and the resumed run ends where the
    uninterrupted one did (num_workers=0, so even the augmentation RNG stream is restored exactly)."""
    ref_dir, _ = straight_run
    run_dir = tmp_path / "killed"
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        *TINY,
        *EXTRA,
        f"trainer.output_dir={run_dir}",
        "trainer.ckpt_interval_steps=2",
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    last, seen, killed_at = run_dir / "last.pth", None, None
    deadline = time.time() + 240
    try:
        while proc.poll() is None and time.time() < deadline:
            mtime = last.stat().st_mtime_ns if last.exists() else None
            if mtime is not None and mtime != seen:
                seen = mtime
                os.kill(proc.pid, signal.SIGSTOP)  # freeze it while we look at the checkpoint
                state = load_checkpoint(last)
                if state["next_epoch"] == 1 and state["next_batch"] > 0:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_at = (state["next_epoch"], state["next_batch"])
                    break
                os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.005)
    finally:
        if proc.poll() is None and killed_at is None:
            proc.kill()
        proc.wait()
    assert killed_at is not None, f"never saw a mid-epoch checkpoint: {proc.stderr.read().decode()[-2000:]}"
    for p in run_dir.glob("*.pth"):
        load_checkpoint(p)
    result = train(_cfg(run_dir, "trainer.ckpt_interval_steps=2"))
    assert result["epochs_done"] == 2
    _assert_same_state(load_checkpoint(ref_dir / "last.pth")["model"], load_checkpoint(last)["model"], atol=1e-5)
    assert [r["epoch"] for r in _metrics(run_dir)] == [0, 1]


def test_clamp_after_optimizer_step(tmp_path):
    cfg = _cfg(tmp_path / "clamp")
    trainer_mod.validate_config(cfg)
    t = trainer_mod.Trainer(cfg, 0, 1, 0, torch.device("cpu"))
    pos = dcls_parameters(t.model)["positions"][0]
    with torch.no_grad():
        pos.fill_(100.0)
    x, y = next(iter(t.train_loader.epoch(0)))
    t.criterion(t.model(x), torch.nn.functional.one_hot(y, 10).float()).backward()
    t.step.optimizer_step(torch.tensor(1.0), epoch=0, step_in_epoch=1)
    layer = next(iter(dcls_layers(t.model)))
    hi = max(h for _, h in layer.position_limits())
    assert pos.max().item() <= hi and torch.isfinite(pos).all()
    assert t.state.global_step == 1
    t.log.close()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    run_dir = tmp_path / "nan"
    real = builders_mod.build_criterion
    calls = {"n": 0}

    class NanAfterFirstEpoch(torch.nn.Module):
        def __init__(self, cfg, mixup_active):
            super().__init__()
            self.crit = real(cfg, mixup_active)

        def forward(self, out, target):
            calls["n"] += 1
            value = self.crit(out, target)
            return value * float("nan") if calls["n"] > 8 + 2 else value  # 8 steps in epoch 1, NaN at step 3

    monkeypatch.setattr(builders_mod, "build_criterion", NanAfterFirstEpoch)
    with pytest.raises(NonFiniteLossError, match=r"loss=nan at epoch 2 step 3 \(global step 11\)") as info:
        train(_cfg(run_dir, "trainer.ckpt_interval_steps=1"))
    assert "last good checkpoint kept" in str(info.value)
    state = load_checkpoint(run_dir / "last.pth")
    assert (state["next_epoch"], state["next_batch"], state["global_step"]) == (1, 2, 10)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert len(_metrics(run_dir)) == 1


@pytest.mark.slow
def test_cli_config_errors_exit_2_with_one_line(tmp_path):
    for override, expected in [
        ("optim.lr=-1", "ConfigError: optim.lr=-1.0 must be > 0"),  # a float on the schema
        ("model.name=resnet_nope", "ConfigError: model.name='resnet_nope' is not a registered"),
    ]:
        out = tmp_path / override.split("=")[0]
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *TINY, *EXTRA, override, f"trainer.output_dir={out}"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), proc.stderr
        assert not out.exists()  # the run dir Hydra made is removed again


@pytest.mark.slow
def test_ddp_two_processes_on_cpu(tmp_path):
    run_dir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
        str(ROOT / "train.py"),
        *TINY,
        *EXTRA,
        f"trainer.output_dir={run_dir}",
        "trainer.epochs=1",
        "sched.warmup_epochs=0",
        "trainer.batch_size=16",
        "logger.wandb=true",
        "logger.wandb_mode=offline",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("final: top1=") == 1  # rank 0 only
    lines = _metrics(run_dir)
    assert len(lines) == 1  # one writer
    r = lines[0]
    assert r["global_step"] == 256 // (16 * 2)  # each rank sees half the data per step
    assert r["skipped_val"] == 0  # all 127 val images counted exactly once across ranks
    state = load_checkpoint(run_dir / "last.pth")
    assert len(state["rng"]) == 2 and state["sampler"]["world_size"] == 2
    assert (run_dir / "log.txt").read_text().count("epoch 1/1") == 1
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1  # W&B offline, rank 0 only


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_on_cpu(tmp_path, amp):
    result = train(
        _cfg(
            tmp_path / amp,
            f"trainer.amp={amp}",
            "trainer.epochs=1",
            "sched.warmup_epochs=0",
            "data.train_subset=64",
            "data.val_subset=32",
        )
    )
    assert result["epochs_done"] == 1 and 0 <= result["top1"] <= 100
    state = load_checkpoint(tmp_path / amp / "last.pth")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert bool(state["scaler"]) == (amp == "fp16")  # GradScaler state only when it is enabled


def test_gradient_accumulation_matches_large_batch(tmp_path):
    """2 x 16 accumulated == 1 x 32 (SGD, so a wrong loss scale would show): same order, no BN/mixup/drop path."""
    common = [
        "optim=sgd",
        "optim.lr=0.05",
        "trainer.epochs=1",
        "sched.warmup_epochs=0",
        "aug.mixup=0",
        "aug.cutmix=0",
        "model.drop_path_rate=0",
        "trainer.ema.enabled=false",
        "data.train_subset=128",
        "data.val_subset=32",
    ]
    train(_cfg(tmp_path / "big", *common, "trainer.batch_size=32"))
    train(_cfg(tmp_path / "acc", *common, "trainer.batch_size=16", "trainer.accum=2"))
    a, b = load_checkpoint(tmp_path / "big" / "last.pth"), load_checkpoint(tmp_path / "acc" / "last.pth")
    assert a["global_step"] == b["global_step"] == 4
    _assert_same_state(a["model"], b["model"], atol=1e-5)


def test_val_interval_validates_every_nth_and_the_last_epoch(tmp_path):
    """trainer.val_interval=2 over 3 epochs: validation after epochs 2 and 3 only; skipped epochs log nulls."""
    result = train(_cfg(tmp_path, "trainer.epochs=3", "trainer.val_interval=2"))
    records = _metrics(tmp_path)
    assert [r["epoch"] for r in records] == [0, 1, 2]
    skipped = records[0]
    assert skipped["val_top1"] is None and skipped["ema_top1"] is None and skipped["best_top1"] is None
    assert skipped["val_loss"] is None and skipped["train_loss"] > 0
    assert all(isinstance(r[k], float) for r in records[1:] for k in ("val_top1", "ema_top1", "best_top1"))
    assert result["top1"] == records[2]["val_top1"]
    assert records[2]["best_top1"] == max(records[1]["val_top1"], records[2]["val_top1"])
    log = (tmp_path / "log.txt").read_text()
    assert "epoch 1/3 | train_loss" in log and "| val -/- |" in log.split("epoch 2/3")[0]
    with pytest.raises(Exception, match="trainer.val_interval"):
        train(_cfg(tmp_path / "bad", "trainer.val_interval=0"))


def test_eval_only_scores_the_given_weights_exactly_and_writes_no_checkpoint(tmp_path):
    """``trainer.eval_only``: the val figures of a checkpoint's weights, equal to those the run measured with them;
    no training (epochs_done 0), no checkpoint written, no best figure claimed."""
    trained = train(_cfg(tmp_path / "run", "trainer.epochs=1", "trainer.ema.enabled=false"))
    scored = train(
        _cfg(
            tmp_path / "eval",
            "trainer.ema.enabled=false",
            "trainer.eval_only=true",
            f"model.init_checkpoint={tmp_path / 'run' / 'best.pth'}",
        )
    )
    assert (scored["top1"], scored["top5"]) == (trained["top1"], trained["top5"])
    assert scored["epochs_done"] == 0 and scored["best_top1"] is None
    assert not list((tmp_path / "eval").glob("*.pth"))
