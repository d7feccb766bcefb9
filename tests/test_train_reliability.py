"""Silent-wrong training paths (issue 15, items 1-3), each with real short runs on a Fashion-MNIST subset.

1. Resume precedence: the run dir's ``last.pth`` beats ``trainer.resume`` once it exists (requeues continue).
2. BatchNorm under DDP: ``trainer.dist_bn`` makes every rank evaluate and save the same running stats
   (a real 2-process gloo run; this file is also the torchrun entry point of that run), ``trainer.sync_bn``.
3. ``trainer.accum`` with an epoch length that is not a multiple of it: the leftover micro-batches are an update.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from omegaconf.errors import ValidationError

ROOT = Path(__file__).resolve().parents[1]
if __name__ == "__main__":  # run by torchrun (see test_dist_bn_*): make the worktree importable
    sys.path.insert(0, str(ROOT))

from dcls_vision.engine import ConfigError, checkpointing, train, train_setup, validate_config  # noqa: E402
from dcls_vision.engine import trainer as trainer_mod  # noqa: E402
from dcls_vision.engine.checkpoint import load_checkpoint  # noqa: E402
from dcls_vision.engine.config import composition_error_line  # noqa: E402

CONFIG_DIR = ROOT / "configs"
EXTRA = os.environ.get("DCLS_TEST_HYDRA_OVERRIDES", "").split()

# Deterministic and tiny: no augmentation, mixup, drop path or EMA unless a test turns it on.
SMALL = [
    "experiment=quickstart",
    "aug=none",
    "data.train_subset=64",
    "data.val_subset=16",
    "data.num_workers=0",
    "model.drop_path_rate=0",
    "trainer.batch_size=32",
    "trainer.ema.enabled=false",
    "logger.wandb=false",
    "logger.progress=false",
]
QUICKSTART = ["+model.kwargs.dim=8", "+model.kwargs.depth=1"]  # LayerNorm only
# A registered BatchNorm model (timm's resnet50 recipe) at toy widths: 6.8k parameters, 17 BatchNorm2d.
TINY_RESNET = [
    "model=resnet50",
    "+model.kwargs.layers=[1,1,1,1]",
    "+model.kwargs.channels=[4,4,4,4]",
    "+model.kwargs.stem_width=8",
]


def _cfg(run_dir: Path, *overrides: str):
    """SMALL + overrides; the quickstart net at toy size unless ``model=`` is overridden."""
    model = [] if any(o.startswith("model=") for o in overrides) else QUICKSTART
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*SMALL, *model, *EXTRA, f"trainer.output_dir={run_dir}", *overrides])


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------- 1. resume precedence
def test_resume_source_precedence(tmp_path):
    own = tmp_path / "run" / "last.pth"
    seed = tmp_path / "seed.pth"
    assert checkpointing.choose_resume_source(own, [("trainer.resume", None)]) == (None, None)
    path, note = checkpointing.choose_resume_source(own, [("trainer.resume", str(seed)), ("init", "x.pth")])
    assert path == seed and note == f"resuming from trainer.resume={seed} (the run dir has no last.pth yet)"
    own.parent.mkdir()
    own.write_bytes(b"")
    path, note = checkpointing.choose_resume_source(own, [("trainer.resume", str(seed))])
    assert path == own
    assert note == f"resuming from run dir {own} (trainer.resume={seed} ignored: the run dir already has a checkpoint)"
    assert checkpointing.choose_resume_source(own, [("trainer.resume", str(own))])[1] == f"resuming from run dir {own}"
    # trainer.auto_resume=false: the run dir is not consulted, trainer.resume wins
    assert checkpointing.choose_resume_source(None, [("trainer.resume", str(seed))])[0] == seed


def test_requeued_run_with_trainer_resume_continues_its_run_dir(tmp_path):
    """Two invocations of the same command (a requeued job): the second continues from the run dir (epoch 3),
    instead of restarting from ``trainer.resume`` and ending at epoch 2 again."""
    seed_dir, run_dir = tmp_path / "seed", tmp_path / "run"
    train(_cfg(seed_dir, "trainer.epochs=3", "trainer.max_epochs_per_run=1"))
    seed = seed_dir / "last.pth"
    assert load_checkpoint(seed)["next_epoch"] == 1
    same_command = ["trainer.epochs=3", "trainer.max_epochs_per_run=1", f"trainer.resume={seed}"]
    first = train(_cfg(run_dir, *same_command))
    assert first["epochs_done"] == 2
    second = train(_cfg(run_dir, *same_command))
    assert second["epochs_done"] == 3
    state = load_checkpoint(run_dir / "last.pth")
    assert state["next_epoch"] == 3 and state["global_step"] == 3 * 2
    assert _epochs(run_dir) == [1, 2]
    log = (run_dir / "log.txt").read_text()
    assert f"resuming from trainer.resume={seed} (the run dir has no last.pth yet)" in log
    assert f"(trainer.resume={seed} ignored: the run dir already has a checkpoint)" in log


# ------------------------------------------------------------------------- 2. BatchNorm under DDP
def _bn_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().cpu().clone() for n, b in model.named_buffers() if ".running_" in n}


def _probe_main(out: Path, overrides: list[str]) -> None:
    """torchrun entry: train, recording per rank the BN running stats of every model ``evaluate`` is given and,
    where the trainer distributes them, of the model just before (the rank's own stats)."""
    evaluated: list[dict[str, torch.Tensor]] = []
    own: list[dict[str, torch.Tensor]] = []
    real_evaluate = trainer_mod.evaluate
    real_distribute = getattr(trainer_mod.Trainer, "_distribute_bn", None)

    def recording_evaluate(model, *args, **kwargs):
        evaluated.append(_bn_stats(model))
        return real_evaluate(model, *args, **kwargs)

    def recording_distribute(self):
        own.append(_bn_stats(self.model))
        real_distribute(self)

    trainer_mod.evaluate = recording_evaluate
    if real_distribute is not None:
        trainer_mod.Trainer._distribute_bn = recording_distribute
    train(_cfg(out / "run", *overrides))
    torch.save({"evaluated": evaluated, "own": own}, out / f"bn_rank{os.environ['RANK']}.pt")


def _torchrun(out: Path, port: int, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(Path(__file__).resolve()),
        str(out),
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


DDP_BN = [
    *TINY_RESNET,
    "trainer.epochs=2",
    "trainer.batch_size=8",
    "trainer.ema.enabled=true",
    "trainer.ema.decay=0.5",
    "optim.lr=1e-2",
]


@pytest.mark.slow
@pytest.mark.parametrize("dist_bn", ["reduce", "broadcast"])
def test_dist_bn_two_processes_evaluate_and_save_the_same_bn_stats(tmp_path, dist_bn):
    """Each rank sees other images, so its own BN running stats differ; what every rank evaluates (model and EMA,
    every epoch) must be identical (the ranks' mean, or rank 0's for broadcast) and be what last.pth holds."""
    proc = _torchrun(tmp_path, 29531 + len(dist_bn), *DDP_BN, f"trainer.dist_bn={dist_bn}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"bn_rank{r}.pt", weights_only=True) for r in (0, 1))
    ev0, ev1 = r0["evaluated"], r1["evaluated"]
    assert len(ev0) == len(ev1) == 4  # (model, EMA) x 2 epochs
    assert len(ev0[0]) == 2 * 17  # running_mean + running_var of each BatchNorm2d
    differ = [(i, k) for i in range(4) for k in ev0[i] if not torch.equal(ev0[i][k], ev1[i][k])]
    assert differ == [], f"{len(differ)} BN buffers evaluated differently on the two ranks, e.g. {differ[:3]}"
    last = load_checkpoint(tmp_path / "run" / "last.pth")
    for evaluated, saved in ((ev0[2], last["model"]), (ev0[3], last["ema"])):
        for k, v in evaluated.items():
            assert torch.equal(saved[k], v), k
    assert len(r0["own"]) == 2  # once per epoch, before evaluation
    for epoch in range(2):
        own0, own1, got = r0["own"][epoch], r1["own"][epoch], ev0[2 * epoch]
        assert all(not torch.equal(own0[k], own1[k]) for k in own0)  # the drift there was to remove
        for k in own0:
            want = (own0[k] + own1[k]) / 2 if dist_bn == "reduce" else own0[k]
            assert torch.allclose(got[k], want, rtol=1e-6, atol=1e-7), k


def test_sync_bn_conversion_and_cpu_error(tmp_path):
    model = timm.create_model(
        "resnet50", num_classes=10, in_chans=1, layers=[1, 1, 1, 1], channels=[4, 4, 4, 4], stem_width=8
    )
    params = {n: p for n, p in model.named_parameters()}
    synced = train_setup.convert_sync_bn(model, torch.device("cuda"))  # conversion needs no GPU or process group
    kinds = [type(m) for m in synced.modules()]
    assert kinds.count(torch.nn.SyncBatchNorm) == 17 and torch.nn.BatchNorm2d not in kinds
    assert all(p is params[n] for n, p in synced.named_parameters())  # same tensors: optimizer/EMA unaffected
    with pytest.raises(ConfigError, match=r"^trainer.sync_bn=True needs CUDA devices .*; allowed: trainer.sync_bn="):
        train_setup.convert_sync_bn(model, torch.device("cpu"))
    cfg = _cfg(tmp_path / "sync", *TINY_RESNET, "trainer.sync_bn=true", "trainer.epochs=1")
    validate_config(cfg)
    with pytest.raises(ConfigError, match="trainer.sync_bn=True needs CUDA"):
        trainer_mod.Trainer(cfg, 0, 2, 0, torch.device("cpu"))  # world 2 on CPU: fails before any data loads
    t = trainer_mod.Trainer(cfg, 0, 1, 0, torch.device("cpu"))  # one process: nothing to sync, plain BN
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in t.model.modules())
    t.log.close()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("trainer.dist_bn", "mean", "trainer.dist_bn='mean' is not supported; allowed: reduce, broadcast, '' (off)"),
        ("trainer.sync_bn", "maybe", "trainer.sync_bn='maybe' has the wrong type; allowed: true or false"),
    ],
)
def test_bn_config_errors(tmp_path, key, value, message):
    cfg = _cfg(tmp_path)
    try:  # a wrong type fails in the schema (dcls_vision/engine/schema.py), a bad value in validate_config
        with open_dict(cfg):
            cfg[key.split(".")[0]][key.split(".")[1]] = value
        validate_config(cfg)
    except (ConfigError, ValidationError) as e:
        assert (composition_error_line(e) if isinstance(e, ValidationError) else str(e)) == message
    else:
        pytest.fail(f"{key}={value!r} was accepted")


