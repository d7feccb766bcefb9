"""Every experiment composes, validates, and carries its reference recipe (docs/design.md §3, docs/training.md
"Recipes"); the schemas changed no value but one, and issue 16 changed the values listed in ISSUE16 (each against its
source)."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dcls_vision.engine import ConfigError, validate_config
from dcls_vision.robustness.schema import register_eval_config

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml") if not p.stem.startswith("recipe_"))
ALL_EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
BEFORE = json.loads((Path(__file__).parent / "fixtures" / "configs_before_schemas.json").read_text())
# Thesis: the repulsive loss (weight 1 from epoch 20) is used for the bilinear DCLS models only.
BILINEAR_DCLS = [
    "convnext_tiny_dcls",
    "convnext_small_dcls",
    "convnext_base_dcls",
    "convformer_s18_dcls",
    "convformer_s18_dcls_k34",
    "resnet50_dcls",
    "resnet50_dcls_k6",
]
CONVNEXT_RECIPE = [
    "convnext_tiny",
    "convnext_small",
    "convnext_base",
    "convnext_tiny_dcls",
    "convnext_small_dcls",
    "convnext_base_dcls",
    "convnext_tiny_dcls_gauss",
]
CONVFORMER_RECIPE = ["convformer_s18", "convformer_s18_dcls", "convformer_s18_dcls_gauss", "convformer_s18_dcls_k34"]
FASTVIT_RECIPE = ["fastvit_sa24", "fastvit_sa24_dcls"]
A3_RECIPE = ["resnet50", "resnet50_dcls", "resnet50_dcls_k6"]

# Issue 16, against the reference code (docs/training.md "Recipes"): new keys everywhere, per recipe the values changed.
NEW_KEYS = {
    "optim.lr_scale_rule": None,
    "sched.warmup_prefix": False,
    "aug.train_interpolation": None,
    "trainer.repulsive.start_epoch": 21,  # DCLS engine.py: `if epoch > 20` (0-based)
}
CONVNEXT_16 = {  # ConvNeXt utils.cosine_scheduler (also ConvNeXt-dcls); lr 4e-3 is for 4096
    "optim.lr_base_batch": 4096,
    "optim.lr_scale_rule": "sqrt",
    "sched.warmup_prefix": True,
}
TIMM_TRAIN_PY_16 = {  # what the metaformer and ml-fastvit train.py (timm's) share: per-epoch LR, 300 + 10 cooldown
    **CONVNEXT_16,
    "sched.warmup_prefix": False,
    "sched.warmup_lr": 1e-6,
    "sched.min_lr": 1e-5,
    "sched.cooldown_epochs": 10,
    "sched.step_on_epochs": True,
    "trainer.epochs": 310,
}
CONVFORMER_16 = {  # sail-sg/metaformer train_convformer_s18.sh + train.py defaults (timm 0.6.11), default_cfgs
    **TIMM_TRAIN_PY_16,
    "trainer.ema.enabled": False,
    "data.crop_pct": 1.0,
    "aug.train_interpolation": "random",
}
FASTVIT_16 = {  # apple/ml-fastvit README (SA24) + train.py defaults (timm >= 0.9), timm default_cfgs
    **TIMM_TRAIN_PY_16,
    "optim.lr_base_batch": 1024,
    "data.img_size": 256,
    "data.crop_pct": 0.9,
    "aug.mixup": 0.2,
}
A3_16 = {  # timm train.py lr_base_scale for LAMB; the RSB-era timm scheduler steps per epoch
    "optim.lr_base_batch": 2048,
    "optim.lr_scale_rule": "sqrt",
    "sched.step_on_epochs": True,
}
ISSUE16 = {
    **{n: CONVNEXT_16 for n in ["recipe_convnext", *CONVNEXT_RECIPE]},
    **{n: CONVFORMER_16 for n in ["recipe_convformer", *CONVFORMER_RECIPE]},
    **{n: FASTVIT_16 for n in ["recipe_fastvit", *FASTVIT_RECIPE]},
    **{n: A3_16 for n in ["recipe_a3", *A3_RECIPE]},
}
ISSUE16["convformer_s18_dcls_k34"] = {  # new: convformer_s18_dcls with the 17/34 model
    **CONVFORMER_16,
    "model.name": "convformer_s18_dcls_k34",
    "experiment_name": "convformer_s18_dcls_k34",
}
# files added by issue 16: what they were part of before
BEFORE_OF = {
    "recipe_convformer": "recipe_convnext",
    "recipe_fastvit": "fastvit_sa24",
    "convformer_s18_dcls_k34": "convformer_s18_dcls",
}


@functools.cache
def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides))


@functools.cache
def _imagenet_root() -> Path:
    root = Path(tempfile.mkdtemp(prefix="imagenet_"))
    (root / "train").mkdir()
    (root / "val").mkdir()
    return root


def _experiment(name: str):
    return _compose(f"experiment={name}", f"data.root={_imagenet_root()}")


AUDIO_ROWS = [f"audioset_{m}{d}" for m in ("convnext_tiny", "convformer_s18", "fastvit_sa24") for d in ("", "_dcls")]


def test_every_thesis_row_has_an_experiment():
    rows = CONVNEXT_RECIPE + CONVFORMER_RECIPE + FASTVIT_RECIPE + A3_RECIPE + ["quickstart", "quickstart_baseline"]
    assert set(rows) <= set(EXPERIMENTS)
    assert set(AUDIO_ROWS + ["audio_quickstart", "audio_quickstart_baseline"]) <= set(EXPERIMENTS)  # Table 5.1


@pytest.mark.parametrize("name", AUDIO_ROWS)
def test_audioset_recipe(name):
    """DCLS-Audio: drop path 0.4, BCE, 60 epochs, global batch 4096 on 8 GPUs, LAMB for ConvFormer, AdamW else."""
    cfg = _experiment(name)
    per_gpu_x_accum = cfg.trainer.batch_size * cfg.trainer.accum
    assert (cfg.model.name, cfg.model.drop_path_rate, cfg.trainer.loss) == (f"{name[9:]}_audio", 0.4, "bce")
    assert (cfg.trainer.epochs, per_gpu_x_accum * 8, cfg.optim.lr, cfg.optim.weight_decay) == (60, 4096, 4e-3, 0.05)
    assert cfg.optim.name == ("lamb" if "convformer" in name else "adamw")
    assert (cfg.data.name, cfg.data.num_classes, cfg.aug.mixup, cfg.aug.label_smoothing) == ("audioset", 527, 0.8, 0.1)
    assert (cfg.sched.warmup_epochs, cfg.sched.min_lr, cfg.aug.reprob) == (20, 1e-6, 0.25)
    # DCLS-Audio main.py: ConvNeXt's utils.cosine_scheduler (warm-up, then the cosine over the remaining epochs)
    assert (cfg.sched.warmup_prefix, cfg.optim.lr_base_batch, cfg.optim.lr_scale_rule) == (True, 4096, "sqrt")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(name):
    cfg = _experiment(name)
    assert cfg.experiment_name == name
    if cfg.model.from_scratch is False:  # issue 29: the recipe starts from ImageNet weights, never silently not
        with pytest.raises(ConfigError, match=rf"init_checkpoint=None but experiment '{name}' starts from pretrained"):
            validate_config(cfg)
        cfg.model.init_checkpoint = __file__  # any existing file passes the config check
    validate_config(cfg)  # the model is registered, every value is in range


@pytest.mark.parametrize("name", CONVNEXT_RECIPE)
def test_convnext_recipe(name):
    cfg = _experiment(name)
    assert cfg.model.name == name
    assert cfg.trainer.batch_size * cfg.trainer.accum * 8 == 4096 == cfg.optim.lr_base_batch  # documented: 8 GPUs
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 4e-3, 0.05)
    assert cfg.optim.lr_scale_rule == "sqrt"  # timm train.py's lr_base_scale for AdamW (the recipe has no rule)
    assert (cfg.trainer.epochs, cfg.sched.warmup_epochs, cfg.sched.warmup_lr, cfg.sched.min_lr) == (300, 20, 0.0, 1e-6)
    assert cfg.sched.warmup_prefix and not cfg.sched.step_on_epochs and cfg.sched.cooldown_epochs == 0
    assert cfg.trainer.ema.enabled and cfg.trainer.ema.decay == 0.9999
    assert (cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.label_smoothing, cfg.aug.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert cfg.aug.auto_augment == "rand-m9-mstd0.5-inc1"
    assert (cfg.data.img_size, cfg.data.crop_pct, cfg.aug.train_interpolation) == (224, 0.875, None)
    assert (cfg.trainer.repulsive.weight, cfg.trainer.repulsive.start_epoch) == (float(name in BILINEAR_DCLS), 21)
    assert cfg.optim.pos_lr_scale == 5.0
    expected_dp = {"small": 0.4, "base": 0.5}.get(name.split("_")[1], 0.1)
    assert cfg.model.drop_path_rate == expected_dp


@pytest.mark.parametrize("name", CONVFORMER_RECIPE)
def test_convformer_recipe(name):
    """sail-sg/metaformer scripts/convformer/train_convformer_s18.sh, its train.py defaults, timm default_cfgs."""
    cfg = _experiment(name)
    assert (cfg.model.name, cfg.model.drop_path_rate) == (name, 0.2)
    assert cfg.trainer.batch_size * cfg.trainer.accum * 8 == 4096 == cfg.optim.lr_base_batch
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 4e-3, 0.05)
    assert cfg.optim.lr_scale_rule == "sqrt"  # timm train.py's lr_base_scale for AdamW (the recipe has no rule)
    assert (cfg.sched.warmup_epochs, cfg.sched.warmup_lr, cfg.sched.min_lr) == (20, 1e-6, 1e-5)
    assert (cfg.trainer.epochs, cfg.sched.cooldown_epochs, cfg.sched.step_on_epochs) == (310, 10, True)
    assert not cfg.sched.warmup_prefix and not cfg.trainer.ema.enabled  # --model-ema is off by default
    assert (cfg.data.img_size, cfg.data.crop_pct, cfg.aug.train_interpolation) == (224, 1.0, "random")
    assert (cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.label_smoothing, cfg.aug.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert cfg.aug.auto_augment == "rand-m9-mstd0.5-inc1"
    assert (cfg.trainer.repulsive.weight, cfg.trainer.repulsive.start_epoch) == (float(name in BILINEAR_DCLS), 21)


@pytest.mark.parametrize("name", FASTVIT_RECIPE)
def test_fastvit_recipe(name):
    """apple/ml-fastvit README (FastViT-SA24, without distillation), its train.py defaults, timm default_cfgs."""
    cfg = _experiment(name)
    assert (cfg.model.name, cfg.model.drop_path_rate) == (name, 0.1)
    assert cfg.trainer.batch_size * cfg.trainer.accum * 8 == 1024 == cfg.optim.lr_base_batch  # -b 128 x 8 GPUs
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("adamw", 1e-3, 0.05)
    assert cfg.optim.lr_scale_rule == "sqrt"  # timm train.py's lr_base_scale for AdamW (the recipe has no rule)
    assert (cfg.sched.warmup_epochs, cfg.sched.warmup_lr, cfg.sched.min_lr) == (5, 1e-6, 1e-5)
    assert (cfg.trainer.epochs, cfg.sched.cooldown_epochs, cfg.sched.step_on_epochs) == (310, 10, True)
    assert not cfg.sched.warmup_prefix and cfg.trainer.ema.enabled and cfg.trainer.ema.decay == 0.9995
    assert (cfg.data.img_size, cfg.data.test_img_size, cfg.data.crop_pct) == (256, None, 0.9)  # eval at 256 too
    assert (cfg.aug.mixup, cfg.aug.cutmix, cfg.aug.label_smoothing, cfg.aug.reprob) == (0.2, 1.0, 0.1, 0.25)
    assert cfg.aug.auto_augment == "rand-m9-mstd0.5-inc1" and cfg.aug.train_interpolation is None  # bicubic
    assert cfg.trainer.repulsive.weight == 0.0  # gauss


@pytest.mark.parametrize("name", A3_RECIPE)
def test_a3_recipe(name):
    cfg = _experiment(name)
    assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay) == ("lamb", 8e-3, 0.02)
    assert (cfg.trainer.epochs, cfg.trainer.batch_size * cfg.trainer.accum * 8) == (100, 2048)
    assert (cfg.optim.lr_base_batch, cfg.optim.lr_scale_rule) == (2048, "sqrt")
    assert (cfg.trainer.loss, cfg.trainer.bce_target_thresh, cfg.data.img_size) == ("bce", 0.2, 160)
    assert (cfg.aug.mixup, cfg.aug.cutmix, cfg.sched.warmup_epochs) == (0.1, 1.0, 5)
    assert (cfg.sched.warmup_lr, cfg.sched.min_lr, cfg.sched.warmup_prefix) == (1e-4, 1e-6, False)
    assert cfg.sched.step_on_epochs and cfg.sched.cooldown_epochs == 0
    assert (cfg.data.test_img_size, cfg.data.crop_pct) == (224, 0.95)  # train 160, evaluate 224
    assert not cfg.trainer.ema.enabled and cfg.model.drop_path_rate == 0.0  # A3: no EMA, no stochastic depth
    assert (cfg.trainer.repulsive.weight, cfg.trainer.repulsive.start_epoch) == (float(name in BILINEAR_DCLS), 21)


def test_quickstart_baseline_shares_the_quickstart_recipe():
    a, b = _experiment("quickstart"), _experiment("quickstart_baseline")
    assert (a.model.name, b.model.name) == ("dcls_quickstart", "dcls_quickstart_baseline")
    for section in ("optim", "sched", "aug", "data"):
        assert a[section] == b[section], section
    assert {k: v for k, v in a.trainer.items() if k != "output_dir"} == {
        k: v for k, v in b.trainer.items() if k != "output_dir"
    }
    assert (a.trainer.epochs, a.trainer.batch_size, a.optim.lr, a.aug.pad_crop, a.aug.mixup) == (3, 64, 5e-3, 0, 0.0)


def test_kernel_size_study_is_one_sweep_of_the_thesis_study():
    """Fig. 6.1 on the embedded data: sizes 3..21 + the dense baseline, 10 and 100 epochs, 3 seeds, one `-m`."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=kernel_size_study"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    sizes = str(params["model.kwargs.dilated_kernel_size"]).split(",")
    assert sizes[0] == "dense" and [int(s) for s in sizes[1:]] == [3, 7, 13, 21]
    assert (str(params["trainer.epochs"]), str(params["trainer.seed"])) == ("10,100", "0,1,2")
    assert (cfg.model.name, cfg.data.name, cfg.experiment_name) == (
        "dcls_kernel_study",
        "fashion_mnist",
        "kernel_size_study",
    )
    assert (cfg.trainer.val_interval, cfg.data.train_subset) == (10, 192)  # 10-epoch runs validate once


