"""The model factory (dcls_vision/models/factory.py and its readers, checkpoint_formats.py) on a real tiny training
run's checkpoints: config → model, checkpoint → model (model / EMA weights, data config, provenance), DDP prefixes,
formats, timm specs, and the downstream backbone reading its checkpoint through the factory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dcls_vision.data.fashion_mnist import DEFAULT_SOURCE
from dcls_vision.engine import train
from dcls_vision.models.checkpoint_formats import CHECKPOINT_FORMATS, ModelLoadError, read_checkpoint
from dcls_vision.models.factory import build_model, load_model
from dcls_vision.utils.io import atomic_save, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
EXTRA = os.environ.get("DCLS_TEST_HYDRA_OVERRIDES", "").split()
TINY = ["+model.kwargs.dim=16", "+model.kwargs.depth=2"]
needs_fashion = pytest.mark.skipif(
    not Path(DEFAULT_SOURCE, "t10k-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)


def _cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return compose("config", overrides=["experiment=quickstart", *TINY, *overrides])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 1-epoch quickstart training (128 images, 8 steps, EMA on): last.pth, best.pth, best_ema.pth."""
    out = tmp_path_factory.mktemp("run")
    cfg = _cfg(
        "data.train_subset=128",
        "data.val_subset=32",
        "data.num_workers=0",
        "trainer.batch_size=16",
        "sched=constant",
        "trainer.epochs=1",
        "trainer.ema.enabled=true",
        "trainer.ema.decay=0.5",
        "logger.wandb=false",
        "logger.progress=false",
        *EXTRA,
        f"trainer.output_dir={out}",
    )
    train(cfg)
    return out


