"""The published ConvNeXt-dcls releases (their layout rebuilt here from the public ``dcls`` 0.1.1 Dcls2d, see
release_reference.py): loaded by the model factory with the reference's logits, converted by the CLI, used by a
downstream Runner, and opened safely (weights_only with an allow-list of exactly argparse.Namespace)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from release_reference import SIZES, ReleaseConvNeXtDcls, release_file

from dcls_vision.models import ModelLoadError, load_model, read_checkpoint
from dcls_vision.models.release import ReleaseArch, convert_release, model_config

ROOT = Path(__file__).resolve().parents[1]
TINY = {"depths": (1, 1, 2, 1), "dims": (16, 32, 64, 128), "count": 10}
TINY_KWARGS = {"depths": [1, 1, 2, 1], "dims": [16, 32, 64, 128], "dcls_kernel_count": 10}


def _cli():
    """tools/convert_checkpoint.py as a module (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location("tool_convert_checkpoint", ROOT / "tools/convert_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _logits(model: torch.nn.Module, size: int = 64, n: int = 2, seed: int = 0) -> torch.Tensor:
    x = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture(scope="module")
def tiny_releases(tmp_path_factory) -> dict[str, tuple[torch.nn.Module, Path]]:
    """Tiny reference networks in the release layout (bilinear 17/10, gauss 23/10) and their release files."""
    base = tmp_path_factory.mktemp("releases")
    out = {}
    for kind, version, size in (("bilinear", "v0", 17), ("gauss", "gauss", 23)):
        ref = ReleaseConvNeXtDcls(**TINY, size=size, version=version, seed=1).eval()
        path = base / f"convnext_dcls_tiny_{kind}_ema.pth"
        release_file(ref, path)
        out[kind] = (ref, path)
    return out


# ------------------------------------------------------------------------------------------ the factory
@pytest.mark.parametrize("kind", ["bilinear", "gauss"])
def test_tiny_release_loads_with_equal_logits(tiny_releases, kind):
    ref, path = tiny_releases[kind]
    loaded = load_model(path)  # no model_name: inferred from the tensors
    assert loaded.provenance.format == "release" and loaded.weights == "ema"
    assert loaded.name == ("convnext_tiny_dcls" if kind == "bilinear" else "convnext_tiny_dcls_gauss")
    assert loaded.model_cfg["kwargs"] == TINY_KWARGS
    assert (loaded.img_size, loaded.data.crop_pct, loaded.data.interpolation) == ((224, 224), 0.875, "bicubic")
    expected, got = _logits(ref), _logits(loaded.model)
    assert expected.abs().max() > 0.5  # not a trivial network
    assert (expected - got).abs().max() <= 1e-4
    # one shared positions tensor per stage, as in our models
    stage = loaded.model.stages[2].blocks
    assert stage[0].conv_dw.positions is stage[1].conv_dw.positions


def test_the_convention_matters(tiny_releases):
    """The other axis order gives other logits: the equality above is a real check of the convention."""
    ref, path = tiny_releases["bilinear"]
    state = torch.load(path, weights_only=True)["model"]
    wrong = convert_release(state, convention="gauss")
    model = load_model(path).model
    model.load_state_dict(wrong.state)
    assert (_logits(ref) - _logits(model)).abs().max() > 1e-2


@pytest.mark.slow  # 25 s (bilinear) and ~130 s (gauss) on 2 shared CPU cores: the dcls reference is slow at T size
@pytest.mark.parametrize("version", ["v0", "gauss"])
def test_t_size_release_loads_with_equal_logits(tmp_path, version):
    """ConvNeXt-T size (3-3-9-3, 96..768; bilinear 17/34, gauss 23/26): registered name, no kwargs."""
    count, size = (34, 17) if version == "v0" else (26, 23)
    ref = ReleaseConvNeXtDcls(*SIZES["tiny"], size=size, count=count, version=version, seed=2).eval()
    release_file(ref, tmp_path / "convnext_dcls_tiny_1k_224_ema.pth", args=argparse.Namespace(lr=4e-3, epochs=300))
    loaded = load_model(tmp_path / "convnext_dcls_tiny_1k_224_ema.pth")  # the Namespace passes the allow-list
    assert loaded.name == ("convnext_tiny_dcls" if version == "v0" else "convnext_tiny_dcls_gauss")
    assert loaded.model_cfg["kwargs"] == {}
    assert (_logits(ref, size=32, n=1) - _logits(loaded.model, size=32, n=1)).abs().max() <= 1e-4


def test_registered_names_for_the_three_releases():
    for size, name, count in (("tiny", "convnext_tiny_dcls", 34), ("small", "convnext_small_dcls", 40)):
        arch = ReleaseArch(*SIZES[size], count, "bilinear", 1000, 3)
        assert model_config(arch) == {"name": name, "kwargs": {}}
    assert model_config(ReleaseArch(*SIZES["base"], 40, "bilinear", 1000, 3))["name"] == "convnext_base_dcls"
    gauss_small = model_config(ReleaseArch(*SIZES["small"], 26, "gauss", 1000, 3))
    assert gauss_small == {
        "name": "convnext_small_dcls",
        "kwargs": {"dcls_interpolation": "gauss", "dcls_dilated_kernel_size": 23, "dcls_kernel_count": 26},
    }


def test_unequal_copies_of_a_stage_position_tensor_name_the_stage(tiny_releases, tmp_path):
    _, path = tiny_releases["bilinear"]
    obj = torch.load(path, weights_only=True)
    obj["model"]["stages.2.1.dwconv.P"] = obj["model"]["stages.2.1.dwconv.P"] + 0.5
    torch.save(obj, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match=r"stage 2: stages\.2\.1\.dwconv\.P differs from stages\.2\.0\.dwconv\.P"):
        load_model(tmp_path / "bad.pth")


# ------------------------------------------------------------------------------------------- safety
class NotAllowed:
    """A class no allow-list holds."""


def test_foreign_objects_are_refused_with_their_type(tiny_releases, tmp_path):
    _, path = tiny_releases["bilinear"]
    obj = torch.load(path, weights_only=True)
    torch.save({**obj, "args": argparse.Namespace(model="convnext_dcls_tiny")}, tmp_path / "ns_ema.pth")
    state, info = read_checkpoint(tmp_path / "ns_ema.pth")
    assert info.format == "release" and "stages.0.blocks.0.conv_dw.positions" in state
    torch.save({**obj, "trainer": NotAllowed()}, tmp_path / "bad.pth")
    refused = r"weights_only=True: it holds a pickled test_release\.NotAllowed object"
    with pytest.raises(ModelLoadError, match=refused) as err:
        read_checkpoint(tmp_path / "bad.pth")
    assert "\n" not in str(err.value) and "argparse.Namespace" in str(err.value)


# ---------------------------------------------------------------------------------------- the converter
def _image_folder(root: Path, classes: int, per_class: int) -> Path:
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = root / f"n{c:08d}"
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (48 + 8 * i, 56, 3), dtype=np.uint8)).save(d / f"v_{i}.JPEG")
    return root