# ----------------------------------------------------------------------------- 3. accumulation leftover
ACCUM = [
    "optim=sgd",
    "optim.lr=0.05",
    "sched=constant",
    "trainer.epochs=1",
    "data.train_subset=96",
    "trainer.batch_size=16",
]


def test_accum_leftover_micro_batches_are_an_update(tmp_path):
    """96 images, batch 16, accum 4: 6 micro-batches = one update of 4 and one of the 2 leftover. The weights equal
    two plain SGD steps on the concatenated groups (full-group mean loss), so the leftover loss is / 2, not / 4."""
    result = train(_cfg(tmp_path / "acc", *ACCUM, "trainer.accum=4"))
    got = load_checkpoint(tmp_path / "acc" / "last.pth")["model"]

    ref = trainer_mod.Trainer(_cfg(tmp_path / "ref", *ACCUM), 0, 1, 0, torch.device("cpu"))  # same init/optimizer
    train_setup.seed_everything(trainer_mod._epoch_seed(ref.seed, 0, 0))
    micro = list(ref.train_loader.epoch(0))
    assert len(micro) == 6
    ref.model.train()
    for i, group in enumerate((micro[:4], micro[4:])):
        x, y = torch.cat([b[0] for b in group]), torch.cat([b[1] for b in group])
        loss = ref.criterion(ref.model(x.contiguous(memory_format=torch.channels_last)), y)
        loss.backward()
        ref.step.optimizer_step(loss.detach(), epoch=0, step_in_epoch=i + 1)
    ref.log.close()
    want = ref.model.state_dict()
    worst = max((got[k] - want[k]).abs().max().item() for k in want)
    assert all(torch.allclose(got[k], want[k], atol=1e-5, rtol=1e-5) for k in want), f"max |diff| {worst:.3g}"
    assert result["global_step"] == 2


def test_accum_schedule_counts_the_partial_update(tmp_path):
    """Cosine over 2 epochs of ceil(6 / 4) = 2 updates: after epoch 1 (step 2 of 4) the lr is half way, 0.5 x lr.
    Counting only full groups (1 per epoch) would put step 2 at the end of the schedule (min_lr = 0)."""
    run_dir = tmp_path / "sched"
    train(
        _cfg(
            run_dir,
            *ACCUM,
            "trainer.accum=4",
            "sched=cosine",
            "sched.warmup_epochs=0",
            "sched.min_lr=0",
            "trainer.epochs=2",
            "trainer.max_epochs_per_run=1",
        )
    )
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["global_step"] == 2
    assert record["lr"] == pytest.approx(0.5 * 0.05, rel=1e-6)


if __name__ == "__main__":
    _probe_main(Path(sys.argv[1]), sys.argv[2:])
