"""Engine units: parameter groups, repulsive loss, EMA with shared positions, checkpoints, config validation."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import timm
import torch
from omegaconf import OmegaConf
from omegaconf.errors import ConfigAttributeError, ValidationError
from torch import nn

import dcls_vision.models  # noqa: F401  (registers dcls_quickstart)
from dcls_vision.engine import ConfigError, create_optimizer, create_scheduler, param_groups, validate_config
from dcls_vision.engine.checkpoint import (
    atomic_save,
    load_checkpoint,
    prune_epoch_checkpoints,
    rng_state,
    set_rng_state,
)
from dcls_vision.engine.config import composition_error_line
from dcls_vision.engine.ema import ModelEma
from dcls_vision.engine.optim import POSITION_LR_SCALE, param_rule, timm_layer_decay
from dcls_vision.engine.repulsive import repulsive_loss, repulsive_term
from dcls_vision.engine.schema import Config, FashionMNISTDataConfig
from dcls_vision.ops import Dcls2d, dcls_parameters, share_positions


class TinyDcls(nn.Module):
    """Two DCLS layers sharing one positions/σ tensor, a BatchNorm and a head (no group_matcher)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = Dcls2d(4, 4, 3, 5, groups=4, interpolation="gauss")
        self.c2 = Dcls2d(4, 4, 3, 5, groups=4, interpolation="gauss")
        share_positions([self.c1, self.c2])
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.c2(self.c1(x))).mean((2, 3)))


def _quickstart() -> nn.Module:
    return timm.create_model("dcls_quickstart", num_classes=10, in_chans=1, dim=8, depth=2)


def _group_of(optimizer: torch.optim.Optimizer, p: torch.Tensor) -> dict:
    return next(g for g in optimizer.param_groups if any(q is p for q in g["params"]))


# ------------------------------------------------------------------------------------ param groups
def test_param_groups_positions_sigma_no_decay_5x():
    model = TinyDcls()
    groups = param_groups(model, lr=1e-3, weight_decay=0.05)
    dcls = dcls_parameters(model)
    assert len(dcls["positions"]) == 1 and len(dcls["sigma"]) == 1  # shared: one tensor each
    all_params = [p for g in groups for p in g["params"]]
    assert len(all_params) == len({id(p) for p in all_params}) == len(list(model.parameters()))
    by_id = {id(p): g for g in groups for p in g["params"]}
    for p in dcls["positions"] + dcls["sigma"]:
        assert by_id[id(p)]["lr_scale"] == 5.0 and by_id[id(p)]["weight_decay"] == 0.0
    assert by_id[id(model.bn.weight)]["weight_decay"] == 0.0 and by_id[id(model.head.bias)]["weight_decay"] == 0.0
    assert by_id[id(model.c1.weight)]["weight_decay"] == 0.05 and by_id[id(model.c1.weight)]["lr_scale"] == 1.0


@pytest.mark.parametrize("opt", ["adamw", "lamb", "sgd"])
@pytest.mark.parametrize("layer_decay", [None, 0.5])
def test_optimizer_lr_after_scheduler_step(opt, layer_decay):
    """The real optimizer's lr after a timm scheduler step: 5x for positions/σ, also under layer decay."""
    model = _quickstart()
    lr = 1e-2
    optimizer = create_optimizer(model, opt, lr=lr, weight_decay=0.05, layer_decay=layer_decay)
    scheduler = create_scheduler(optimizer, "cosine", epochs=10, updates_per_epoch=4, warmup_epochs=0, min_lr=0.0)
    scheduler.step_update(3)
    value = scheduler._get_lr(3)[0]  # the schedule's value at update 3
    assert 0 < value < lr
    dcls = dcls_parameters(model)
    head_w = model.head.weight
    stage_w = model.stages[1].mlp.fc1.weight
    stem_w = model.stem[0].weight
    for p in dcls["positions"] + dcls["sigma"]:
        g = _group_of(optimizer, p)
        assert g["weight_decay"] == 0.0
        layer_scale = g["lr_scale"] / 5.0
        assert g["lr"] == pytest.approx(value * 5.0 * layer_scale)
        if layer_decay is None:
            assert g["lr"] == pytest.approx(5.0 * value)
        else:
            assert layer_scale < 1.0  # positions live in the stage, below the head
    assert _group_of(optimizer, head_w)["lr"] == pytest.approx(value)  # last layer: scale 1
    assert _group_of(optimizer, head_w)["weight_decay"] == 0.05
    if layer_decay is not None:
        # quickstart layers: stem 0, stages.0 1, stages.1 2, norm/head 3 => scales 0.125, 0.25, 0.5, 1
        assert _group_of(optimizer, stem_w)["lr"] == pytest.approx(value * layer_decay**3)
        assert _group_of(optimizer, stage_w)["lr"] == pytest.approx(value * layer_decay**1)
        pos = dcls["positions"][0]
        assert _group_of(optimizer, pos)["lr"] == pytest.approx(value * 5.0 * layer_decay**2)  # stages.0 owns it
    else:
        assert _group_of(optimizer, stem_w)["lr"] == pytest.approx(value)


