"""Published weights through the one factory load path (issue 14 items 2-4): timm baselines from a local file
(``model.pretrained_file``), any checkpoint format in eval.py / analysis / downstream, fine-tuning from a
checkpoint (``model.init_checkpoint``). Nothing is downloaded: timm's download functions are made to fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir
from PIL import Image
from safetensors.torch import save_file
from timm.data import create_transform, resolve_data_config

import dcls_vision.models  # noqa: F401  (registers the DCLS models)
from dcls_vision.engine.checkpoint import load_checkpoint
from dcls_vision.engine.config import validate_config
from dcls_vision.engine.trainer import Trainer
from dcls_vision.models.checkpoint_formats import ModelLoadError
from dcls_vision.models.factory import build_model
from dcls_vision.models.factory import load_model as load_model_from
from dcls_vision.models.finetune_init import init_from_checkpoint
from dcls_vision.ops import dcls_parameters
from dcls_vision.robustness import EvalConfigError, load_model, run_eval
from dcls_vision.robustness.classes import imagenet_synsets

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
N_IMAGES, N_RIGHT = 12, 8  # the val folder: 8 images filed under the class the model predicts, 4 under another


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    """Any timm download attempt fails the test (the file must be what is loaded)."""
    import timm.models._builder as builder

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args!r}")

    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, name, refuse)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """resnet18 (random weights, seed 0) as timm.safetensors / {"model": sd}, and a val folder whose labels make
    its top-1 exactly N_RIGHT / N_IMAGES when, and only when, these weights and timm's eval transform are used."""
    root = tmp_path_factory.mktemp("baseline")
    torch.manual_seed(0)
    model = timm.create_model("resnet18").eval()
    save_file(model.state_dict(), str(root / "resnet18.safetensors"))
    torch.save({"model": model.state_dict()}, root / "resnet18_wrapped.pth")
    transform = create_transform(**resolve_data_config({}, model=model))  # timm's own eval preprocessing
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)) for _ in range(N_IMAGES)]
    with torch.no_grad():
        pred = model(torch.stack([transform(im) for im in images])).argmax(1).tolist()
    synsets = imagenet_synsets()
    for i, (im, p) in enumerate(zip(images, pred, strict=True)):
        label = p if i < N_RIGHT else (p + 1) % 1000
        folder = root / "val" / synsets[label]
        folder.mkdir(parents=True, exist_ok=True)
        im.save(folder / f"{i}.png")
    return root, model


