"""Robustness evaluation on real data: a quickstart checkpoint trained here, its Fashion-MNIST val split written
as an ImageNet-style folder, corrupted with tools/make_corrupted.py, then evaluated by eval.py / run_eval."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dcls_vision.data.fashion_mnist import DEFAULT_SOURCE
from dcls_vision.engine import train
from dcls_vision.engine.checkpoint import atomic_save, load_checkpoint
from dcls_vision.models.factory import build_model
from dcls_vision.robustness import (
    ALEXNET_ERRORS,
    IMAGENET_C,
    EvalConfigError,
    SubsetLogits,
    corruption_summary,
    run_eval,
    subset_logit_indices,
    subset_synsets,
)
from dcls_vision.robustness.classes import imagenet_synsets
from dcls_vision.robustness.fashion_folder import export_val_folder

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"
EXTRA = os.environ.get("DCLS_TEST_HYDRA_OVERRIDES", "").split()  # e.g. a hydra.searchpath for local data configs
CORRUPTIONS = ["gaussian_noise", "defocus_blur", "contrast"]
VAL_SUBSET = 200
TABLE_HEADER = "| Model | Clean | C↓ | C-bar↓ | A | R | SK |"

pytestmark = pytest.mark.skipif(
    not Path(DEFAULT_SOURCE, "t10k-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)
pytest.importorskip("imagecorruptions", reason="pip install --no-deps imagecorruptions-imaug==1.1.5")


def _train_cfg(run_dir: Path):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "experiment=quickstart",
                "data.train_subset=2000",
                f"data.val_subset={VAL_SUBSET}",
                "data.num_workers=0",
                "trainer.epochs=1",
                "trainer.batch_size=32",
                "sched=constant",
                "trainer.ema.enabled=true",
                "trainer.ema.decay=0.9",
                "logger.wandb=false",
                "logger.progress=false",
                *EXTRA,
                f"trainer.output_dir={run_dir}",
            ],
        )


def _eval_cfg(out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("eval", overrides=[f"output_dir={out}", "progress=false", *overrides])


def _make_corrupted(src: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools" / "make_corrupted.py"), str(src), str(out), "--no-progress", *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def run(tmp_path_factory):
    """A real quickstart training run (1 epoch, 2000 images, EMA) and its final val figures."""
    run_dir = tmp_path_factory.mktemp("quickstart")
    result = train(_train_cfg(run_dir))
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
    return run_dir, result, metrics


@pytest.fixture(scope="session")
def folders(run, tmp_path_factory):
    """The trainer's val split as OUT/<class>/*.png, and its ImageNet-C-style corruption (2 workers, upscaled)."""
    run_dir, _, _ = run
    base = tmp_path_factory.mktemp("folders")
    clean, corrupted = base / "clean", base / "c"
    state = load_checkpoint(run_dir / "last.pth")
    assert export_val_folder(state["config"]["data"], clean) == VAL_SUBSET
    proc = _make_corrupted(
        clean,
        corrupted,
        "--corruptions",
        *CORRUPTIONS,
        "--format",
        "png",
        "--no-resize-crop",
        "--upscale-small",
        "56",
        "--workers",
        "2",
        "--chunk",
        "32",
    )
    assert proc.returncode == 0, proc.stderr
    assert f"{VAL_SUBSET * len(CORRUPTIONS) * 5} written" in proc.stdout
    return clean, corrupted


@pytest.fixture(scope="session")
def evaluated(run, folders, tmp_path_factory):
    """run_eval on clean + the partial ImageNet-C folder (3 of the 15 corruptions)."""
    run_dir, _, _ = run
    clean, corrupted = folders
    out = tmp_path_factory.mktemp("eval")
    result = run_eval(
        _eval_cfg(
            out, f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[val,c]", f"val.root={clean}", f"c.root={corrupted}"
        )
    )
    return out, result