def test_converter_cli_writes_our_format_and_reports(tiny_releases, tmp_path, capsys):
    cli = _cli()

    ref, path = tiny_releases["gauss"]
    for dst in (tmp_path / "out" / "tiny_gauss.pth", tmp_path / "out" / "tiny_gauss.safetensors"):
        report = cli.main([str(path), str(dst), "--model", "convnext_tiny_dcls_gauss"])
        printed = json.loads(capsys.readouterr().out)
        assert printed == json.loads(json.dumps(report))
        assert report["format"] == "release" and report["convention"] == "gauss"
        assert report["mapped"] == len(ref.state_dict()) and report["skipped"] == [] and report["shape_changes"] == []
        assert report["max_logit_diff"] <= 1e-4 and report["reload_max_logit_diff"] == 0.0
        loaded = load_model(dst)  # our trainer's format: rebuilt from the stored run config
        assert loaded.provenance.format == "ours" and loaded.config.model.name == "convnext_tiny_dcls_gauss"
        assert loaded.config.trainer.batch_size > 0  # a full run config: eval.py reads it
        assert (_logits(ref) - _logits(loaded.model)).abs().max() <= 1e-4
    assert set(torch.load(tmp_path / "out" / "tiny_gauss.pth", weights_only=True)) >= {"model", "config"}
    assert not list((tmp_path / "out").glob(".*.tmp"))  # atomic: no temporary left behind


def test_converter_takes_any_factory_format(tmp_path, capsys):
    """A timm-style wrapped state dict (our quickstart net) with --model NAME:kwargs: same logits after."""
    import timm

    net = timm.create_model("dcls_quickstart").eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "qs.pth")
    report = _cli().main(
        [
            str(tmp_path / "qs.pth"),
            str(tmp_path / "qs_ours.pth"),
            "--model",
            "dcls_quickstart:num_classes=10,in_chans=1",
        ]
    )
    assert report["format"] == "wrapped" and report["mapped"] == len(net.state_dict())
    loaded = load_model(tmp_path / "qs_ours.pth")
    assert loaded.provenance.format == "ours" and (loaded.num_classes, loaded.in_chans) == (10, 1)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(net(x), loaded.model(x))


def test_converter_verify_val_computes_top1_and_warns(tmp_path, capsys):
    cli = _cli()
    from dcls_vision.data.imagefolder import SkipBadImageFolder
    from dcls_vision.data.transforms import imagenet_transforms

    ref = ReleaseConvNeXtDcls(**TINY, num_classes=4, seed=3).eval()
    release_file(ref, tmp_path / "four_ema.pth")
    val = _image_folder(tmp_path / "val", 4, 3)
    args = [str(tmp_path / "four_ema.pth"), str(tmp_path / "four.pth"), "--verify-val", str(val)]
    report = cli.main([*args, "--published-top1", "99", "--limit", "12"])
    captured = capsys.readouterr()
    check = report["verify_val"]
    # the reference network on the same images with the val transform of the written config
    data = torch.load(tmp_path / "four.pth", weights_only=True)["config"]["data"]
    images = SkipBadImageFolder(val, transform=imagenet_transforms(data, None)[1])
    with torch.no_grad():
        hits = [int(ref(x[None]).argmax()) == y for x, y in images]
    assert check["images"] == 12 and check["top1"] == pytest.approx(100.0 * sum(hits) / len(hits))
    assert check["ok"] is False and check["warn_below"] == 97.0
    assert "WARNING: top-1" in captured.err and "below 97.0" in captured.err
    report = cli.main([*args, "--published-top1", "0", "--limit", "5"])
    assert report["verify_val"]["ok"] is True and report["verify_val"]["images"] == 5
    assert "WARNING" not in capsys.readouterr().err


