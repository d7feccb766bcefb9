"""Progress without a terminal and the timm switches, on real runs of the trainer (Fashion-MNIST subsets).

A ``python train.py`` run with stdout piped (as under SLURM) must print the progress lines to stdout and log.txt and
log their scalars to W&B (offline); ``trainer.compile=true`` trains as eager does; ``trainer.cudnn_benchmark`` /
``trainer.tf32`` reach ``torch.backends``; ``aug.train_interpolation`` reaches timm's train transform. The
downstream mmengine runners' LoggerHook lines (time, data_time) reach the job's stdout and the work dir's log.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dcls_vision.engine import train
from dcls_vision.engine.checkpoint import load_checkpoint
from dcls_vision.engine.config import ConfigError, validate_config

ROOT = Path(__file__).resolve().parents[1]
EXTRA = os.environ.get("DCLS_TEST_HYDRA_OVERRIDES", "").split()
TINY = [
    "experiment=quickstart",
    "data.train_subset=256",
    "data.val_subset=64",
    "data.num_workers=0",
    "+model.kwargs.dim=16",
    "+model.kwargs.depth=2",
    "trainer.batch_size=32",  # 8 optimizer steps per epoch
]
LINE = re.compile(
    r"^step (\d+) \| epoch (\d+)/(\d+) (\d+)/(\d+) \| loss (\S+) \| lr (\S+) \| img/s (\S+) \(global (\S+)\) \| "
    r"data (\S+)% \| (\S+?)(m?)s/step(?: \| mem (\S+)GiB)? \| eta epoch (\d+):(\d\d):(\d\d) run (\d+):(\d\d):(\d\d)$"
)


def _cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=[*TINY, *EXTRA, f"trainer.output_dir={run_dir}", *overrides])


def _printed(text: str, scale: float = 1.0) -> tuple[float, float]:
    """A printed fixed-point number and half a unit of its last printed digit (its rounding bound), both x scale."""
    decimals = len(text.partition(".")[2])
    return float(text) * scale, 0.5 * 10.0**-decimals * scale


def _parse(text: str) -> list[dict]:
    out = []
    for m in filter(None, map(LINE.match, text.splitlines())):
        g = m.groups()
        img_s, step_s = _printed(g[7]), _printed(g[10], 1e-3 if g[11] else 1.0)
        out.append(
            {
                "step": int(g[0]),
                "epoch": (int(g[1]), int(g[2])),
                "in_epoch": (int(g[3]), int(g[4])),
                "loss": float(g[5]),
                "lr": float(g[6]),
                "img_s": img_s[0],
                "img_s_err": img_s[1],
                "img_s_global": float(g[8]),
                "data_pct": float(g[9]),
                "step_s": step_s[0],
                "step_s_err": step_s[1],
                "eta_epoch": int(g[13]) * 3600 + int(g[14]) * 60 + int(g[15]),
                "eta_run": int(g[16]) * 3600 + int(g[17]) * 60 + int(g[18]),
            }
        )
    return out


def _wandb_history(run_dir: Path) -> Iterator[dict]:
    """History rows of the offline W&B run (its .wandb file: a 7-byte W&B header, then LevelDB-log records of
    protobuf ``Record`` messages in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2 as pb

    raw = next(run_dir.glob("wandb/offline-run-*/*.wandb")).read_bytes()
    pos, buf = 7, b""
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:  # block trailer
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf, pos = buf + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            if rec.WhichOneof("record_type") == "history":
                yield {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in rec.history.item}


def test_progress_lines_without_a_tty(tmp_path):
    """stdout is a pipe (no bars): every 3 steps one line with sane figures, also in log.txt and W&B."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "train.py", *TINY, *EXTRA, "trainer.epochs=2", "logger.log_interval=3"]
    cmd += ["logger.wandb=true", "logger.wandb_mode=offline", f"trainer.output_dir={run_dir}"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)  # pipes: no TTY
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = _parse(proc.stdout)
    assert [(r["step"], r["epoch"], r["in_epoch"]) for r in lines] == [
        (3, (1, 2), (3, 8)),
        (6, (1, 2), (6, 8)),
        (9, (2, 2), (1, 8)),
        (12, (2, 2), (4, 8)),
        (15, (2, 2), (7, 8)),
    ], proc.stdout
    assert lines == _parse((run_dir / "log.txt").read_text())
    for r in lines:
        assert math.isfinite(r["loss"]) and 0 < r["loss"] < 10 and 0 < r["lr"] <= 5e-3
        assert r["img_s"] > 0 and r["img_s_global"] == r["img_s"]  # one process
        assert 0 <= r["data_pct"] <= 100 and r["step_s"] > 0
        # 32 images per optimizer step, exactly up to the rounding of the two printed figures
        a, da, b, db = r["img_s"], r["img_s_err"], r["step_s"], r["step_s_err"]
        assert abs(a * b - 32) <= a * db + b * da + da * db, r
        assert da <= 5e-4 * a and db <= 5e-4 * b  # at least 4 significant digits each
        left = 8 - r["in_epoch"][0]
        assert abs(r["eta_epoch"] - left * r["step_s"]) <= 1
        if r["epoch"][0] == 1:  # no epoch end measured yet: the run's steps left x s/step
            assert abs(r["eta_run"] - (left + 8) * r["step_s"]) <= 1
        else:  # the last epoch: its steps plus one epoch end (validation + save)
            assert r["eta_run"] >= r["eta_epoch"]
    history = {h["_step"]: h for h in _wandb_history(run_dir) if "train/img_per_s" in h}
    assert sorted(history) == [3, 6, 9, 12, 15]
    for r in lines:
        h = history[r["step"]]
        assert abs(h["train/img_per_s"] - r["img_s"]) <= r["img_s_err"] * 1.0001  # the line = the scalar, rounded
        assert abs(h["train/step_time"] - r["step_s"]) <= r["step_s_err"] * 1.0001
        assert h["train/lr"] == pytest.approx(r["lr"], rel=1e-3)
        assert 0 <= h["train/data_share"] <= 1 and h["train/epoch_progress"] == pytest.approx(
            r["epoch"][0] - 1 + r["in_epoch"][0] / 8
        )
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["train_img_per_s"] > 0 for e in epochs] == [True, True]
    assert re.search(r"^epoch 2/2 \|.* \(\d+ train img/s\)$", proc.stdout, re.M)


@pytest.fixture
def backend_flags():
    """Restore the process-wide torch.backends flags the trainer sets."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _flags() -> tuple[bool, bool, bool]:
    return torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32


@pytest.mark.slow
def test_compiled_steps_match_eager(tmp_path, backend_flags):
    """Two SGD steps of the quickstart net (DCLS layers inside) through torch.compile equal eager ones; the
    default run sets cudnn.benchmark and TF32 on (timm's choice)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    same = ["data.train_subset=64", "trainer.epochs=1", "model.drop_path_rate=0.0", "optim=sgd", "optim.lr=0.1"]
    same += ["logger.wandb=false", "logger.progress=false"]
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = False
    eager = train(_cfg(tmp_path / "eager", *same))
    assert _flags() == (True, True, True)
    torch._dynamo.reset()
    counters.clear()
    compiled = train(_cfg(tmp_path / "compiled", *same, "trainer.compile=true"))
    assert counters["stats"]["unique_graphs"] >= 1  # the training forward went through dynamo
    assert compiled["global_step"] == eager["global_step"] == 2
    a, b = (load_checkpoint(tmp_path / d / "last.pth")["model"] for d in ("eager", "compiled"))
    assert a.keys() == b.keys()  # the checkpoint holds the plain model's keys (no _orig_mod.)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-5, rtol=1e-4), k
    assert compiled["top1"] == pytest.approx(eager["top1"])


def test_backend_switches_reach_torch(tmp_path, backend_flags):
    from dcls_vision.engine.trainer import Trainer

    cfg = _cfg(tmp_path / "run", "data.train_subset=32", "logger.wandb=false", "logger.progress=false")
    cfg.trainer.cudnn_benchmark, cfg.trainer.tf32 = False, False
    torch.backends.cudnn.benchmark = torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    Trainer(cfg, 0, 1, 0, torch.device("cpu"))
    assert _flags() == (False, False, False)
    cfg.trainer.tf32 = True
    Trainer(cfg, 0, 1, 0, torch.device("cpu"))
    assert _flags() == (False, True, True)


def test_train_interpolation_reaches_the_train_transform():
    """timm's RandomResizedCrop gets aug.train_interpolation ('random': bilinear or bicubic); eval keeps
    data.interpolation; unset, train uses data.interpolation too."""
    from torchvision.transforms import InterpolationMode as Mode

    from dcls_vision.data.transforms import imagenet_transforms

    def crops(*overrides: str) -> tuple[object, object]:
        cfg = _cfg(Path("unused"), "data=imagenet", "data.root=unused", *overrides)
        train_tf, val_tf = imagenet_transforms(cfg.data, cfg.aug)
        return train_tf.transforms[0].interpolation, val_tf.transforms[0].interpolation

    assert crops() == (Mode.BICUBIC, Mode.BICUBIC)
    assert crops("aug.train_interpolation=bilinear") == (Mode.BILINEAR, Mode.BICUBIC)
    assert crops("aug.train_interpolation=random", "data.interpolation=bilinear") == (
        (Mode.BILINEAR, Mode.BICUBIC),
        Mode.BILINEAR,
    )


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("aug.train_interpolation=cubic", "aug.train_interpolation='cubic' is not supported; allowed: nearest, "),
        ("data.interpolation=random", "data.interpolation='random' is not supported; allowed: nearest, "),
    ],
)
def test_bad_interpolation_is_one_line(tmp_path, override, line):
    with pytest.raises(ConfigError) as err:
        validate_config(_cfg(tmp_path, override))
    assert str(err.value).startswith(line) and "\n" not in str(err.value)


@pytest.mark.slow
def test_downstream_logger_lines_reach_stdout(tmp_path):
    """A tiny UperNet run with stdout piped: mmengine's LoggerHook lines (lr, eta, time, data_time; memory on
    CUDA) are in the job's stdout and in the work dir's log."""
    pytest.importorskip("mmseg")
    from dcls_vision.downstream import datasets

    ade = datasets.make_ade(tmp_path / "ade", num_train=6, num_val=3, size=128)["root"]
    work = tmp_path / "work"
    config = ROOT / "configs/downstream/tiny/upernet_tiny-dcls-gauss_ade-shapes.py"
    cmd = [sys.executable, "-m", "dcls_vision.downstream.train", str(config), "--work-dir", str(work)]
    cmd += ["--data-root", str(ade), "--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)  # pipes: no TTY
    assert proc.returncode == 0, proc.stderr[-3000:]
    fields = r"Iter\(train\) \[2/2\] .*lr: \S+ +eta: \S+ +time: [\d.]+ +data_time: [\d.]+"
    if torch.cuda.is_available():
        fields += r" +memory: \d+"
    assert re.search(fields, proc.stdout), proc.stdout[-3000:]
    assert re.search(fields, next(work.glob("*/*.log")).read_text())


@pytest.mark.parametrize(
    "value,text",
    [(412.34, "412.3"), (0.3, "0.3000"), (31.0649, "31.06"), (123456.7, "123456.7"), (7.0, "7.000"), (0.0, "0.000")],
)
def test_significant_keeps_four_digits_without_exponent(value, text):
    from dcls_vision.engine.progress import significant

    assert significant(value) == text


@pytest.mark.parametrize("seconds,text", [(0.01723, "17.23ms"), (0.0003141, "0.3141ms"), (2.3149, "2.315s")])
def test_step_time_in_milliseconds_below_one_second(seconds, text):
    from dcls_vision.engine.progress import step_time

    assert step_time(seconds) == text


def test_printed_rates_multiply_to_the_images_per_step_on_any_speed():
    """The line's img/s and s/step come from one window: their printed product is the images per step within the
    printed digits, from 0.1 ms to 20 min steps (what the subprocess test checks on this machine's speed only)."""
    from dcls_vision.engine.progress import Progress, Window, step_line, step_scalars

    gen = torch.Generator().manual_seed(0)
    p = Progress(global_step=3, epoch=0, epochs=1, step_in_epoch=3, steps_per_epoch=8)
    for _ in range(500):
        step_s = 10 ** (torch.rand((), generator=gen).item() * 7 - 4)  # 1e-4 .. 1e3 s
        per_step = int(torch.randint(1, 4097, (), generator=gen))
        w = Window(seconds=3 * step_s, data_seconds=0.0, images=3 * per_step, steps=3)
        line = step_line(p, step_scalars(w, p, loss=1.0, lr=1e-3, world=1, memory_gib=None))
        r = _parse(line)[0]
        a, da, b, db = r["img_s"], r["img_s_err"], r["step_s"], r["step_s_err"]
        assert abs(a * b - per_step) <= a * db + b * da + da * db, line
