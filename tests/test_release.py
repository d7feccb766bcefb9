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
from release_reference import SIZES, ReleaseConvNeXtDcls, push_positions, release_file

from dcls_vision.models import ModelLoadError, load_model, read_checkpoint
from dcls_vision.models.release import ReleaseArch, ReleaseFormatError, convert_release, model_config

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


# ------------------------------------------------------- fork training checkpoints (model / model_ema)
def _fork_checkpoint(path: Path, raw: torch.nn.Module, ema: torch.nn.Module) -> None:
    """As the fork's utils.save_model writes it: model, optimizer, epoch, scaler, args and model_ema."""
    torch.save(
        {
            "model": raw.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 4e-3, "params": [0]}]},
            "epoch": 299,
            "scaler": {"scale": 65536.0},
            "args": argparse.Namespace(model="convnext_dcls_tiny", model_ema=True),
            "model_ema": ema.state_dict(),
        },
        path,
    )


@pytest.fixture(scope="module")
def fork_checkpoints(tmp_path_factory):
    """A raw model and an EMA model (other weights) in checkpoint-best-ema.pth and checkpoint-299.pth."""
    base = tmp_path_factory.mktemp("fork")
    raw = ReleaseConvNeXtDcls(**TINY, version="cuda2022", seed=11).eval()
    ema = ReleaseConvNeXtDcls(**TINY, version="cuda2022", seed=12).eval()
    for name in ("checkpoint-best-ema.pth", "checkpoint-299.pth"):
        _fork_checkpoint(base / name, raw, ema)
    return base, raw, ema


def test_fork_training_checkpoints_take_model_ema_when_ema_is_meant(fork_checkpoints):
    base, raw, ema = fork_checkpoints
    assert (_logits(raw) - _logits(ema)).abs().max() > 0.1  # two different sets of weights
    cases = [
        ("checkpoint-best-ema.pth", False, "model_ema", "ema", ema),  # the file name says EMA: its EMA entry
        ("checkpoint-best-ema.pth", True, "model_ema", "ema", ema),
        ("checkpoint-299.pth", False, "model", "model", raw),
        ("checkpoint-299.pth", True, "model_ema", "ema", ema),
    ]
    for name, use_ema, key, weights, expected in cases:
        loaded = load_model(base / name, use_ema=use_ema)
        assert (loaded.provenance.key, loaded.weights) == (key, weights), name
        assert (_logits(expected) - _logits(loaded.model)).abs().max() <= 1e-4, (name, use_ema)
    assert load_model(base / "checkpoint-299.pth").epoch == 299


def test_a_release_without_ema_entry_refuses_use_ema_unless_its_name_says_ema(tiny_releases, tmp_path):
    _, path = tiny_releases["bilinear"]
    assert load_model(path, use_ema=True).weights == "ema"  # *_ema.pth: the published EMA weights under 'model'
    plain = tmp_path / "convnext_dcls_tiny_1k_224.pth"
    plain.write_bytes(path.read_bytes())
    assert load_model(plain).weights == "model"
    with pytest.raises(ModelLoadError, match="no 'model_ema' entry") as err:
        load_model(plain, use_ema=True)
    assert err.value.reason == "no_ema"


def test_converter_reports_the_entry_taken_and_those_ignored(fork_checkpoints, tmp_path, capsys):
    base, raw, ema = fork_checkpoints
    cli = _cli()
    report = cli.main([str(base / "checkpoint-best-ema.pth"), str(tmp_path / "best_ema.pth")])
    assert (report["entry"], report["weights"]) == ("model_ema", "ema")
    assert sorted(report["ignored_entries"]) == ["args", "epoch", "model", "optimizer", "scaler"]
    assert (_logits(ema) - _logits(load_model(tmp_path / "best_ema.pth").model)).abs().max() <= 1e-4
    report = cli.main([str(base / "checkpoint-299.pth"), str(tmp_path / "raw.pth")])
    assert (report["entry"], report["weights"]) == ("model", "model") and "model_ema" in report["ignored_entries"]
    report = cli.main([str(base / "checkpoint-299.pth"), str(tmp_path / "ema.pth"), "--ema"])
    assert report["entry"] == "model_ema"
    assert (_logits(ema) - _logits(load_model(tmp_path / "ema.pth").model)).abs().max() <= 1e-4
    capsys.readouterr()


def test_wrapped_training_checkpoints_take_model_ema_too(tmp_path):
    """ConvNeXt's own checkpoint-best-ema.pth (a timm ConvNeXt under model / model_ema): the same rule."""
    import timm

    raw, ema = (timm.create_model("convnext_atto", num_classes=5).eval() for _ in range(2))
    torch.save({"model": raw.state_dict(), "model_ema": ema.state_dict(), "epoch": 3}, tmp_path / "ckpt-best-ema.pth")
    loaded = load_model(tmp_path / "ckpt-best-ema.pth", model_name="convnext_atto", num_classes=5)
    assert (loaded.provenance.key, loaded.weights) == ("model_ema", "ema")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), ema(x))


# ------------------------------------------------------------------ the 2022 CUDA construction's border rule
def test_analysis_reference_kernel_matches_the_loop_reference():
    """The converter's vectorised check and the element loop of release_reference agree, positions in and out."""
    from release_reference import Cuda2022Dcls2d, TransposedDcls2d

    from dcls_vision.analysis.release_construction import dcls_bilinear_kernel

    for cls, transposed, clamp in ((Cuda2022Dcls2d, False, True), (TransposedDcls2d, True, False)):
        layer = cls(6, 12, 9)
        with torch.no_grad():
            layer.P.copy_(torch.randn(2, 6, 1, 12) * 4)  # many past ±4
        assert (layer.P.abs() > 4).sum() > 10
        expected = layer.kernel()
        got = dcls_bilinear_kernel(layer.weight.detach(), layer.P.detach(), 9, transposed, clamp)
        assert (expected - got).abs().max() <= 1e-6