# --------------------------------------------------------------------------------------- clean accuracy
def test_clean_top1_equals_trainer_val(run, evaluated, tmp_path):
    run_dir, result, metrics = run
    out, res = evaluated
    val = res["benchmarks"]["val"]
    assert val["samples"] == VAL_SUBSET and val["skipped"] == 0
    assert val["top1"] == metrics["val_top1"] == result["top1"]  # PNG folder == the trainer's tensors, exactly
    assert val["top5"] == metrics["val_top5"] and val["loss"] == pytest.approx(metrics["val_loss"], rel=1e-6)
    assert res["weights"] == "model" and res["table"]["val"] == val["top1"]
    # val.root unset: the checkpoint's own data config (Fashion-MNIST val subset) gives the same figure
    own = run_eval(_eval_cfg(tmp_path / "own", f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[val]"))
    assert own["benchmarks"]["val"]["top1"] == metrics["val_top1"]
    assert own["benchmarks"]["val"]["path"].startswith("the checkpoint's data config")


def test_ema_weights_match_trainer_ema_figure(run, folders, tmp_path):
    run_dir, result, metrics = run
    clean, _ = folders
    res = run_eval(
        _eval_cfg(
            tmp_path, f"checkpoint={run_dir / 'last.pth'}", "use_ema=true", "benchmarks=[val]", f"val.root={clean}"
        )
    )
    assert res["weights"] == "ema" and res["name"].endswith("(EMA)")
    assert res["benchmarks"]["val"]["top1"] == metrics["ema_top1"] == result["ema_top1"]
    state = load_checkpoint(run_dir / "last.pth")
    assert not torch.equal(state["ema"]["head.weight"], state["model"]["head.weight"])  # really other weights
    best = run_eval(
        _eval_cfg(
            tmp_path / "best",
            f"checkpoint={run_dir / 'best_ema.pth'}",
            "use_ema=true",
            "benchmarks=[val]",
            f"val.root={clean}",
        )
    )
    assert best["benchmarks"]["val"]["top1"] == best["trainer_metrics"]["top1"] == metrics["ema_top1"]
    with pytest.raises(EvalConfigError, match="use_ema=true but checkpoint=.*best.pth.* holds no EMA weights"):
        run_eval(_eval_cfg(tmp_path / "no_ema", f"checkpoint={run_dir / 'best.pth'}", "use_ema=true"))


# ------------------------------------------------------------------------------------------ ImageNet-C
def test_corruption_errors_rise_with_severity(evaluated):
    _, res = evaluated
    c = res["benchmarks"]["c"]
    assert c["status"] == "partial" and len(c["splits"]) == len(CORRUPTIONS) * 5
    assert all(s["samples"] == VAL_SUBSET for s in c["splits"])
    err = {(s["corruption"], s["severity"]): s["error"] for s in c["splits"]}
    rising = [name for name in CORRUPTIONS if err[name, 5] > err[name, 1]]
    assert len(rising) >= 2, err  # most corruptions hurt more at severity 5 than at 1
    mean = [sum(err[n, s] for n in CORRUPTIONS) / len(CORRUPTIONS) for s in range(1, 6)]
    assert mean[4] > mean[0] and max(mean) > 100 - res["benchmarks"]["val"]["top1"], mean
    summary = c["summary"]
    assert not summary["complete"] and summary["corruptions_counted"] == 3 and summary["corruptions_expected"] == 15
    assert summary["mean_error"] == pytest.approx(sum(err.values()) / len(err))
    expected_mce = (
        sum(100 * sum(err[n, s] for s in range(1, 6)) / sum(100 * a for a in ALEXNET_ERRORS[n]) for n in CORRUPTIONS)
        / 3
    )
    assert summary["mce"] == pytest.approx(expected_mce)
    assert c["missing"][0] == "shot_noise" and len(c["missing"]) == 12


def test_reports_render_table_json_and_csv(evaluated):
    out, res = evaluated
    md = (out / "table.md").read_text()
    lines = md.splitlines()
    assert lines[0] == TABLE_HEADER and lines[1] == "|---|---:|---:|---:|---:|---:|---:|"
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[0] == "quickstart" and len(cells) == 7
    assert cells[1] == f"{res['benchmarks']['val']['top1']:.2f}"
    assert cells[2] == f"{res['benchmarks']['c']['summary']['mean_error']:.2f}*"  # partial C
    assert cells[3:] == ["–"] * 4
    assert "ImageNet-C mCE (AlexNet-normalised)" in md and "| gaussian_noise |" in md
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["table"]["c"] == res["benchmarks"]["c"]["summary"]["mean_error"]
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0] == "benchmark,corruption,severity,top1,top5,error,samples,skipped,path"
    assert len(rows) == 1 + 1 + 15 and rows[1].startswith("val,,,") and rows[2].startswith("c,gaussian_noise,1,")
    assert "missing shot_noise" in (out / "log.txt").read_text()


def test_make_corrupted_is_deterministic_across_workers(folders, tmp_path):
    clean, corrupted = folders
    src = tmp_path / "src"
    shutil.copytree(clean / "Bag", src / "Bag")
    proc = _make_corrupted(
        src,
        tmp_path / "one",
        "--corruptions",
        "gaussian_noise",
        "contrast",
        "--severities",
        "1",
        "5",
        "--format",
        "png",
        "--no-resize-crop",
        "--upscale-small",
        "56",
        "--workers",
        "1",
    )
    assert proc.returncode == 0, proc.stderr
    files = sorted((tmp_path / "one").rglob("*.png"))
    assert len(files) == 2 * 2 * len(list(src.glob("Bag/*.png")))
    for f in files:  # same bytes as the 2-worker, chunk-32 run of the fixture
        assert f.read_bytes() == (corrupted / f.relative_to(tmp_path / "one")).read_bytes(), f
    again = _make_corrupted(
        src,
        tmp_path / "one",
        "--corruptions",
        "gaussian_noise",
        "--severities",
        "1",
        "5",
        "--workers",
        "1",
        "--format",
        "png",
        "--no-resize-crop",
        "--upscale-small",
        "56",
    )
    assert " 0 written" in again.stdout and "already there" in again.stdout  # resumes, keeps what exists
    _make_corrupted(
        src,
        tmp_path / "seed1",
        "--corruptions",
        "gaussian_noise",
        "--severities",
        "1",
        "--format",
        "png",
        "--no-resize-crop",
        "--upscale-small",
        "56",
        "--seed",
        "1",
        "--workers",
        "1",
    )
    f = next((tmp_path / "seed1").rglob("*.png"))
    assert f.read_bytes() != (corrupted / f.relative_to(tmp_path / "seed1")).read_bytes()


def _make_corrupted_main(capsys, *args: str) -> tuple[int, str]:
    """tools/make_corrupted.py's main() in this process (exit code, stderr): the CLI path is tested elsewhere; five
    subprocesses here cost ~40 s of imports."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_corrupted", ROOT / "tools" / "make_corrupted.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    capsys.readouterr()
    try:
        code = tool.main([*map(str, args), "--no-progress", "--workers", "1"])
    except SystemExit as exit_:  # argparse's errors
        code = exit_.code
    return code, capsys.readouterr().err


def test_make_corrupted_rejects_small_images_and_bad_arguments(folders, tmp_path, capsys):
    clean, _ = folders
    out = tmp_path / "x"
    code, err = _make_corrupted_main(capsys, clean, out, "--corruptions", "contrast", "--no-resize-crop")
    assert code == 2 and "is 28x28 px; imagecorruptions needs at least 32x32; pass --upscale-small" in err
    code, err = _make_corrupted_main(capsys, clean, out, "--corruptions", "fog", "nope")
    assert code == 2 and "--corruptions 'nope' is not supported; allowed: common, extra, all, cbar" in err
    code, err = _make_corrupted_main(capsys, clean, out, "--corruptions", "fog", "sparkles")
    assert code == 2 and "mixes ImageNet-C and ImageNet-C-bar corruptions" in err
    code, err = _make_corrupted_main(capsys, clean, out, "--upscale-small", "32")
    assert code == 2 and "--upscale-small 32 is not supported without --no-resize-crop" in err
    code, err = _make_corrupted_main(capsys, clean, out, "--severities", "6")
    assert code == 2 and "--severities 6 is not supported; allowed: integers 1 to 5" in err


def test_spatter_without_liquid_keeps_the_image(folders):
    """imagecorruptions' spatter divides 0 by 0 when a small image draws no liquid (NaN -> a black image)."""
    import importlib.util

    import numpy as np
    from PIL import Image

    spec = importlib.util.spec_from_file_location("make_corrupted", ROOT / "tools" / "make_corrupted.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    clean, _ = folders
    img = np.asarray(Image.open(next((clean / "Bag").glob("*.png"))).convert("RGB").resize((32, 32)))
    outcomes = [tool.corrupt_image(img, "spatter", 1, seed) for seed in range(100)]
    dry = [out for out, was_dry in outcomes if was_dry]
    assert 0 < len(dry) < 50  # a few seeds draw no liquid at 32 px
    assert all(np.array_equal(out, img) for out in dry)
    assert all(out.any() and not np.array_equal(out, img) for out, was_dry in outcomes if not was_dry)


# --------------------------------------------------------------------- missing folders, unreadable images
def test_missing_benchmarks_are_reported_and_others_still_run(run, folders, tmp_path):
    run_dir, _, metrics = run
    clean, _ = folders
    res = run_eval(
        _eval_cfg(
            tmp_path,
            f"checkpoint={run_dir / 'last.pth'}",
            "benchmarks=[sketch,val,cbar,a]",
            f"val.root={clean}",
            f"sketch.root={tmp_path / 'nope'}",
        )
    )
    b = res["benchmarks"]
    assert list(b) == ["sketch", "val", "cbar", "a"] and res["evaluated"] == ["val"]
    assert b["val"]["top1"] == metrics["val_top1"]
    assert b["sketch"]["status"] == "unavailable" and "sketch.root=" in b["sketch"]["message"]
    assert "folder not found" in b["sketch"]["message"]
    assert "cbar.root is not set" in b["cbar"]["message"]
    assert "a.root is not set" in b["a"]["message"]
    log = (tmp_path / "log.txt").read_text()
    assert "ImageNet-Sketch: sketch.root=" in log and "skipped, the other benchmarks still run" in log
    md = (tmp_path / "table.md").read_text()
    assert "not run: ImageNet-C-bar (cbar.root is not set" in md
    # the quickstart model has 10 classes: ImageNet-A cannot be sliced from it
    (tmp_path / "a" / "n01498041").mkdir(parents=True)
    res = run_eval(
        _eval_cfg(
            tmp_path / "a_out", f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[a]", f"a.root={tmp_path / 'a'}"
        )
    )
    assert res["evaluated"] == [] and "needs an ImageNet-1k classifier" in res["benchmarks"]["a"]["message"]


def test_unreadable_images_are_skipped_and_counted(run, folders, tmp_path):
    run_dir, _, metrics = run
    clean, _ = folders
    broken = tmp_path / "clean"
    shutil.copytree(clean, broken)
    (broken / "Bag" / "zz_garbage.png").write_bytes(b"this is not an image")
    png = next((broken / "Coat").glob("*.png")).read_bytes()
    (broken / "Coat" / "zz_truncated.png").write_bytes(png[: len(png) // 2])
    res = run_eval(
        _eval_cfg(tmp_path / "out", f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[val]", f"val.root={broken}")
    )
    val = res["benchmarks"]["val"]
    assert (val["samples"], val["skipped"], res["skipped_images"]) == (VAL_SUBSET, 2, 2)
    assert val["top1"] == metrics["val_top1"]  # the readable images are the same
    assert "ImageNet val: skipped 2 unreadable image(s)" in (tmp_path / "out" / "log.txt").read_text()
    assert "unreadable images skipped: 2" in (tmp_path / "out" / "table.md").read_text()


def test_foreign_class_folders_are_refused(run, folders, tmp_path):
    run_dir, _, _ = run
    clean, _ = folders
    shutil.copytree(clean / "Bag", tmp_path / "val" / "n01440764")
    res = run_eval(
        _eval_cfg(
            tmp_path / "out", f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[val]", f"val.root={tmp_path / 'val'}"
        )
    )
    msg = res["benchmarks"]["val"]["message"]
    assert "class folders ['n01440764'] are not among the model's 10 classes (e.g. T-shirt_top" in msg


@pytest.mark.parametrize("crop_pct", [0.875, None])
def test_imagefolder_checkpoint_val_matches_trainer_evaluate(folders, tmp_path, crop_pct):
    """An ImageNet-style checkpoint (timm eval transform, val_subset) with val.root unset: same samples and the
    same top-1 as the trainer's own ``evaluate`` on ``build_datasets``' val split; also with data.crop_pct null
    (one default for both, issue 15 item 9)."""
    from dcls_vision.data import build_datasets
    from dcls_vision.engine.evaluate import evaluate
    from dcls_vision.engine.loader import EpochLoader

    clean, _ = folders
    for split in ("train", "val"):
        shutil.copytree(clean, tmp_path / "ds" / split)
    data = {
        "name": "imagefolder",
        "root": str(tmp_path / "ds"),
        "train_dir": "train",
        "val_dir": "val",
        "val_subset": 50,
        "num_classes": 10,
        "in_chans": 1,
        "img_size": 24,
        "mean": [0.3],
        "std": [0.35],
        "interpolation": "bicubic",
        "crop_pct": crop_pct,
        "num_workers": 0,
    }
    cfg = {
        "experiment_name": "folder",
        "model": {"name": "dcls_quickstart", "kwargs": {"dim": 16, "depth": 2}},
        "data": data,
        "trainer": {"batch_size": 16, "amp": "none", "channels_last": True},
    }
    torch.manual_seed(0)
    model = build_model(OmegaConf.create(cfg), 10, 1).eval()
    atomic_save({"model": model.state_dict(), "epoch": 0, "metrics": {}, "config": cfg}, tmp_path / "f.pth")
    res = run_eval(_eval_cfg(tmp_path / "out", f"checkpoint={tmp_path / 'f.pth'}", "benchmarks=[val]"))
    _, val_ds, _ = build_datasets(data, {})
    ref = evaluate(
        model.to(memory_format=torch.channels_last),
        EpochLoader(val_ds, 16, train=False, num_replicas=1, rank=0, seed=0, num_workers=0, pin_memory=False),
        torch.device("cpu"),
        channels_last=True,
    )
    got = res["benchmarks"]["val"]
    assert (got["samples"], got["top1"], got["top5"]) == (50, ref["top1"], ref["top5"])
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-6)  # same tensors, not just the same argmax
    assert got["path"].startswith("the checkpoint's data config")


# ------------------------------------------------------------------------ ImageNet-A / -R subsets
def test_subset_indices_come_from_timm_and_follow_the_class_order():
    wnids, indices = subset_synsets("imagenet_a")
    synsets = imagenet_synsets()
    assert len(wnids) == len(indices) == 200 and [synsets[i] for i in indices] == wnids
    assert subset_logit_indices(synsets, "imagenet_a") == (wnids, indices)
    reordered = synsets[::-1]  # a model with another class order: columns follow the wnids, not the file
    _, cols = subset_logit_indices(reordered, "imagenet_r")
    r_wnids, _ = subset_synsets("imagenet_r")
    assert [reordered[c] for c in cols] == r_wnids
    logits = torch.randn(4, 1000)
    assert torch.equal(SubsetLogits(torch.nn.Identity(), indices)(logits), logits[:, indices])
    with pytest.raises(ValueError, match="subset='imagenet_x' is not supported; allowed: imagenet_a, imagenet_r"):
        subset_synsets("imagenet_x")


def test_a_r_sketch_on_a_hand_made_imagenet_model(folders, tmp_path):
    """A 1000-class model whose logits are its head bias: unrestricted it always says class 0 (in neither
    subset); restricted to A's / R's 200 columns it says the highest-bias subset class. Folder contents then
    fix the exact expected top-1 of each benchmark."""
    clean, _ = folders
    a_wnids, a_idx = subset_synsets("imagenet_a")
    r_wnids, r_idx = subset_synsets("imagenet_r")
    synsets = imagenet_synsets()
    bias = torch.zeros(1000)
    bias[0] = 10.0  # n01440764: not in A nor R
    bias[a_idx[3]], bias[r_idx[7]] = 5.0, 4.0
    assert 0 not in a_idx and 0 not in r_idx and a_idx[3] not in r_idx
    cfg = {
        "experiment_name": "handmade",
        "model": {"name": "dcls_quickstart", "drop_path_rate": None, "kwargs": {"dim": 16, "depth": 2}},
        "data": {
            "name": "imagefolder",
            "root": None,
            "num_classes": 1000,
            "in_chans": 1,
            "img_size": 28,
            "mean": [0.5],
            "std": [0.5],
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "num_workers": 0,
        },
        "trainer": {"batch_size": 4, "amp": "none", "channels_last": False},
    }
    model = build_model(OmegaConf.create(cfg), 1000, 1)
    sd = model.state_dict()
    sd["head.weight"].zero_()
    sd["head.bias"].copy_(bias)
    atomic_save({"model": sd, "epoch": 0, "metrics": {}, "config": cfg}, tmp_path / "handmade.pth")
    images = sorted((clean / "Bag").glob("*.png"))

    def folder(name: str, counts: dict[str, int]) -> Path:
        it = iter(images)
        for wnid, n in counts.items():
            (tmp_path / name / wnid).mkdir(parents=True)
            for _ in range(n):
                shutil.copy(next(it), tmp_path / name / wnid)
        return tmp_path / name

    a = folder("a", {a_wnids[3]: 3, a_wnids[0]: 2})  # 3 of 5 right once restricted
    r = folder("r", {r_wnids[7]: 1, r_wnids[1]: 3})  # 1 of 4
    sk = folder("sketch", {synsets[0]: 2, synsets[5]: 3})  # 1000 classes, no restriction: 2 of 5
    res = run_eval(
        _eval_cfg(
            tmp_path / "out",
            f"checkpoint={tmp_path / 'handmade.pth'}",
            "benchmarks=[a,r,sketch]",
            f"a.root={a}",
            f"r.root={r}",
            f"sketch.root={sk}",
        )
    )
    b = res["benchmarks"]
    assert (b["a"]["top1"], b["a"]["samples"], b["a"]["classes"]) == (60.0, 5, 200)
    assert (b["r"]["top1"], b["r"]["samples"]) == (25.0, 4)
    assert (b["sketch"]["top1"], b["sketch"]["samples"]) == (40.0, 5)
    row = (tmp_path / "out" / "table.md").read_text().splitlines()[2]
    assert row == "| handmade | – | – | – | 60.00 | 25.00 | 40.00 |"


# ------------------------------------------------------------------------------ metrics and configs
def test_alexnet_errors_match_the_published_averages():
    # per-corruption AlexNet errors of google-research/augmix imagenet.py (from hendrycks/robustness)
    published = [
        0.886428,
        0.894468,
        0.922640,
        0.819880,
        0.826268,
        0.785948,
        0.798360,
        0.866816,
        0.826572,
        0.819324,
        0.564592,
        0.853204,
        0.646056,
        0.717840,
        0.606500,
    ]
    assert list(ALEXNET_ERRORS) == list(IMAGENET_C)
    for name, avg in zip(IMAGENET_C, published):
        assert sum(ALEXNET_ERRORS[name]) / 5 == pytest.approx(avg, abs=1e-6), name
    # AlexNet's own errors give mCE 100 and C = its mean error
    errors = {n: {s: 100 * ALEXNET_ERRORS[n][s - 1] for s in range(1, 6)} for n in IMAGENET_C}
    summary = corruption_summary(errors, IMAGENET_C, normalise=True)
    assert summary["complete"] and summary["mce"] == pytest.approx(100.0)
    assert summary["mean_error"] == pytest.approx(100 * sum(published) / 15)
    errors["speckle_noise"] = {1: 0.0}  # an extra corruption is reported but not averaged
    again = corruption_summary(errors, IMAGENET_C, normalise=True)
    assert again["mean_error"] == summary["mean_error"] and "speckle_noise" in again["per_corruption"]
    assert again["extra"] == ["speckle_noise"] and again["extra_mean_error"] == 0.0


def test_config_errors_name_the_key(run, tmp_path):
    run_dir, _, _ = run
    ckpt = f"checkpoint={run_dir / 'last.pth'}"
    cases = [
        (["benchmarks=[val,imagenet_v2]"], "benchmarks='imagenet_v2' is not supported; allowed: a non-empty list"),
        ([ckpt, "benchmarks=[c]", "c.severities=[0,1]"], "c.severities=0 is not supported"),
        ([ckpt, "benchmarks=[cbar]", "cbar.corruptions=[fog]"], "cbar.corruptions='fog' is not supported"),
        ([ckpt, "val.crop_pct=1.5"], "val.crop_pct=1.5 must be a number in (0, 1] or null"),
        ([ckpt, "batch_size=0"], "batch_size=0 must be an integer >= 1 or null"),
        ([f"checkpoint={tmp_path / 'none.pth'}"], "is not a file; allowed: a .pth written by train.py"),
    ]
    for overrides, message in cases:
        if not overrides[0].startswith("checkpoint="):
            overrides = [ckpt, *overrides]
        with pytest.raises(EvalConfigError) as info:
            run_eval(_eval_cfg(tmp_path / "x", *overrides))
        assert message in str(info.value), str(info.value)
    not_ckpt = tmp_path / "weights.pth"
    torch.save({"state_dict": {}}, not_ckpt)
    with pytest.raises(EvalConfigError, match="in none of the checkpoint formats read here .*'model' and 'config'"):
        run_eval(_eval_cfg(tmp_path / "y", f"checkpoint={not_ckpt}"))


# ------------------------------------------------------------------------------------- CLI, torchrun
def test_cli_bad_checkpoint_exits_2_with_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "eval.py"),
            f"checkpoint={tmp_path / 'missing.pth'}",
            f"output_dir={tmp_path / 'out'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("EvalConfigError: checkpoint=") and "is not a file" in lines[0]
    assert not (tmp_path / "out").exists()  # the dir Hydra made is removed again


@pytest.mark.slow
def test_torchrun_two_processes_give_the_same_numbers(run, folders, evaluated, tmp_path):
    run_dir, _, _ = run
    clean, corrupted = folders
    _, single = evaluated
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29531",
        str(ROOT / "eval.py"),
        f"checkpoint={run_dir / 'last.pth'}",
        "benchmarks=[val,c]",
        f"val.root={clean}",
        f"c.root={corrupted}",
        "c.corruptions=[contrast]",
        "c.severities=[1,5]",
        f"output_dir={out}",
        "progress=false",
    ]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count(TABLE_HEADER) == 1  # rank 0 prints and writes
    res = json.loads((out / "results.json").read_text())
    assert res["world_size"] == 2
    assert res["benchmarks"]["val"]["top1"] == single["benchmarks"]["val"]["top1"]
    assert res["benchmarks"]["val"]["samples"] == VAL_SUBSET  # each image counted once over the two ranks
    ref = {(s["corruption"], s["severity"]): s for s in single["benchmarks"]["c"]["splits"]}
    for s in res["benchmarks"]["c"]["splits"]:
        assert (s["top1"], s["top5"], s["samples"]) == (
            ref[s["corruption"], s["severity"]]["top1"],
            ref[s["corruption"], s["severity"]]["top5"],
            VAL_SUBSET,
        )
    assert len(res["benchmarks"]["c"]["splits"]) == 2


# ------------------------------------------------------------- issue 15: robustness of the evaluation itself
def _c_args(run_dir: Path, clean: Path, corrupted: Path) -> list[str]:
    return [f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[val,c]", f"val.root={clean}", f"c.root={corrupted}"]


def _split_lines(text: str, title: str = "ImageNet-C") -> list[str]:
    """The per-split "… top-1 x on n image(s)" lines: one per split actually evaluated."""
    return re.findall(rf"^{title} \S+/\d: top-1 .* on \d+ image\(s\)$", text, flags=re.M)


def test_unusable_split_is_skipped_and_the_others_kept(run, folders, evaluated, tmp_path):
    """An empty gaussian_noise/3 and a contrast/2 without class folders used to drop all of ImageNet-C."""
    run_dir, _, _ = run
    _, corrupted = folders
    _, full = evaluated
    c = tmp_path / "c"
    for name in ("gaussian_noise", "contrast"):
        shutil.copytree(corrupted / name, c / name)
    for png in (c / "gaussian_noise" / "3").rglob("*.png"):
        png.unlink()  # class folders left, no images
    shutil.rmtree(c / "contrast" / "2")
    (c / "contrast" / "2").mkdir()  # no class folders
    res = run_eval(
        _eval_cfg(
            tmp_path / "out",
            f"checkpoint={run_dir / 'last.pth'}",
            "benchmarks=[c]",
            f"c.root={c}",
            "c.corruptions=[gaussian_noise,contrast]",
        )
    )
    entry = res["benchmarks"]["c"]
    assert res["evaluated"] == ["c"] and entry["status"] == "partial"
    assert sorted((s["corruption"], s["severity"]) for s in entry["splits"]) == sorted(
        (n, v)
        for n in ("gaussian_noise", "contrast")
        for v in range(1, 6)
        if (n, v) not in (("gaussian_noise", 3), ("contrast", 2))
    )
    assert [u.split(" (")[0] for u in entry["unusable"]] == ["gaussian_noise/3", "contrast/2"]
    ref = {(s["corruption"], s["severity"]): s["top1"] for s in full["benchmarks"]["c"]["splits"]}
    assert all(s["top1"] == ref[s["corruption"], s["severity"]] for s in entry["splits"])
    md = (tmp_path / "out" / "table.md").read_text()
    assert "ImageNet-C: 2 unusable split(s) skipped: gaussian_noise/3 (" in md and "not run" not in md
    assert "ImageNet-C gaussian_noise/3: " in (tmp_path / "out" / "log.txt").read_text()


def _eval_cmd(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "eval.py"), "progress=false", *overrides]


def test_killed_eval_resumes_without_reevaluating(run, folders, evaluated, tmp_path):
    """SIGKILL after the second ImageNet-C split; the same command then evaluates only what was not saved and
    ends with byte-identical CSV figures to an uninterrupted run (the ``evaluated`` fixture)."""
    run_dir, _, _ = run
    clean, corrupted = folders
    ref_out, _ = evaluated
    out = tmp_path / "out"
    cmd = _eval_cmd(*_c_args(run_dir, clean, corrupted), f"output_dir={out}")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    seen = 0
    for line in proc.stdout:
        seen += bool(_split_lines(line.rstrip("\n")))
        if seen == 2:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert seen == 2, "the run ended before its second ImageNet-C split"
    saved = json.loads((out / "results.json").read_text())
    done = len(saved["benchmarks"]["c"]["splits"])
    assert saved["complete"] is False and 1 <= done < 15 and saved["benchmarks"]["val"]["status"] == "ok"
    assert "in progress" in (out / "table.md").read_text()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert len(_split_lines(again.stdout)) == 15 - done and not _split_lines(again.stdout, "ImageNet val")
    assert f"ImageNet-C: {done} split(s) already in results.json (same command), not re-evaluated" in again.stdout
    assert "ImageNet val: already in results.json (same command)" in again.stdout
    assert json.loads((out / "results.json").read_text())["complete"] is True
    assert (out / "results.csv").read_text() == (ref_out / "results.csv").read_text()
    # a finished run of the same command is reported again, nothing re-evaluated
    third = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0 and not _split_lines(third.stdout)
    assert "is a finished run of this command" in third.stdout
    # another command into the same dir: one line naming the change, everything re-evaluated, old files kept
    res = run_eval(_eval_cfg(out, *_c_args(run_dir, clean, corrupted), "c.corruptions=[contrast]", "c.crop_pct=0.9"))
    log = (out / "log.txt").read_text().split("came from another command")[-1]
    assert log.startswith(" (changed: c.corruptions, c.crop_pct);")
    assert len(_split_lines(log)) == 5 and len(res["benchmarks"]["c"]["splits"]) == 5
    old = list(out.glob("superseded-*/results.csv"))
    assert len(old) == 1 and old[0].read_text() == (ref_out / "results.csv").read_text()


def test_failed_results_write_is_one_line_and_the_same_command_resumes(run, folders, tmp_path, monkeypatch):
    """A full disk at the third results write (issue 31): one SaveError line naming the file, the free space and
    what the intact results.json holds (the clean split and one ImageNet-C split); the same command then resumes."""
    import errno

    from dcls_vision.robustness import output as output_mod
    from dcls_vision.utils import io as io_mod
    from dcls_vision.utils.errors import SaveError

    run_dir, _, _ = run
    clean, corrupted = folders
    out = tmp_path / "out"
    args = [*_c_args(run_dir, clean, corrupted), "c.corruptions=[contrast]", "c.severities=[1,2,3]"]
    real_write, calls = output_mod.write_reports, []

    def write_on_a_full_disk(result, out_dir):
        calls.append(1)
        if len(calls) < 3:
            return real_write(result, out_dir)

        def no_space(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        with pytest.MonkeyPatch.context() as m:
            m.setattr(io_mod.os, "fsync", no_space)
            return real_write(result, out_dir)

    monkeypatch.setattr(output_mod, "write_reports", write_on_a_full_disk)
    with pytest.raises(SaveError) as err:
        run_eval(_eval_cfg(out, *args))
    assert re.fullmatch(
        rf"writing {out}/results\.json failed: \[Errno 28\] No space left on device; {out} has \S+ \S+ free, the "
        rf"file needs \S+ \S+; the previous results\.json is intact; {out}/results\.json is intact with 2 evaluated "
        r"split\(s\): free space \(or fix the permissions\) and rerun the same command to resume \(saved splits are "
        r"not re-evaluated\)",
        str(err.value),
    ), str(err.value)
    assert not list(out.glob(".*.tmp"))
    monkeypatch.undo()
    res = run_eval(_eval_cfg(out, *args))
    assert res["evaluated"] == ["val", "c"] and len(res["benchmarks"]["c"]["splits"]) == 3
    log = (out / "log.txt").read_text()
    assert "ImageNet-C: 1 split(s) already in results.json (same command), not re-evaluated" in log


def test_default_output_dir_resumes_the_unfinished_run_of_the_same_command(run, folders, tmp_path):
    """eval.py's default output_dir is new each time: the same command continues the newest unfinished run."""
    run_dir, _, _ = run
    clean, corrupted = folders
    parent = tmp_path / "eval"
    args = [f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[c]", f"c.root={corrupted}", "c.corruptions=[contrast]"]
    first = run_eval(_eval_cfg(parent / "t1", *args), resume_search=parent)
    saved = json.loads((parent / "t1" / "results.json").read_text())
    saved["complete"] = False  # as if killed after three of its five splits
    saved["benchmarks"]["c"]["splits"] = saved["benchmarks"]["c"]["splits"][:3]
    (parent / "t1" / "results.json").write_text(json.dumps(saved))
    # a different command does not touch it: it says why and starts afresh in its own dir
    other = run_eval(_eval_cfg(parent / "t3", *args[:-1], "c.corruptions=[defocus_blur]"), resume_search=parent)
    assert other["reports"]["json"] == str(parent / "t3" / "results.json")
    assert "was another command (changed: c.corruptions)" in (parent / "t3" / "log.txt").read_text()
    again = run_eval(_eval_cfg(parent / "t2", *args), resume_search=parent)
    assert not (parent / "t2").exists() and again["reports"]["json"] == str(parent / "t1" / "results.json")
    log = (parent / "t1" / "log.txt").read_text().split("resuming the unfinished evaluation in")[-1]
    assert len(_split_lines(log)) == 2
    assert again["benchmarks"]["c"]["summary"] == first["benchmarks"]["c"]["summary"]


def test_coverage_warnings(run, folders, evaluated, tmp_path):
    """A 2-class folder as sketch.root silently gave a figure for "ImageNet-Sketch"; now it says so."""
    run_dir, _, _ = run
    clean, _ = folders
    sk = tmp_path / "sketch"
    for name in ("Bag", "Coat"):
        shutil.copytree(clean / name, sk / name)
    n = len(list(sk.rglob("*.png")))
    res = run_eval(
        _eval_cfg(tmp_path / "out", f"checkpoint={run_dir / 'last.pth'}", "benchmarks=[sketch]", f"sketch.root={sk}")
    )
    line = (
        f"coverage: ImageNet-Sketch has {n} images in 2 classes here, the released benchmark 50,889 in 1,000; "
        f"fine for a subset or a demo, but the figure is not comparable with published ones"
    )
    assert res["benchmarks"]["sketch"]["warnings"] == [line]
    assert f"- {line}" in (tmp_path / "out" / "table.md").read_text()
    assert line in (tmp_path / "out" / "log.txt").read_text()
    out, full = evaluated  # the corrupted demo folder: per split
    assert (
        "coverage: ImageNet-C has 200 images in 10 classes per split here, the released benchmark 50,000 in "
        "1,000" in (out / "table.md").read_text()
    )
    assert "coverage: ImageNet val has 200 images in 10 classes here" in (out / "table.md").read_text()


def test_best_ema_is_labelled_ema_without_use_ema(run, folders, tmp_path):
    run_dir, _, metrics = run
    clean, _ = folders
    res = run_eval(
        _eval_cfg(tmp_path, f"checkpoint={run_dir / 'best_ema.pth'}", "benchmarks=[val]", f"val.root={clean}")
    )
    assert res["weights"] == "ema" and res["name"].endswith("(EMA)")
    assert res["benchmarks"]["val"]["top1"] == metrics["ema_top1"]


def test_cbar_folder_made_by_make_corrupted_is_evaluated(run, folders, tmp_path):
    """tools/make_corrupted.py --corruptions cbar writes the release's layout (<name>/<parameter>/...), and
    eval.py reads it end to end."""
    run_dir, _, _ = run
    clean, _ = folders
    src = tmp_path / "src"
    for name in ("Bag", "Coat", "Sneaker"):
        shutil.copytree(clean / name, src / name)
    out = tmp_path / "cbar"
    proc = _make_corrupted(
        src,
        out,
        "--corruptions",
        "cbar",
        "--severities",
        "1",
        "5",
        "--no-resize-crop",
        "--format",
        "png",
        "--workers",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    n = len(list(src.rglob("*.png")))
    assert f"{n * 10 * 2} written" in proc.stdout
    assert sorted(p.name for p in (out / "blue_noise_sample").iterdir()) == ["0.80", "5.60"]
    assert sorted(p.name for p in (out / "caustic_refraction").iterdir()) == ["2.35", "9.15"]
    res = run_eval(
        _eval_cfg(
            tmp_path / "eval",
            f"checkpoint={run_dir / 'last.pth'}",
            "benchmarks=[cbar]",
            f"cbar.root={out}",
            "cbar.severities=[1,5]",
        )
    )
    entry = res["benchmarks"]["cbar"]
    assert len(entry["splits"]) == 20 and all(s["samples"] == n for s in entry["splits"])
    assert entry["summary"]["corruptions_counted"] == 10 and not entry["missing"] and not entry["unusable"]
    assert {s["path"].rsplit("/", 1)[-1] for s in entry["splits"] if s["corruption"] == "sparkles"} == {"1.00", "6.00"}


def test_eval_py_with_the_default_output_dir_resumes(run, folders, tmp_path):
    """eval.py wiring: without output_dir=, a re-run continues the newest unfinished run under outputs/eval/."""
    run_dir, _, _ = run
    _, corrupted = folders
    args = [
        f"checkpoint={run_dir / 'last.pth'}",
        "benchmarks=[c]",
        f"c.root={corrupted}",
        "c.corruptions=[contrast]",
        "c.severities=[1,2]",
    ]
    first = subprocess.run(_eval_cmd(*args), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    (run1,) = (tmp_path / "outputs" / "eval").iterdir()
    saved = json.loads((run1 / "results.json").read_text())
    saved["complete"] = False  # as if killed after its first split
    saved["benchmarks"]["c"]["splits"] = saved["benchmarks"]["c"]["splits"][:1]
    (run1 / "results.json").write_text(json.dumps(saved))
    again = subprocess.run(_eval_cmd(*args), cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming the unfinished evaluation in {run1}" in again.stdout and len(_split_lines(again.stdout)) == 1
    assert list((tmp_path / "outputs" / "eval").iterdir()) == [run1]  # the new, empty dir is not left behind
    assert json.loads((run1 / "results.json").read_text())["complete"] is True