def test_param_groups_with_layer_ids_is_the_downstream_rule():
    """What the mmengine constructor (downstream/optim.py) asks of the shared param_groups, without mmengine:
    ids from a layer_id_fn, scales from a layer_scale_fn, no model.no_weight_decay(), groups sorted by (id, kind).
    Positions/σ get POSITION_LR_SCALE × their layer's scale and weight decay 0, through the same param_rule."""
    model = _quickstart()
    ids = {"stem": 0, "stages": 1, "norm": 3, "head": 3}
    layer_of = lambda name: 2 if name.startswith("stages.1") else ids[name.split(".")[0]]  # noqa: E731
    groups = param_groups(
        model,
        lr=1.0,
        weight_decay=0.05,
        layer_id_fn=layer_of,
        layer_scale_fn=lambda lid: 0.5 ** (3 - lid),
        no_weight_decay=(),
        sort_by_layer=True,
    )
    names = [g["name"] for g in groups]
    assert names == sorted(names, key=lambda n: (int(n.split("_")[1]), n.split("_", 2)[2]))
    assert all(n.startswith("layer_") for n in names)
    dcls = dcls_parameters(model)
    by_id = {id(p): g for g in groups for p in g["params"]}
    assert len(by_id) == len(list(model.parameters()))
    for kind in ("positions", "sigma"):
        for p in dcls[kind]:
            g = by_id[id(p)]
            layer = int(g["name"].split("_")[1])
            assert g["name"].endswith(kind) and g["weight_decay"] == 0.0
            assert g["lr_scale"] == POSITION_LR_SCALE * 0.5 ** (3 - layer)
    w = model.stages[1].mlp.fc1.weight
    assert (by_id[id(w)]["name"], by_id[id(w)]["lr_scale"], by_id[id(w)]["weight_decay"]) == (
        "layer_2_decay",
        0.5,
        0.05,
    )
    assert param_rule("x.bias", torch.zeros(3, 3), 0.05, None, ()) == ("no_decay", 0.0, 1.0)
    assert param_rule("x.w", torch.zeros(3, 3), 0.05, "sigma", ()) == ("sigma", 0.0, POSITION_LR_SCALE)
    assert param_rule("x.w", torch.zeros(3, 3), 0.05, None, {"x.w"}) == ("no_decay", 0.0, 1.0)
    assert param_rule("x.w", torch.zeros(3, 3), 0.05, None, ()) == ("decay", 0.05, 1.0)
    # the trainer's layer_decay path is the same function with timm's ids: identical to passing them explicitly
    via_decay = param_groups(model, lr=1.0, weight_decay=0.05, layer_decay=0.5)
    explicit = param_groups(model, 1.0, 0.05, *timm_layer_decay(model, 0.5))
    strip = lambda gs: [(g["name"], g["lr_scale"], g["weight_decay"], [id(p) for p in g["params"]]) for g in gs]  # noqa: E731
    assert strip(via_decay) == strip(explicit)


def test_optimizer_respects_group_weight_decay():
    """A step with zero gradients must leave wd-0 tensors (positions) untouched, and shrink decayed weights."""
    model = TinyDcls()
    optimizer = create_optimizer(model, "adamw", lr=0.1, weight_decay=0.5)
    create_scheduler(optimizer, "constant", epochs=1, updates_per_epoch=1)
    before_pos, before_w = model.c1.positions.detach().clone(), model.c1.weight.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    assert torch.equal(model.c1.positions, before_pos)
    assert torch.allclose(model.c1.weight, before_w * (1 - 0.1 * 0.5))


