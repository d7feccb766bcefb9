"""Sharing weights the way timm users do (issue 28 item 8): a run or a release written as a timm Hub folder with
timm's save_for_hf opens with ``timm.create_model("local-dir:FOLDER", pretrained=True)`` with equal logits, and
the factory, eval.py, fine-tuning and the downstream backbones take ``local-dir:`` / ``hf-hub:`` sources.
Nothing is downloaded: timm's download functions fail the test, except where one test serves ``hf-hub:`` files
from a local folder in place of the network."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import timm
import torch
from release_reference import ReleaseConvNeXtDcls, release_file

import dcls_vision.models  # noqa: F401  (registers the DCLS architectures with timm)
from dcls_vision.models.checkpoint_formats import ModelLoadError
from dcls_vision.models.factory import load_model
from dcls_vision.models.finetune_init import init_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128), "count": 10}


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch):
    import timm.models._builder as builder
    import timm.models._hub as hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"download attempted: {args!r} {kwargs!r}")

    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(builder, name, refuse)
    monkeypatch.setattr(hub, "hf_hub_download", refuse)


def _tool():
    spec = importlib.util.spec_from_file_location("tool_export_hub", ROOT / "tools/export_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _convert_cli():
    spec = importlib.util.spec_from_file_location("tool_convert_hub", ROOT / "tools/convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A train.py-style best.pth (weights, full run config, epoch, stored val metrics) of the quickstart net."""
    root = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    net = timm.create_model("dcls_quickstart").eval()
    torch.save({"state_dict": net.state_dict()}, root / "qs.pth")
    _convert_cli().main(
        [str(root / "qs.pth"), str(root / "ours.pth"), "--model", "dcls_quickstart:num_classes=10,in_chans=1"]
    )
    ours = torch.load(root / "ours.pth", weights_only=True)
    ours["config"]["data"].update(mean=[0.25], std=[0.5], crop_pct=0.95, img_size=28, name="fashion_mnist")
    torch.save(
        {"model": ours["model"], "config": ours["config"], "epoch": 7, "metrics": {"top1": 61.5}}, root / "best.pth"
    )
    return root / "best.pth", net


def _x(in_chans: int, size: int, n: int = 2) -> torch.Tensor:
    return torch.randn(n, in_chans, size, size, generator=torch.Generator().manual_seed(3))


def test_a_run_written_as_a_hub_folder_opens_in_timm_with_equal_logits(trained_run, tmp_path, capsys):
    best, net = trained_run
    folder = tmp_path / "hub" / "qs"
    report = _tool().main([str(best), str(folder)])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(report))
    assert report["files"] == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "dcls_quickstart" and config["num_classes"] == 10
    cfg = config["pretrained_cfg"]
    assert (cfg["mean"], cfg["std"], cfg["crop_pct"], cfg["input_size"]) == ([0.25], [0.5], 0.95, [1, 28, 28])
    card = (folder / "README.md").read_text()
    assert "fashion_mnist" in card and "61.50 %" in card and "epoch 7" in card and "experiment" in card
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(model(_x(1, 28)), net(_x(1, 28)))
    assert model.pretrained_cfg["crop_pct"] == 0.95
    loaded = load_model(f"local-dir:{folder}")  # the factory: format "hub", data config from config.json
    assert loaded.provenance.format == "hub" and loaded.data.mean == (0.25,) and loaded.data.crop_pct == 0.95
    with torch.no_grad():
        assert torch.equal(loaded.model(_x(1, 28)), net(_x(1, 28)))