def _eval_py(out: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "eval.py", f"output_dir={out}", "benchmarks=[val]", "device=cpu", "progress=false"]
    return subprocess.run([*cmd, *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)


def _eval_cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("eval", overrides=[f"output_dir={out}", "progress=false", "device=cpu", *overrides])


def test_timm_baseline_from_a_local_file_evaluates_like_the_model_in_memory(baseline, tmp_path):
    root, _ = baseline
    expected = 100.0 * N_RIGHT / N_IMAGES
    runs = {
        "checkpoint": ("checkpoint=" + str(root / "resnet18.safetensors"), "model.name=resnet18"),
        "pretrained_file": ("model.name=resnet18", f"model.pretrained_file={root / 'resnet18.safetensors'}"),
    }
    for label, overrides in runs.items():
        proc = _eval_py(tmp_path / label, *overrides, f"val.root={root / 'val'}")
        assert proc.returncode == 0, proc.stderr[-2000:]
        val = json.loads((tmp_path / label / "results.json").read_text())["benchmarks"]["val"]
        assert (val["samples"], round(val["top1"], 4)) == (N_IMAGES, round(expected, 4)), (label, val)


def test_eval_reads_a_wrapped_state_dict_with_model_name(baseline, tmp_path):
    root, _ = baseline
    wrapped = root / "resnet18_wrapped.pth"
    res = run_eval(_eval_cfg(tmp_path / "ok", f"checkpoint={wrapped}", "model.name=resnet18", f"val.root={root}/val"))
    assert res["benchmarks"]["val"]["top1"] == pytest.approx(100.0 * N_RIGHT / N_IMAGES)
    with pytest.raises(EvalConfigError, match=r"stores no model config.*model\.name="):
        run_eval(_eval_cfg(tmp_path / "no_name", f"checkpoint={wrapped}", f"val.root={root}/val"))
    proc = _eval_py(tmp_path / "cli", f"checkpoint={wrapped}")  # the one-line error of the CLI, exit 2
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "model.name=" in proc.stderr


def test_eval_data_config_comes_from_timm_pretrained_cfg_and_is_overridable(baseline):
    root, _ = baseline
    plain = load_model(root / "resnet18.safetensors", model={"name": "resnet18"})
    timm_cfg = resolve_data_config({}, model=timm.create_model("resnet18"))
    data = plain.config.data
    assert (data.num_classes, data.img_size, data.crop_pct, data.interpolation) == (
        1000,
        timm_cfg["input_size"][1],
        timm_cfg["crop_pct"],
        timm_cfg["interpolation"],
    )
    assert tuple(data.mean) == pytest.approx(timm_cfg["mean"])
    overrides = {"crop_pct": 1.0, "img_size": 160}
    over = load_model(root / "resnet18.safetensors", model={"name": "resnet18"}, data=overrides)
    assert (over.config.data.crop_pct, over.config.data.img_size) == (1.0, 160)
    mm = root / "mmengine_like.pth"  # a foreign "config" entry is not a run config: timm's data config again
    torch.save({"state_dict": torch.load(root / "resnet18_wrapped.pth")["model"], "config": {"lr": 0.1}}, mm)
    assert load_model(mm, model={"name": "resnet18"}).config.data.crop_pct == timm_cfg["crop_pct"]


def test_pretrained_file_goes_through_timm_and_adapts_head_and_stem(baseline, tmp_path):
    root, model = baseline
    cfg = {"name": "resnet18", "pretrained_file": str(root / "resnet18.safetensors")}
    tuned = build_model(cfg, num_classes=10, in_chans=1)  # timm: head dropped (fresh), RGB stem summed to 1 channel
    ref, got = model.state_dict(), tuned.state_dict()
    assert got["fc.weight"].shape == (10, 512)
    assert torch.allclose(got["conv1.weight"], ref["conv1.weight"].sum(1, keepdim=True))
    assert all(torch.equal(got[k], ref[k]) for k in ref if not k.startswith(("fc.", "conv1.")))
    run = {"model": {"name": "resnet18", "kwargs": {}, "pretrained_file": str(tmp_path / "moved.safetensors")}}
    torch.save({"model": model.state_dict(), "config": run}, tmp_path / "best.pth")  # a run fine-tuned from a file
    rebuilt = load_model_from(tmp_path / "best.pth")  # its weights, without reloading the (moved) timm file
    assert all(torch.equal(v, ref[k]) for k, v in rebuilt.model.state_dict().items())
    with pytest.raises(ModelLoadError, match=r"model.pretrained_file='/nope.safetensors' does not exist"):
        build_model({"name": "resnet18", "pretrained_file": "/nope.safetensors"}, 1000, 3)
    with pytest.raises(ModelLoadError, match=r"convnext_tiny_dcls.*model.init_checkpoint"):
        build_model({"name": "convnext_tiny_dcls", "pretrained_file": cfg["pretrained_file"]}, 1000, 3)


def test_pretrained_file_and_init_checkpoint_fail_in_one_line_before_any_work(tmp_path):
    for key in ("model.pretrained_file", "model.init_checkpoint"):
        cmd = [sys.executable, "train.py", f"{key}={tmp_path / 'missing.pth'}", f"trainer.output_dir={tmp_path}/r"]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert proc.stderr.startswith(f"ConfigError: {key}=") and "missing.pth" in proc.stderr


# ----------------------------------------------------------------------------------- fine-tuning
TINY = [
    "experiment=quickstart",
    "data.train_subset=64",
    "data.val_subset=32",
    "data.num_workers=0",
    "+model.kwargs.dim=16",
    "+model.kwargs.depth=2",
    "trainer.batch_size=32",
    "trainer.epochs=2",
    "trainer.max_epochs_per_run=1",
    "trainer.device=cpu",
    "optim.lr=1e-3",
    "logger.wandb=false",
    "logger.progress=false",
]


def _train_cfg(run_dir: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*TINY, f"trainer.output_dir={run_dir}", *overrides])


@pytest.fixture(scope="module")
def five_class_checkpoint(tmp_path_factory):
    """The quickstart net trained for 5 classes (weights moved away from any init), as {"model": state_dict}."""
    root = tmp_path_factory.mktemp("init")
    model = build_model(_train_cfg(root / "unused"), num_classes=5, in_chans=1)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    torch.save({"model": model.state_dict()}, root / "five.pth")
    return root / "five.pth", model.state_dict()


def test_init_checkpoint_fine_tunes_with_another_head_and_resume_wins(five_class_checkpoint, tmp_path):
    path, source = five_class_checkpoint
    cfg = _train_cfg(tmp_path / "run", f"model.init_checkpoint={path}")
    validate_config(cfg)
    trainer = Trainer(cfg, 0, 1, 0, torch.device("cpu"))
    note = trainer.resume_note
    assert "skipped the classifier" in note and "head.weight 5x" in note and "->10x" in note, note
    assert note.count("\n") == 0 and note.startswith("model.init_checkpoint: loaded ")
    assert f"tensors from {path} (wrapped format)" in note
    assert trainer.resumed_from is None  # a new run, not a resume
    own = trainer.model.state_dict()
    head = {k for k in own if k.startswith("head.")}
    assert head and all(own[k].shape[0] == 10 for k in head)
    assert all(torch.equal(own[k], source[k]) for k in own if k not in head)
    assert (trainer.state.next_epoch, trainer.state.global_step, trainer.optimizer.state_dict()["state"]) == (0, 0, {})
    dcls = {id(p) for kind in ("positions", "sigma") for p in dcls_parameters(trainer.model)[kind]}
    groups = [g for g in trainer.optimizer.param_groups if any(id(p) in dcls for p in g["params"])]
    assert groups and all((g["lr_scale"], g["weight_decay"]) == (5.0, 0.0) for g in groups)  # engine/optim.py
    trainer.fit()  # one epoch (max_epochs_per_run=1): last.pth in the run dir
    last = load_checkpoint(tmp_path / "run" / "last.pth")
    again = Trainer(cfg, 0, 1, 0, torch.device("cpu"))  # the same command: its own last.pth wins
    assert again.resume_note.startswith(f"resuming from run dir {tmp_path / 'run' / 'last.pth'}")
    assert f"model.init_checkpoint={path} ignored" in again.resume_note
    assert again.state.next_epoch == 1
    assert all(torch.equal(v, last["model"][k]) for k, v in again.model.state_dict().items())


