"""LR schedules of the composed recipes against independent implementations of their reference formulas, LR scaling
with the global batch, and the first epoch of the repulsive loss (issue 16)."""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from dcls_vision.engine import ConfigError, validate_config
from dcls_vision.engine.builders import build_scheduler, lr_for_global_batch
from dcls_vision.engine.repulsive import repulsive_applies

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


@functools.cache
def _cfg(*overrides: str):
    root = Path(tempfile.mkdtemp(prefix="imagenet_"))
    (root / "train").mkdir()
    (root / "val").mkdir()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, f"data.root={root}"])


def _global_batch(cfg, processes: int = 8) -> int:
    return int(cfg.trainer.batch_size) * int(cfg.trainer.accum) * processes


def _lr_per_update(cfg, updates_per_epoch: int) -> list[float]:
    """The LR each optimizer update of a whole run uses, driven as the trainer drives the scheduler."""
    lr, _ = lr_for_global_batch(cfg, _global_batch(cfg))
    optimizer = torch.optim.AdamW([{"params": [torch.zeros(1, requires_grad=True)], "lr": lr, "lr_scale": 1.0}])
    scheduler = build_scheduler(cfg, optimizer, int(cfg.trainer.epochs), updates_per_epoch)
    out, step = [], 0
    for epoch in range(int(cfg.trainer.epochs)):
        for _ in range(updates_per_epoch):
            out.append(optimizer.param_groups[0]["lr"])
            step += 1
            scheduler.step_update(num_updates=step)
        scheduler.step(epoch + 1)
    return out


def convnext_reference(peak: float, final: float, epochs: int, per_epoch: int, warmup_epochs: int, start: float):
    """ConvNeXt utils.cosine_scheduler, re-derived: ``np.linspace(start, peak, W)`` over the W warm-up updates (both
    ends included), then ``final + (peak − final)(1 + cos(π i / N)) / 2`` for i = 0 … N−1, N the remaining updates."""
    w = warmup_epochs * per_epoch
    n = epochs * per_epoch - w
    warm = [start + (peak - start) * k / (w - 1) if w > 1 else start for k in range(w)]
    return warm + [final + (peak - final) * (1 + math.cos(math.pi * i / n)) / 2 for i in range(n)]


def timm_epoch_reference(peak: float, final: float, warmup_lr: float, warmup: int, decay: int, total: int):
    """timm train.py (metaformer 0.6.11, ml-fastvit >= 0.9, RSB A3): LR set once per epoch e; warm-up
    ``warmup_lr + e (peak − warmup_lr) / W``, then cosine over all ``decay`` epochs, then ``final`` for the cooldown
    epochs up to ``total``."""
    out = []
    for e in range(total):
        if e < warmup:
            out.append(warmup_lr + e * (peak - warmup_lr) / warmup)
        elif e < decay:
            out.append(final + (peak - final) * (1 + math.cos(math.pi * e / decay)) / 2)
        else:
            out.append(final)
    return out


@pytest.mark.parametrize("name", ["convnext_tiny", "convnext_tiny_dcls", "convnext_base_dcls"])
def test_convnext_lr_per_update_equals_the_reference_formula(name):
    cfg = _cfg(f"experiment={name}")
    per_epoch = 1281167 // 4096  # ConvNeXt main.py: len(dataset_train) // total_batch_size = 312
    ours = _lr_per_update(cfg, per_epoch)
    ref = convnext_reference(4e-3, 1e-6, 300, per_epoch, 20, 0.0)
    assert len(ours) == len(ref) == 300 * per_epoch
    worst = max(range(len(ref)), key=lambda k: abs(ours[k] - ref[k]))
    assert abs(ours[worst] - ref[worst]) < 1e-9, (worst, ours[worst], ref[worst])
    peak = 20 * per_epoch - 1  # the last warm-up update reaches the peak, as np.linspace does
    assert abs(max(ours) - 4e-3) < 1e-12 and abs(ours[peak] - 4e-3) < 1e-12 and ours[0] == 0.0