def test_a_release_written_as_a_hub_folder_keeps_its_logits(tmp_path, capsys):
    """DCLS ConvNeXt with stage-shared positions (safetensors refuses aliased tensors: written unshared)."""
    ref = ReleaseConvNeXtDcls(**TINY, version="cuda2022", seed=21).eval()
    release_file(ref, tmp_path / "convnext_dcls_tiny_1k_224_ema.pth")
    report = _tool().main([str(tmp_path / "convnext_dcls_tiny_1k_224_ema.pth"), str(tmp_path / "hub"), "--top1", "80"])
    capsys.readouterr()
    assert report["architecture"] == "convnext_tiny_dcls" and report["model_args"]["dcls_kernel_count"] == 10
    model = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True).eval()
    assert model.stages[2].blocks[0].conv_dw.positions is model.stages[2].blocks[1].conv_dw.positions
    with torch.no_grad():
        assert (ref(_x(3, 64)) - model(_x(3, 64))).abs().max() <= 1e-4
    assert "80.00 % (given with --top1)" in (tmp_path / "hub" / "README.md").read_text()
    _tool().main([str(tmp_path / "convnext_dcls_tiny_1k_224_ema.pth"), str(tmp_path / "hub")])  # rewritten whole
    capsys.readouterr()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary left


def test_fine_tuning_and_downstream_backbones_start_from_a_local_dir(trained_run, tmp_path, capsys):
    from dcls_vision.downstream.weights import load_backbone_state
    from dcls_vision.engine.config import ConfigError, validate_config

    best, net = trained_run
    _tool().main([str(best), str(tmp_path / "hub")])
    capsys.readouterr()
    fresh = timm.create_model("dcls_quickstart", num_classes=3)
    line = init_from_checkpoint(fresh, f"local-dir:{tmp_path / 'hub'}")
    assert "hub format" in line and "skipped the classifier" in line
    trunk = {k: v for k, v in net.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in trunk.items())
    body = timm.create_model("dcls_quickstart")
    report = load_backbone_state(f"local-dir:{tmp_path / 'hub'}", body)
    assert report["trained_as"] == "dcls_quickstart" and report["loaded"] == len(net.state_dict())
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(torch.load(best, weights_only=True)["config"])
    cfg.data.name, cfg.data.root = "imagefolder", str(tmp_path)
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    cfg.model.init_checkpoint = f"local-dir:{tmp_path / 'hub'}"
    validate_config(cfg)  # train.py accepts the folder as model.init_checkpoint
    cfg.model.init_checkpoint = f"local-dir:{tmp_path / 'nowhere'}"
    with pytest.raises(ConfigError, match=r"model\.init_checkpoint='local-dir:.*nowhere' does not exist"):
        validate_config(cfg)


def test_eval_py_evaluates_a_local_dir_like_the_file_it_was_written_from(tmp_path, capsys):
    from hydra import compose, initialize_config_dir
    from test_release import _image_folder

    from dcls_vision.robustness.runner import run_eval
    from dcls_vision.utils.paths import config_dir

    ref = ReleaseConvNeXtDcls(**TINY, num_classes=4, seed=22).eval()
    release_file(ref, tmp_path / "four_ema.pth")
    _tool().main([str(tmp_path / "four_ema.pth"), str(tmp_path / "hub")])
    capsys.readouterr()
    val = _image_folder(tmp_path / "val", 4, 3)
    (tmp_path / "classes.txt").write_text("".join(f"n{c:08d}\n" for c in range(4)))
    results = {}
    for label, source in (("file", tmp_path / "four_ema.pth"), ("hub", f"local-dir:{tmp_path / 'hub'}")):
        overrides = [f"checkpoint={source}", f"val.root={val}", f"classes={tmp_path / 'classes.txt'}"]
        with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
            cfg = compose(
                "eval", overrides=[f"output_dir={tmp_path / label}", "progress=false", "device=cpu", *overrides]
            )
        results[label] = run_eval(cfg)["benchmarks"]["val"]
    assert results["hub"]["samples"] == 12 and results["hub"]["top1"] == results["file"]["top1"]