def test_init_checkpoint_of_another_architecture_is_an_error(five_class_checkpoint, tmp_path):
    path, _ = five_class_checkpoint
    wider = build_model(_train_cfg(tmp_path, "model.kwargs.dim=24"), num_classes=10, in_chans=1)
    with pytest.raises(ModelLoadError, match=r"does not fit this model beyond its classifier") as err:
        init_from_checkpoint(wider, path)
    assert "\n" not in str(err.value)


def test_analysis_and_downstream_read_safetensors_through_the_factory(baseline):
    from dcls_vision.analysis.loading import load
    from dcls_vision.downstream.weights import load_backbone_state

    root, model = baseline
    loaded = load(checkpoint=str(root / "resnet18.safetensors"), checkpoint_model="resnet18")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.model.state_dict().items())
    target = timm.create_model("resnet18", num_classes=0)
    report = load_backbone_state(root / "resnet18.safetensors", target)
    assert sorted(report["dropped"]) == ["fc.bias", "fc.weight"]
    assert torch.equal(target.conv1.weight, model.conv1.weight)


# --------------------------------------------- MetaFormer-repository layouts (ConvFormer), issue 28 item 5
S18 = {"depths": (3, 3, 9, 3), "dims": (64, 128, 320, 512)}  # timm's convformer_s18 takes no depths/dims


@pytest.fixture(scope="module")
def metaformer_file(tmp_path_factory):
    """A ConvFormer in the MetaFormer repository's layout (tests/metaformer_reference.py), saved as its
    releases are (a bare state dict)."""
    from metaformer_reference import MetaFormerConvFormer

    ref = MetaFormerConvFormer(**S18, num_classes=5, seed=1).eval()
    path = tmp_path_factory.mktemp("metaformer") / "convformer_s18.pth"
    torch.save(ref.state_dict(), path)
    assert "downsample_layers.0.conv.weight" in ref.state_dict()
    return path, ref


def test_a_metaformer_layout_file_loads_into_timm_convformer_with_equal_logits(metaformer_file):
    path, ref = metaformer_file
    loaded = load_model_from(path, model_name="convformer_s18", num_classes=5)
    assert loaded.provenance.format == "metaformer"
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = ref(x), loaded.model(x)
    assert expected.abs().max() > 0.1 and (expected - got).abs().max() <= 1e-4


def test_baseline_and_dcls_convformer_start_from_a_metaformer_layout_file(metaformer_file):
    path, ref = metaformer_file
    source = {k: v for k, v in ref.state_dict().items()}
    baseline = timm.create_model("convformer_s18", num_classes=10)
    line = init_from_checkpoint(baseline, path)
    assert "metaformer format" in line and "skipped the classifier" in line
    mapped = baseline.state_dict()
    assert torch.equal(mapped["stem.conv.weight"], source["downsample_layers.0.conv.weight"])
    pw = source["stages.2.1.token_mixer.pwconv1.weight"]  # the repository's Linear -> timm's 1x1 conv
    assert torch.equal(mapped["stages.2.blocks.1.token_mixer.pwconv1.weight"], pw[:, :, None, None])
    dcls = timm.create_model("convformer_s18_dcls", num_classes=10)
    fresh = {k: v.clone() for k, v in dcls.state_dict().items()}
    line = init_from_checkpoint(dcls, path)
    assert "skipped 18 DCLS kernels (the file holds dense kernels)" in line
    got = dcls.state_dict()
    assert torch.equal(got["stages.3.blocks.0.mlp.fc2.weight"], source["stages.3.0.mlp.fc2.weight"][:, :, None, None])
    assert torch.equal(
        got["stages.1.blocks.0.token_mixer.dwconv.positions"], fresh["stages.1.blocks.0.token_mixer.dwconv.positions"]
    )


def test_a_metaformer_file_into_another_architecture_names_the_key(metaformer_file):
    path, _ = metaformer_file
    with pytest.raises(ModelLoadError, match=r"metaformer format\): its key maps to") as err:
        load_model_from(path, model_name="caformer_s18", num_classes=5)  # attention mixers in stages 2-3
    assert "\n" not in str(err.value)