@pytest.fixture(scope="module")
def overshooting_release(tmp_path_factory):
    """A release-layout model of the 2022 construction whose EMA positions sit past ±8 (20 per stage)."""
    ref = ReleaseConvNeXtDcls(**TINY, version="cuda2022", seed=13).eval()
    moved = push_positions(ref, 20, 8.3, -8.6)
    path = tmp_path_factory.mktemp("overshoot") / "convnext_dcls_tiny_1k_224_ema.pth"
    release_file(ref, path)
    return ref, path, moved


def test_v0_clamps_positions_past_the_border_as_the_2022_cuda_code(overshooting_release):
    ref, path, moved = overshooting_release
    loaded = load_model(path)
    assert (_logits(ref) - _logits(loaded.model)).abs().max() <= 1e-4
    # dcls 0.1.1 "v0" (no clamp) on the same tensors gives other logits: the clamp is what makes them equal
    unclamped = ReleaseConvNeXtDcls(**TINY, version="v0", seed=13).eval()
    unclamped.load_state_dict(ref.state_dict())
    assert (_logits(ref) - _logits(unclamped)).abs().max() > 1e-3
    conv = convert_release(torch.load(path, weights_only=True)["model"])
    assert conv.positions_clamped == moved and conv.positions_max_abs == pytest.approx(8.6)


def test_converter_reports_clamped_positions_and_checks_against_the_2022_rule(overshooting_release, tmp_path, capsys):
    ref, path, moved = overshooting_release
    report = _cli().main([str(path), str(tmp_path / "t.pth")])
    assert report["positions_clamped"] == moved and report["convention"] == "v0"
    assert report["max_logit_diff"] <= 1e-4 and "2022 CUDA" in report["logit_check"]
    assert (_logits(ref) - _logits(load_model(tmp_path / "t.pth").model)).abs().max() <= 1e-4
    capsys.readouterr()


# --------------------------------------------------------------------------------- kernel-size guard
def test_a_kernel_size_that_cannot_hold_the_positions_is_one_line(tmp_path, capsys):
    ref = ReleaseConvNeXtDcls(**TINY, version="cuda2022", seed=14)
    with torch.no_grad():
        ref.stages[1][0].dwconv.P.view(-1)[0] = 8.0
    state = {k: v.detach() for k, v in ref.state_dict().items()}
    with pytest.raises(ReleaseFormatError, match=r"reach 8\.00 but dilated_kernel_size=15 holds ±7; the smallest"):
        convert_release(state, dilated_kernel_size=15)
    with pytest.raises(ReleaseFormatError, match=r"dilated_kernel_size=18 is even.*an odd size >= 17"):
        convert_release(state, dilated_kernel_size=18)
    assert convert_release(state, dilated_kernel_size=17).dilated_kernel_size == 17
    release_file(ref, tmp_path / "r_ema.pth")
    with pytest.raises(SystemExit) as exit_info:
        _cli().main([str(tmp_path / "r_ema.pth"), str(tmp_path / "x.pth"), "--dilated-kernel-size", "15"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and "the smallest size that fits is 17" in err[0]
    assert not (tmp_path / "x.pth").exists()


# ------------------------------------------------------------------------ dcls 0.0.2-0.0.5 (transposed)
def test_v0_transposed_reads_files_of_the_transposed_window(tmp_path):
    ref = ReleaseConvNeXtDcls(**TINY, version="v0-transposed", seed=15).eval()
    release_file(ref, tmp_path / "mine_ema.pth")
    state = torch.load(tmp_path / "mine_ema.pth", weights_only=True)["model"]
    model = load_model(tmp_path / "mine_ema.pth").model
    model.load_state_dict(convert_release(state, convention="v0-transposed").state)
    assert (_logits(ref) - _logits(model)).abs().max() <= 1e-4
    model.load_state_dict(convert_release(state).state)  # the default v0 reads it wrong
    assert (_logits(ref) - _logits(model)).abs().max() > 1e-2
    report = _cli().main([str(tmp_path / "mine_ema.pth"), str(tmp_path / "m.pth"), "--convention", "v0-transposed"])
    assert report["max_logit_diff"] <= 1e-4 and report["positions_clamped"] == 0


# ------------------------------------------------------------------------------------ converter errors
def test_converter_file_errors_are_one_line_and_verify_val_is_checked_first(tiny_releases, tmp_path, capsys):
    _, path = tiny_releases["bilinear"]
    (tmp_path / "notes.pth").write_text("not a torch file")
    cases = [
        ([str(tmp_path / "missing.pth"), str(tmp_path / "x.pth")], "missing.pth' does not exist"),
        ([str(tmp_path), str(tmp_path / "x.pth")], "is a directory, not a file"),
        ([str(tmp_path / "notes.pth"), str(tmp_path / "x.pth")], "cannot be loaded with weights_only=True"),
        ([str(path), str(tmp_path / "x.pth"), "--verify-val", str(tmp_path / "nowhere")], "is not a directory"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            _cli().main(argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
        assert not (tmp_path / "x.pth").exists()  # nothing converted or written before the check


def test_weights_that_do_not_fit_name_the_keys(tiny_releases, tmp_path):
    import timm

    net = timm.create_model("convnext_atto", num_classes=10)
    state = net.state_dict()
    del state["stem.0.bias"], state["head.fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "atto.pth")
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path / "atto.pth", model_name="convnext_atto", num_classes=10)
    message = str(err.value)
    assert "\n" not in message and err.value.reason == "mismatch"
    assert "2 missing: stem.0.bias, head.fc.bias" in message and "1 unexpected: extra.weight" in message