# -------------------------------------------------------------------------------- repulsive loss
def test_repulsive_loss_matches_hand_computation():
    # kernel (o=0): points (0,0), (0.3,0), (0,0.4): distances 0.3, 0.4, 0.5 -> 0.7 + 0.6 + 0.5 = 1.8
    # kernel (o=1): points 2 apart -> 0.  R = 2 / (K(K-1) Cout Cin/g) * 1.8 = 2 / (3*2*2*1) * 1.8 = 0.3
    pos = torch.tensor(
        [
            [[[0.0, 0.3, 0.0]], [[0.0, 2.0, 4.0]]],  # axis 0 (M=2, Cout=2, Cin/g=1, K=3)
            [[[0.0, 0.0, 0.4]], [[0.0, 0.0, 0.0]]],
        ],
        requires_grad=True,
    )
    r = repulsive_term(pos)
    assert r.item() == pytest.approx(0.3, abs=1e-6)
    # a second tensor with all elements 1.5 apart along one axis contributes 0: mean over tensors halves R
    far = torch.tensor([0.0, 1.5, 3.0]).reshape(1, 1, 1, 3).expand(2, 1, 1, 3).clone()
    assert repulsive_loss([pos, far]).item() == pytest.approx(0.15, abs=1e-6)
    # gradient: d/dp of (1 - ||p_i - p_j||) pushes points apart; finite
    r.backward()
    assert torch.isfinite(pos.grad).all()
    assert pos.grad[0, 0, 0, 1] < 0  # moving point 1 (+x side) towards +x lowers the loss


def test_repulsive_loss_coincident_points_have_finite_gradient():
    pos = torch.zeros(2, 3, 1, 4, requires_grad=True)
    r = repulsive_term(pos)
    assert r.item() == pytest.approx(1.0)  # every pair at distance 0 => each term 1, normalised to 1
    r.backward()
    assert torch.isfinite(pos.grad).all()


def test_repulsive_loss_counts_shared_tensor_once():
    model = TinyDcls()
    expected = repulsive_term(model.c1.positions)
    assert repulsive_loss(model).item() == pytest.approx(expected.item())
    assert repulsive_loss(nn.Linear(2, 2)).item() == 0.0


# ------------------------------------------------------------------------------------------ EMA
def test_ema_updates_shared_positions_once():
    model = TinyDcls()
    ema = ModelEma(model, decay=0.9)
    old = ema.module.c1.positions.detach().clone()
    with torch.no_grad():
        model.c1.positions.add_(1.0)
    ema.update(model)
    expected = 0.9 * old + 0.1 * model.c1.positions.detach()
    assert torch.allclose(ema.module.c1.positions, expected, atol=1e-6)
    assert ema.module.c1.positions is ema.module.c2.positions  # sharing survives the copy


# ----------------------------------------------------------------------------------- checkpoints
def test_atomic_save_weights_only_and_rng_roundtrip(tmp_path):
    torch.manual_seed(3)
    np.random.seed(3)
    random.seed(3)
    state = rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    path = atomic_save(
        {"rng": state, "x": torch.ones(2), "meta": {"epoch": 1, "name": "a", "v": [1.5, None]}}, tmp_path / "c.pth"
    )
    loaded = load_checkpoint(path)
    assert loaded["meta"] == {"epoch": 1, "name": "a", "v": [1.5, None]}
    set_rng_state(loaded["rng"])
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temp file left