def _same_weights(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> bool:
    got = model.state_dict()
    return set(got) == set(state) and all(torch.equal(got[k], state[k]) for k in got)


# ------------------------------------------------------------------------------------------ build_model
def test_build_model_from_a_composed_config():
    cfg = _cfg("model.drop_path_rate=0.1")
    model = build_model(cfg, 7, 2)
    assert type(model).__name__ == "QuickstartNet" and model.stem[0].in_channels == 2
    assert model.num_classes == 7 and model.eval()(torch.randn(2, 2, 28, 28)).shape == (2, 7)
    torch.manual_seed(0)
    a = build_model(cfg, 7, 2)  # the whole run config (the trainer's call) ...
    torch.manual_seed(0)
    b = build_model(cfg.model, 7, 2)  # ... or its model group: the same network
    assert _same_weights(b, a.state_dict())
    rates = [m.drop_prob for m in model.modules() if type(m).__name__ == "DropPath"]
    assert rates and max(rates) == pytest.approx(0.1)  # model.drop_path_rate reaches timm


# ------------------------------------------------------------------------------------ our checkpoints
@needs_fashion
def test_load_model_rebuilds_the_trained_model(run_dir):
    state = load_checkpoint(run_dir / "last.pth")
    loaded = load_model(run_dir / "last.pth")
    assert _same_weights(loaded.model, state["model"]) and not loaded.model.training
    assert (loaded.weights, loaded.provenance.format, loaded.provenance.key) == ("model", "ours", "model")
    assert loaded.source == str(run_dir / "last.pth") and loaded.name == "dcls_quickstart"
    data = state["config"]["data"]
    assert (loaded.num_classes, loaded.in_chans, loaded.img_size) == (10, 1, (28, 28))
    assert loaded.data.mean == tuple(data["mean"]) and loaded.data.crop_pct == data["crop_pct"]
    assert loaded.data.interpolation == data["interpolation"]
    assert loaded.epoch == 0 and loaded.stored_metrics is None and loaded.config.model.kwargs.dim == 16
    from_dir = load_model(str(run_dir))  # a run dir means its last.pth
    assert from_dir.source == str(run_dir / "last.pth")


@needs_fashion
def test_ema_weights_and_their_label(run_dir):
    state = load_checkpoint(run_dir / "last.pth")
    assert not torch.equal(state["ema"]["head.weight"], state["model"]["head.weight"])
    ema = load_model(run_dir / "last.pth", use_ema=True)
    assert ema.weights == "ema" and ema.provenance.key == "ema" and _same_weights(ema.model, state["ema"])
    best_ema = load_checkpoint(run_dir / "best_ema.pth")
    for use_ema in (False, True):  # best_ema.pth holds EMA weights under "model": "ema" either way
        loaded = load_model(run_dir / "best_ema.pth", use_ema=use_ema)
        assert loaded.weights == "ema" and _same_weights(loaded.model, best_ema["model"])
        assert loaded.stored_metrics == best_ema["metrics"]
    with pytest.raises(ModelLoadError, match=r"use_ema=true but checkpoint='.*best\.pth' holds no EMA") as info:
        load_model(run_dir / "best.pth", use_ema=True)
    assert info.value.reason == "no_ema" and "\n" not in str(info.value)


@needs_fashion
def test_module_prefix_is_stripped(run_dir, tmp_path):
    state = load_checkpoint(run_dir / "best.pth")
    ddp = {**state, "model": {f"module.{k}": v for k, v in state["model"].items()}}
    atomic_save(ddp, tmp_path / "ddp.pth")
    sd, info = read_checkpoint(tmp_path / "ddp.pth")
    assert set(sd) == set(state["model"]) and info.format == "ours"
    loaded = load_model(tmp_path / "ddp.pth")
    assert _same_weights(loaded.model, state["model"])


@needs_fashion
def test_unknown_format_names_the_file_and_the_formats(run_dir, tmp_path):
    bad = tmp_path / "weights.pth"
    torch.save({"state_dict": {}, "meta": 1}, bad)
    with pytest.raises(ModelLoadError) as info:
        load_model(bad)
    msg = str(info.value)
    assert "\n" not in msg and info.value.reason == "unknown_format"
    assert msg.startswith(f"checkpoint={str(bad)!r} is in none of the checkpoint formats read here")
    assert all(f"{fmt.name}:" in msg for fmt in CHECKPOINT_FORMATS) and "'model' and 'config'" in msg
    with pytest.raises(ModelLoadError, match=r"does not exist; allowed: a file in a format read here: ours"):
        load_model(tmp_path / "missing.pth")
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": torch.nn.Linear(1, 1)}, pickled)  # a pickled module: refused by weights_only=True
    with pytest.raises(ModelLoadError, match="cannot be loaded with weights_only=True") as info:
        load_model(pickled)
    assert "\n" not in str(info.value)
    # eval.py reads only our format: a plain state dict (understood elsewhere) is refused there, naming "ours" only
    plain = tmp_path / "plain.pth"
    torch.save(load_checkpoint(run_dir / "best.pth")["model"], plain)
    with pytest.raises(ModelLoadError, match=r"allowed: ours: a train\.py run's last\.pth[^;]*$"):
        load_model(plain, formats=("ours",))


@needs_fashion
def test_plain_state_dict_needs_a_model_name(run_dir, tmp_path):
    weights = load_checkpoint(run_dir / "best.pth")["model"]
    torch.save({"state_dict": {f"module.{k}": v for k, v in weights.items()}}, tmp_path / "mm.pth")
    with pytest.raises(ModelLoadError, match="stores no model config; allowed: pass model_name=") as info:
        load_model(tmp_path / "mm.pth")
    assert info.value.reason == "no_config"
    loaded = load_model(tmp_path / "mm.pth", model_name="dcls_quickstart", num_classes=10, in_chans=1, dim=16, depth=2)
    assert (loaded.provenance.format, loaded.provenance.key, loaded.weights) == ("wrapped", "state_dict", "model")
    assert _same_weights(loaded.model, weights) and loaded.in_chans == 1 and loaded.num_classes == 10


# -------------------------------------------------------------------------------------------- timm specs
def test_timm_spec():
    loaded = load_model("dcls_quickstart:dim=16,depth=2", in_chans=1)
    assert loaded.weights == "init" and loaded.provenance.format == "timm"
    assert loaded.source == "timm:dcls_quickstart:dim=16,depth=2" and loaded.name == "dcls_quickstart:dim=16,depth=2"
    assert loaded.model_cfg == {"name": "dcls_quickstart", "kwargs": {"dim": 16, "depth": 2, "in_chans": 1}}
    assert loaded.in_chans == 1 and len(loaded.mean) == 1 and not loaded.model.training
    assert load_model("timm:resnet18").num_classes == 1000
    with pytest.raises(ModelLoadError, match="model 'resnet_nope' is not a registered timm model; allowed"):
        load_model("resnet_nope")
    with pytest.raises(ModelLoadError, match="'dim' is not key=value"):
        load_model("dcls_quickstart:dim")


# ------------------------------------------------------------------------ downstream, through the factory
def test_downstream_backbone_reads_through_the_factory(tmp_path):
    """A DDP-saved trainer checkpoint of a tiny ConvNeXt-dcls: the backbone gets its EMA weights, unprefixed."""
    pytest.importorskip("mmengine")
    from dcls_vision.downstream.backbone import DclsBackbone
    from dcls_vision.downstream.weights import read_checkpoint as downstream_read

    kwargs = {"dims": [16, 32, 64, 128], "depths": [1, 1, 2, 1], "dcls_dilated_kernel_size": 9, "dcls_kernel_count": 10}
    cfg = {"model": {"name": "convnext_tiny_dcls", "kwargs": kwargs}, "data": {"num_classes": 4, "in_chans": 3}}
    model, ema = build_model(cfg, 4, 3), build_model(cfg, 4, 3)
    prefixed = {
        name: {f"module.{k}": v for k, v in m.state_dict().items()} for name, m in (("model", model), ("ema", ema))
    }
    atomic_save({**prefixed, "optimizer": {}, "config": cfg}, tmp_path / "last.pth")
    bb = DclsBackbone(model_kwargs=kwargs, checkpoint=str(tmp_path / "last.pth"), checkpoint_key="ema")
    bb.init_weights()
    ref = ema.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in bb.body.state_dict().items())
    assert not torch.equal(bb.body.stem[0].weight, model.stem[0].weight)
    atomic_save({"model": model.state_dict(), "epoch": 0, "metrics": {}, "config": cfg}, tmp_path / "best.pth")
    with pytest.raises(ValueError, match="checkpoint_key='ema' has no weights in best.pth .* allowed for this file"):
        downstream_read(tmp_path / "best.pth", "ema")
    with pytest.raises(FileNotFoundError, match="checkpoint='/nonexistent/last.pth' does not exist"):
        downstream_read("/nonexistent/last.pth")
    state, config = downstream_read(tmp_path / "best.pth")
    assert config["model"]["name"] == "convnext_tiny_dcls" and set(state) == set(ref)
    OmegaConf.create(config)  # the stored run config stays a plain, OmegaConf-able dict