def test_any_value_is_overridable():
    cfg = _compose(
        "experiment=convnext_tiny_dcls",
        "optim.lr=1e-3",
        "trainer.accum=1",
        "+model.kwargs.foo=1",
        "trainer.output_dir=/tmp/x",
    )
    assert (cfg.optim.lr, cfg.trainer.accum, cfg.model.kwargs.foo, cfg.trainer.output_dir) == (1e-3, 1, 1, "/tmp/x")


def _flat(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# keys added after the fixture was taken, with their defaults (no earlier value changed)
ADDED_SINCE = {
    "trainer.compile": False,  # issue 16: timm's switches (aug.train_interpolation: NEW_KEYS)
    "trainer.cudnn_benchmark": True,
    "trainer.tf32": True,
    "trainer.head_bias_prior": False,  # issue 18: multi-label quickstart only
    "trainer.val_interval": 1,  # issue 19: the kernel-size study's 100-epoch runs validate every 10 epochs
    "trainer.eval_only": False,  # issue 28: evaluate a published (e.g. DCLS-Audio) checkpoint without training
    "trainer.resume_schedule": "checkpoint",  # issue 31: the LR schedule on resume (checkpoint = as before)
    "model.from_scratch": None,  # issue 29: the AudioSet recipes say whether they start from ImageNet weights
    "optim.positions": None,  # issue 27: SNN delays' own optimizer/scheduler; null = positions in optim (5x lr)
    "trainer.sigma_schedule.enabled": False,  # issue 27: the SNNs' frozen-σ schedule
    "trainer.sigma_schedule.start": None,
    "trainer.sigma_schedule.end": 0.23,
    "trainer.sigma_schedule.until": 0.25,
    "trainer.flush_denormal": False,  # issue 27: CPU SNN runs flush denormal floats
}


def _before(name: str | None) -> dict:
    expected = {**BEFORE["default"], **ADDED_SINCE}
    expected.update(BEFORE["experiments"][BEFORE_OF.get(name, name)] if name else {})
    if name in BEFORE_OF and name.startswith("recipe_"):  # a new recipe file: model and name are the experiments'
        expected = {k: v for k, v in expected.items() if k != "experiment_name" and not k.startswith("model.")}
        expected.update({k: BEFORE["default"][k] for k in BEFORE["default"] if k.startswith("model.")})
        expected.update({k: v for k, v in ADDED_SINCE.items() if k.startswith("model.")})
        expected["experiment_name"] = BEFORE["default"]["experiment_name"]
    return {k: v for k, v in expected.items() if v != "<absent>"}


def _typed(flat: dict) -> dict:
    return {k: (type(v).__name__, v) for k, v in flat.items()}  # 20 != 20.0 here: types must not change


@pytest.mark.parametrize("name", [None, *(n for n in ALL_EXPERIMENTS if n in BEFORE["experiments"] or n in BEFORE_OF)])
def test_composition_equals_the_yaml_only_configs_but_for_repulsive_weight_and_issue16(name):
    cfg = _compose(*([f"experiment={name}"] if name else []))
    now = _flat(OmegaConf.to_container(cfg, resolve=False))
    before = _before(name)
    assert before.pop("trainer.repulsive.weight") == 1.0  # YAML said 1.0 for every experiment, gauss/baselines too
    assert now.pop("trainer.repulsive.weight") == float(name in BILINEAR_DCLS)
    before.update({**NEW_KEYS, **ISSUE16.get(name, {})})
    assert _typed(now) == _typed(before)


def test_eval_config_composition_is_unchanged():
    register_eval_config()  # as eval.py does before composing
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval")
    assert _typed(_flat(OmegaConf.to_container(cfg, resolve=False))) == _typed(BEFORE["eval"])


@pytest.mark.parametrize("name", ALL_EXPERIMENTS)
def test_repulsive_loss_is_on_for_bilinear_dcls_from_0_based_epoch_21_only(name):
    rep = _compose(f"experiment={name}").trainer.repulsive
    assert (rep.weight, rep.start_epoch) == ((1.0, 21) if name in BILINEAR_DCLS else (0.0, 21)), name
    assert _compose().trainer.repulsive.weight == 0.0  # the schema default: off


def test_typos_and_wrong_types_fail_at_composition_but_kwargs_stay_open():
    from hydra.errors import ConfigCompositionException

    for bad in ("trainer.epoch=3", "trainer.epochs=abc", "model.kwargs.dim=8"):  # kwargs: add keys with +
        with pytest.raises(ConfigCompositionException):
            _compose("experiment=quickstart", bad)
    cfg = _compose("experiment=quickstart", "+model.kwargs.dim=8", "+optim.kwargs.foo=[1,2]")
    assert (cfg.model.kwargs.dim, list(cfg.optim.kwargs.foo)) == (8, [1, 2])


@pytest.mark.parametrize(
    "override,line",
    [
        ("trainer.epochs=abc", "ConfigError: trainer.epochs='abc' has the wrong type; allowed: an integer"),
        (
            "data.name=imagenet",
            "ConfigError: data.name='imagenet' is not supported; allowed: fashion_mnist, imagefolder, audioset, spikes",
        ),
    ],
)
def test_cli_config_errors_are_one_line_exit_2(tmp_path, override, line):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "experiment=quickstart",
            override,
            f"trainer.output_dir={tmp_path / 'run'}",
            "logger.wandb=false",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (proc.returncode, proc.stderr.strip().splitlines()[-1:]) == (2, [line]), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "group,option",
    [("data", "fashion_mnist"), ("data", "imagenet"), ("data", "spiking_digits"), ("data", "ssc"), ("optim", "sgd")],
)
def test_one_option_file_loads_as_hydra_composes_it(group, option):
    from dcls_vision.engine.schema import load_option  # robustness/fashion_folder.py reads data/ this way

    composed = _compose(f"{group}={option}")[group]
    assert OmegaConf.to_container(load_option(CONFIG_DIR / group / f"{option}.yaml")) == OmegaConf.to_container(
        composed
    )