def test_prune_epoch_checkpoints(tmp_path):
    for e in range(5):
        (tmp_path / f"epoch_{e:04d}.pth").write_bytes(b"x")
    prune_epoch_checkpoints(tmp_path, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_0003.pth", "epoch_0004.pth"]


# --------------------------------------------------------------------------------- config checks
def _cfg(**over):
    base = {
        "experiment_name": "t",
        "model": {"name": "dcls_quickstart", "drop_path_rate": None, "kwargs": {}},
        "data": {"name": "fashion_mnist", "root": "/tmp/x", "num_classes": 10, "in_chans": 1},
        "optim": {"name": "adamw", "lr": 1e-3, "weight_decay": 0.05, "pos_lr_scale": 5.0, "layer_decay": None},
        "sched": {"name": "cosine", "warmup_epochs": 1, "warmup_lr": 0.0, "min_lr": 0.0},
        "aug": {"mixup": 0.0, "cutmix": 0.0, "label_smoothing": 0.0},
        "trainer": {
            "epochs": 2,
            "batch_size": 8,
            "accum": 1,
            "amp": "none",
            "device": "cpu",
            "seed": 0,
            "output_dir": "/tmp/out",
            "resume": None,
            "clip_grad": None,
            "clip_mode": "norm",
            "loss": "ce",
            "ema": {"enabled": True, "decay": 0.99},
            "repulsive": {"weight": 1.0, "start_epoch": 0},
            "keep_last": 1,
            "ckpt_interval_steps": 0,
        },
        "logger": {"wandb": False, "wandb_mode": None, "log_interval": 10},
    }
    schema = OmegaConf.structured(Config(data=FashionMNISTDataConfig()))  # the defaults, typed, as composed
    cfg = OmegaConf.merge(schema, base)
    for key, value in over.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_valid_config_passes():
    validate_config(_cfg())


@pytest.mark.parametrize(
    "key,value,fragment",
    [
        ("optim.lr", -1.0, "optim.lr=-1.0 must be > 0"),
        ("optim.lr", 0, "optim.lr=0.0 must be > 0"),  # the schema makes it a float
        ("trainer.epochs", 0, "trainer.epochs=0 must be >= 1"),
        ("model.name", "no_such_net", "model.name='no_such_net' is not a registered timm model"),
        ("optim.name", "adamz", "optim.name='adamz' is not a timm optimizer"),
        ("sched.name", "cosinus", "sched.name='cosinus' is not supported; allowed: cosine"),
        ("trainer.amp", "fp8", "trainer.amp='fp8' is not supported; allowed: none, bf16, fp16"),
        ("trainer.batch_size", 0, "trainer.batch_size=0 must be >= 1"),
        ("trainer.dist_timeout_s", 0, "trainer.dist_timeout_s=0 must be >= 1 (seconds)"),
        ("trainer.device", "tpu", "trainer.device='tpu'"),
        ("trainer.ema.decay", 1.5, "trainer.ema.decay=1.5 must be in (0, 1)"),
        ("trainer.resume", "/no/such/file.pth", "trainer.resume='/no/such/file.pth' is not a file"),
        ("aug.label_smoothing", 1.0, "aug.label_smoothing=1.0 must be in [0, 1)"),
        ("optim.layer_decay", 2.0, "optim.layer_decay=2.0 must be in (0, 1]"),
        ("sched.warmup_epochs", 5, "sched.warmup_epochs=5 must be in [0, trainer.epochs=2]"),
        ("data.root", "???", "data.root=??? is required"),
        ("data.source", "/no/such/dir", "data.source='/no/such/dir' does not exist"),
        ("data.test_img_size", 0, "data.test_img_size=0 must be >= 1"),
        ("data.name", "imagenet", "data.name='imagenet' is not supported; allowed: fashion_mnist, imagefolder"),
        ("logger.wandb_mode", "sometimes", "logger.wandb_mode='sometimes' is not supported"),
    ],
)
def test_config_errors_name_key_value_and_rule(key, value, fragment):
    with pytest.raises(ConfigError) as info:
        validate_config(_cfg(**{key: value}))
    msg = str(info.value)
    assert fragment in msg and "\n" not in msg


def test_type_errors_are_one_line_naming_key_value_and_type():
    with pytest.raises(ValidationError) as info:  # the schema's types reject it (Hydra: at composition)
        _cfg(**{"trainer.epochs": 1.5})
    assert composition_error_line(info.value) == "trainer.epochs=1.5 has the wrong type; allowed: an integer"
    with pytest.raises(ConfigAttributeError) as info:
        _cfg().trainer.epoch = 3
    line = composition_error_line(info.value)
    assert line.startswith("trainer.epoch is not a config key; allowed: epochs, batch_size,") and "\n" not in line


def test_imagefolder_root_must_exist(tmp_path):
    cfg = _cfg(
        **{"data.name": "imagefolder", "data.root": str(tmp_path), "data.train_dir": "train", "data.val_dir": "val"}
    )
    with pytest.raises(ConfigError, match=r"data.root=.*is not a directory"):
        validate_config(cfg)
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    validate_config(cfg)


def test_safe_defaults_are_finite():
    assert math.isfinite(repulsive_loss([torch.zeros(2, 1, 1, 1)]).item())  # K=1: no pairs