def test_hf_hub_names_read_the_same_files(trained_run, tmp_path, monkeypatch, capsys):
    """``hf-hub:ORG/NAME``: timm's Hub readers, with the files served from a local folder instead of the network."""
    import timm.models._hub as hub

    best, net = trained_run
    _tool().main([str(best), str(tmp_path / "hub")])
    capsys.readouterr()
    asked = []

    def serve(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(tmp_path / "hub" / filename)

    monkeypatch.setattr(hub, "hf_hub_download", serve)
    loaded = load_model("hf-hub:someone/dcls-quickstart")
    assert loaded.provenance.format == "hub" and ("someone/dcls-quickstart", "config.json") in asked
    with torch.no_grad():
        assert torch.equal(loaded.model(_x(1, 28)), net(_x(1, 28)))


def test_bad_hub_sources_are_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for source, message in (
        (f"local-dir:{tmp_path / 'empty'}", "lacks config.json or a weights file"),
        (f"local-dir:{tmp_path / 'nowhere'}", "is not a directory"),
    ):
        with pytest.raises(ModelLoadError, match=message) as err:
            load_model(source)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="pretrained=True is not supported for 'convnext_tiny_dcls' without a Hub"):
        timm.create_model("convnext_tiny_dcls", pretrained=True)
    with pytest.raises(SystemExit) as exit_info:
        _tool().main([str(tmp_path / "missing.pth"), str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "does not exist" in err[0]
    assert not (tmp_path / "out").exists()


def test_downstream_runner_starts_from_a_local_dir(tmp_path, capsys):
    """UperNet (the tiny Gauss config) with --backbone-checkpoint local-dir:FOLDER: the backbone holds the folder's
    weights when training starts; a folder that is not there is one line before anything is built."""
    pytest.importorskip("mmseg")
    from mmengine.hooks import Hook

    from dcls_vision.downstream import datasets
    from dcls_vision.downstream.cli import CliError
    from dcls_vision.downstream.train import build_runner

    ref = ReleaseConvNeXtDcls(**TINY, size=9, version="gauss", seed=23)
    release_file(ref, tmp_path / "gauss_ema.pth")
    _tool().main([str(tmp_path / "gauss_ema.pth"), str(tmp_path / "hub")])
    capsys.readouterr()
    expected = load_model(f"local-dir:{tmp_path / 'hub'}").model.state_dict()
    ade = datasets.make_ade(tmp_path / "ade", num_train=4, num_val=2, size=96)["root"]

    class Probe(Hook):
        loaded = None

        def before_train(self, runner) -> None:
            body = runner.model.backbone.body.state_dict()
            shared = [k for k in expected if k in body]  # the trunk: every tensor but the classifier
            Probe.loaded = len(shared) > 20 and all(torch.equal(body[k], expected[k]) for k in shared)

    config = ROOT / "configs/downstream/tiny/upernet_tiny-dcls-gauss_ade-shapes.py"
    argv = [str(config), "--work-dir", str(tmp_path / "seg"), "--data-root", str(ade), "--backbone-checkpoint"]
    options = ["--cfg-options", "train_cfg.max_iters=1", "train_cfg.val_interval=1"]
    with pytest.raises(CliError, match="does not exist"):
        build_runner([*argv, f"local-dir:{tmp_path / 'nowhere'}", *options])
    runner = build_runner([*argv, f"local-dir:{tmp_path / 'hub'}", *options])
    runner.register_hook(Probe())
    runner.train()
    assert Probe.loaded is True


def test_the_slurm_launcher_passes_local_dir_backbones_on_as_absolute_folders(
    trained_run, tmp_path, monkeypatch, capsys
):
    from dcls_vision.launch.downstream import _existing_source
    from dcls_vision.launch.options import LaunchError

    best, _ = trained_run
    _tool().main([str(best), str(tmp_path / "hub")])
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # the job may start elsewhere: a relative folder is made absolute
    assert _existing_source("local-dir:hub", "--backbone-checkpoint") == f"local-dir:{tmp_path / 'hub'}"
    assert _existing_source("hf-hub:org/name", "--backbone-checkpoint") == "hf-hub:org/name"
    with pytest.raises(LaunchError, match="--backbone-checkpoint 'local-dir:nowhere' does not exist"):
        _existing_source("local-dir:nowhere", "--backbone-checkpoint")