def test_converter_errors_are_one_line(tiny_releases, tmp_path, capsys):
    cli = _cli()

    _, path = tiny_releases["bilinear"]
    plain = tmp_path / "plain.pth"
    torch.save({"conv.weight": torch.zeros(2, 1, 3, 3)}, plain)
    cases = [
        ([str(path), str(tmp_path / "x.bin")], "has suffix '.bin'; allowed: .pth, .pt, .safetensors"),
        ([str(path), str(tmp_path / "x.pth"), "--model", "convnext_small_dcls"], "allowed: --model convnext_tiny_dcls"),
        ([str(path), str(tmp_path / "x.pth"), "--verify-val", str(tmp_path)], "has 0 class folders"),
        ([str(plain), str(tmp_path / "x.pth")], "is a state dict without a model config; allowed: --model NAME"),
        ([str(path), str(tmp_path / "x.pth"), "--limit", "5"], "--limit 5 without --verify-val"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err


# ---------------------------------------------------------------------------------------- downstream
def test_downstream_runner_starts_from_a_release(tmp_path):
    """UperNet (the tiny Gauss config) from a Gauss release: the backbone holds its weights when training starts."""
    pytest.importorskip("mmseg")
    from mmengine.hooks import Hook

    from dcls_vision.downstream import datasets
    from dcls_vision.downstream.train import build_runner

    ref = ReleaseConvNeXtDcls(**TINY, size=9, version="gauss", seed=4)
    release_file(ref, tmp_path / "convnext_dcls_tiny_gauss_1k_224_ema.pth")
    expected, _ = read_checkpoint(tmp_path / "convnext_dcls_tiny_gauss_1k_224_ema.pth")
    ade = datasets.make_ade(tmp_path / "ade", num_train=4, num_val=2, size=96)["root"]

    class Probe(Hook):
        loaded = None

        def before_train(self, runner) -> None:
            body = runner.model.backbone.body.state_dict()
            Probe.loaded = all(torch.equal(body[k], v) for k, v in expected.items() if not k.startswith("head."))

    config = ROOT / "configs/downstream/tiny/upernet_tiny-dcls-gauss_ade-shapes.py"
    runner = build_runner(
        [
            str(config),
            "--work-dir",
            str(tmp_path / "seg"),
            "--data-root",
            str(ade),
            "--backbone-checkpoint",
            str(tmp_path / "convnext_dcls_tiny_gauss_1k_224_ema.pth"),
            "--cfg-options",
            "train_cfg.max_iters=1",
            "train_cfg.val_interval=1",
        ]
    )
    runner.register_hook(Probe())
    runner.train()
    assert Probe.loaded is True


def test_eval_py_reads_a_release_file_as_it_is(tmp_path):
    """eval.py checkpoint=<release .pth> (no conversion): top-1 of the reference network on the same images."""
    from hydra import compose, initialize_config_dir

    from dcls_vision.data.imagefolder import SkipBadImageFolder
    from dcls_vision.data.transforms import imagenet_transforms
    from dcls_vision.robustness.runner import run_eval
    from dcls_vision.utils.paths import config_dir

    ref = ReleaseConvNeXtDcls(**TINY, num_classes=4, seed=5).eval()
    release_file(ref, tmp_path / "four_ema.pth")
    val = _image_folder(tmp_path / "val", 4, 3)
    (tmp_path / "classes.txt").write_text("".join(f"n{c:08d}\n" for c in range(4)))
    overrides = [f"checkpoint={tmp_path / 'four_ema.pth'}", f"val.root={val}", f"classes={tmp_path / 'classes.txt'}"]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("eval", overrides=[f"output_dir={tmp_path / 'out'}", "progress=false", "device=cpu", *overrides])
    top1 = run_eval(cfg)["benchmarks"]["val"]["top1"]
    data = load_model(tmp_path / "four_ema.pth").data  # the data config eval.py used (the model's timm config)
    transform = imagenet_transforms(
        {"img_size": data.img_size[0], "crop_pct": data.crop_pct, "interpolation": data.interpolation}, None
    )[1]
    with torch.no_grad():
        hits = [int(ref(x[None]).argmax()) == y for x, y in SkipBadImageFolder(val, transform=transform)]
    assert top1 == pytest.approx(100.0 * sum(hits) / len(hits))