@pytest.mark.parametrize(
    "name,peak,final,warmup_lr,warmup,decay,total",
    [
        ("convformer_s18_dcls", 4e-3, 1e-5, 1e-6, 20, 300, 310),
        ("fastvit_sa24", 1e-3, 1e-5, 1e-6, 5, 300, 310),
        ("resnet50_dcls", 8e-3, 1e-6, 1e-4, 5, 100, 100),
    ],
)
def test_timm_recipes_lr_per_epoch_equals_their_train_py(name, peak, final, warmup_lr, warmup, decay, total):
    cfg = _cfg(f"experiment={name}")
    per_epoch = 3
    ours = _lr_per_update(cfg, per_epoch)
    ref = timm_epoch_reference(peak, final, warmup_lr, warmup, decay, total)
    assert len(ours) == total * per_epoch
    for k, lr in enumerate(ours):
        assert abs(lr - ref[k // per_epoch]) < 1e-9, (k, lr, ref[k // per_epoch])


@pytest.mark.parametrize(
    "name,base,rule",
    [
        ("convnext_tiny_dcls", 4096, "sqrt"),
        ("convformer_s18", 4096, "sqrt"),
        ("fastvit_sa24_dcls", 1024, "sqrt"),
        ("resnet50_dcls", 2048, "sqrt"),
    ],
)
def test_lr_scales_with_the_global_batch(name, base, rule):
    cfg = _cfg(f"experiment={name}")
    assert (cfg.optim.lr_base_batch, cfg.optim.lr_scale_rule) == (base, rule)
    lr = float(cfg.optim.lr)
    assert lr_for_global_batch(cfg, base) == (lr, None)  # the recipe's own batch: as given, no line
    scaled, note = lr_for_global_batch(cfg, base // 8)
    assert scaled == pytest.approx(lr / math.sqrt(8), rel=1e-12)
    assert note.startswith(f"lr {lr:.4g} -> {scaled:.4g}: global batch {base // 8} (") and "sqrt" in note


def test_readme_example_one_process_batch_512_scales_the_4096_lr():
    cfg = _cfg("experiment=convnext_tiny_dcls", "trainer.batch_size=128", "trainer.accum=4")
    scaled, note = lr_for_global_batch(cfg, 1 * 128 * 4)
    assert scaled == pytest.approx(4e-3 * math.sqrt(512 / 4096), rel=1e-12)  # 1.414e-3, not 4e-3
    assert "1 process(es) x batch_size 128 x accum 4" in note and "optim.lr_base_batch=4096" in note
    lin = _cfg("experiment=convnext_tiny_dcls", "optim.lr_scale_rule=linear")
    assert lr_for_global_batch(lin, 512)[0] == pytest.approx(4e-3 / 8, rel=1e-12)


def test_bad_scale_rule_and_prefix_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"optim.lr_scale_rule='cubic' is not supported; allowed: linear, sqrt"):
        validate_config(_cfg("experiment=convnext_tiny", "optim.lr_scale_rule=cubic"))
    with pytest.raises(ConfigError, match=r"sched.warmup_prefix=true with sched.name='constant'; allowed: cosine"):
        validate_config(_cfg("experiment=convnext_tiny", "sched.name=constant"))


@pytest.mark.parametrize("name", ["convnext_tiny_dcls", "resnet50_dcls", "convformer_s18_dcls"])
def test_repulsive_loss_starts_in_0_based_epoch_21_as_the_reference_epoch_gt_20(name):
    rep = _cfg(f"experiment={name}").trainer.repulsive
    assert rep.weight == 1.0
    assert [e for e in range(25) if repulsive_applies(e, rep.start_epoch)] == [e for e in range(25) if e > 20]


def test_a_run_logs_one_line_and_trains_with_the_rescaled_lr(tmp_path):
    import json

    from dcls_vision.engine import train

    run_dir = tmp_path / "run"
    overrides = [
        "experiment=quickstart",
        "data.train_subset=64",
        "data.val_subset=32",
        "+model.kwargs.dim=8",
        "+model.kwargs.depth=1",
        "trainer.batch_size=16",
        "trainer.accum=2",
        "trainer.epochs=1",
        "optim.lr_base_batch=128",  # quickstart's lr 5e-3 read as "for a global batch of 128"
        "sched.name=none",
        "logger.wandb=false",
        "logger.progress=false",
        f"trainer.output_dir={run_dir}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        train(compose("config", overrides=overrides))
    lines = [line for line in (run_dir / "log.txt").read_text().splitlines() if "optim.lr_base_batch" in line]
    assert len(lines) == 1, lines
    assert "lr 0.005 -> 0.0025: global batch 32 (1 process(es) x batch_size 16 x accum 2)" in lines[0]
    assert "sqrt scaling (timm's rule for adamw): lr x sqrt(32/128)" in lines[0]
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    assert record["lr"] == pytest.approx(5e-3 * math.sqrt(32 / 128), rel=1e-9)
