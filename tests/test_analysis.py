"""Analysis and export tools, run from their CLIs on small real inputs, outputs checked for meaning."""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from PIL import Image
from torch import nn

import dcls_vision.models  # noqa: F401  (registers the models)
from dcls_vision.analysis import erf as erf_mod
from dcls_vision.analysis import export as export_mod
from dcls_vision.analysis.flops import analyse, count_construction
from dcls_vision.analysis.memory import peak_allocated_bytes, resident_bytes
from dcls_vision.analysis.receptive_field import trace
from dcls_vision.engine import train
from dcls_vision.engine.checkpoint import load_checkpoint
from dcls_vision.models.quickstart import matched_kernel_count
from dcls_vision.ops import Dcls2d

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
TOOL_NAMES = ("flops", "throughput", "receptive_field", "plot_positions", "erf", "export")
EXTRA = os.environ.get("DCLS_TEST_HYDRA_OVERRIDES", "").split()
FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(name: str, argv: list[str], capsys) -> dict:
    """Run a tool's CLI in-process; its stdout must be the JSON it also wrote to --out."""
    result = _tool(name).main(argv)
    printed = json.loads(capsys.readouterr().out)
    out = Path(argv[argv.index("--out") + 1])
    stored = json.loads(next(out.glob("*.json")).read_text())
    assert printed == stored
    assert printed["tool"] == name
    return result if result is not None else printed


def _assert_png(path: str | Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    with Image.open(path) as im:
        assert im.size[0] > 200 and im.size[1] > 200


def _one_line_error(capsys, exc: pytest.ExceptionInfo, *needles: str) -> None:
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


# ------------------------------------------------------------------------------------- a real tiny run
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 2-epoch training of a small DCLS quickstart net on a Fashion-MNIST subset."""
    out = tmp_path_factory.mktemp("run")
    overrides = [
        "experiment=quickstart",
        "data.train_subset=256",
        "data.val_subset=64",
        "data.num_workers=0",
        "+model.kwargs.dim=16",
        "+model.kwargs.depth=2",
        "trainer.batch_size=32",
        "trainer.epochs=2",
        "optim.lr=5e-3",
        "logger.wandb=false",
        "logger.progress=false",
        *EXTRA,
        f"trainer.output_dir={out}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    train(cfg)
    return out


@pytest.fixture(scope="module")
def fashion_images(tmp_path_factory) -> Path:
    """Eight real Fashion-MNIST test images written as PNG files."""
    folder = tmp_path_factory.mktemp("images")
    with gzip.open(FASHION_TEST_IMAGES, "rb") as f:
        f.read(16)  # IDX header
        pixels = np.frombuffer(f.read(8 * 28 * 28), dtype=np.uint8).reshape(8, 28, 28)
    for i, img in enumerate(pixels):
        Image.fromarray(img, mode="L").save(folder / f"img_{i}.png")
    return folder


# ------------------------------------------------------------------------------------------- CLI basics
def test_every_tool_has_help():
    for name in TOOL_NAMES:
        proc = subprocess.run(
            [sys.executable, str(TOOLS / f"{name}.py"), "--help"], capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(f"usage: {name}.py") and "--out" in proc.stdout


def test_tool_choices_match_library():
    assert tuple(_tool("export").FORMATS) == export_mod.FORMATS
    assert tuple(_tool("export").ONNX_EXPORTERS) == export_mod.ONNX_EXPORTERS
    assert tuple(_tool("erf").REDUCTIONS) == erf_mod.REDUCTIONS


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _tool("flops").main(["--models", "resnet_nope", "--out", str(tmp_path)])
    _one_line_error(capsys, exc, "'resnet_nope'", "allowed")
    with pytest.raises(SystemExit) as exc:
        _tool("export").main(["--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path)])
    _one_line_error(capsys, exc, "missing.pth", "allowed")
    with pytest.raises(SystemExit) as exc:
        _tool("erf").main(["--model", "dcls_quickstart", "--images", str(tmp_path / "none"), "--out", str(tmp_path)])
    _one_line_error(capsys, exc, "--images", "allowed")
    with pytest.raises(SystemExit) as exc:
        _tool("plot_positions").main(["--model", "resnet18", "--out", str(tmp_path)])
    _one_line_error(capsys, exc, "no DCLS layer", "allowed")
    with pytest.raises(SystemExit) as exc:
        _tool("throughput").main(["--batch-sizes", "0", "--out", str(tmp_path)])
    _one_line_error(capsys, exc, "'0'", "allowed")


def test_ema_of_a_run_without_ema_is_refused(run_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _tool("flops").main(["--checkpoint", str(run_dir), "--ema", "--out", str(tmp_path)])
    _one_line_error(capsys, exc, "--ema", "last.pth", "allowed")


# ------------------------------------------------------------------------------------------------ FLOPs
def test_flops_of_plain_convs_equal_hand_formula():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 5, padding=2, groups=8),
        nn.Conv2d(8, 16, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )
    r = analyse(model, (2, 3, 32, 32))
    macs = 16 * 16 * (8 * 3 * 9 + 8 * 25 + 16 * 8) + 16 * 10
    assert r["gmacs"] * 1e9 == pytest.approx(macs)
    assert r["gflops"] == pytest.approx(2 * r["gmacs"])
    assert r["params"]["total"] == sum(p.numel() for p in model.parameters())
    assert r["construction"]["gflops_per_pass"] == 0


@pytest.mark.parametrize("interpolation", ["gauss", "bilinear"])
def test_dcls_flops_exceed_dense_conv_by_the_construction(interpolation):
    c, k, s = 8, 5, 9
    dcls = Dcls2d(c, c, k, s, groups=c, interpolation=interpolation)
    dense = nn.Conv2d(c, c, s, padding=s // 2, groups=c)
    r_dcls, r_dense = analyse(nn.Sequential(dcls), (4, c, 16, 16)), analyse(nn.Sequential(dense), (4, c, 16, 16))
    assert r_dcls["gmacs"] == pytest.approx(r_dense["gmacs"])  # same dense s x s convolution
    assert r_dcls["gmacs"] * 1e9 == pytest.approx(16 * 16 * c * s * s)
    construction = count_construction(dcls)
    assert construction.elementwise_ops > 0
    # gauss/triangle: the einsum is one multiply-add per (channel, element, kernel cell); bilinear scatters instead
    assert construction.matmul_flops == (2 * c * k * s * s if interpolation == "gauss" else 0)
    c_gflops = r_dcls["construction"]["gflops_per_pass"]
    assert c_gflops * 1e9 == pytest.approx(construction.flops)
    extra = r_dcls["forward_with_construction_gflops_per_image"] - r_dense["forward_with_construction_gflops_per_image"]
    assert extra == pytest.approx(c_gflops / 4)  # once per pass of 4 images
    assert r_dcls["params"]["positions"] == 2 * c * k


def test_flops_cli_convnext_tiny_vs_dcls_match_thesis(tmp_path, capsys):
    out = tmp_path / "flops"
    r = _run("flops", ["--models", "convnext_tiny", "convnext_tiny_dcls", "--out", str(out)], capsys)
    base, dcls = r["results"]
    assert base["gmacs"] == pytest.approx(4.5, abs=0.05) and dcls["gmacs"] == pytest.approx(5.0, abs=0.05)
    assert base["params_m"] == pytest.approx(28.59, abs=0.01) and dcls["params_m"] == pytest.approx(28.59, abs=0.01)
    # 18 depthwise 7x7 -> 17x17: (17^2 - 7^2) taps x channels x positions more
    taps = (17**2 - 7**2) * (3 * 96 * 56**2 + 3 * 192 * 28**2 + 9 * 384 * 14**2 + 3 * 768 * 7**2)
    assert (dcls["gmacs"] - base["gmacs"]) * 1e9 == pytest.approx(taps)
    assert dcls["dcls_layers"] == 18 and dcls["construction"]["gflops_per_pass"] > 0
    assert sum(dcls["parts_gmacs"].values()) == pytest.approx(dcls["gmacs"])
    _assert_png(r["png"])


# ------------------------------------------------------------------------------------ receptive field
def test_receptive_field_of_small_net_by_hand():
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(1, 4, 3, stride=2, padding=1)  # rf 3, jump 2
            self.block = nn.Conv2d(4, 4, 5, padding=2)  # + 4*2 = 11
            self.pool = nn.MaxPool2d(2)  # + 1*2 = 13, jump 4
            self.dcls = Dcls2d(4, 4, 3, 9, groups=4)  # + 8*4 = 45
            self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2, stride=2)  # + 4*4 = 61, jump 8

        def forward(self, x):
            x = self.stem(x)
            x = x + self.block(x)  # residual: the union of both branches
            return self.dilated(self.dcls(self.pool(x)))

    table = trace(Net(), (1, 1, 64, 64), blocks=r"^(stem|block|pool|dcls|dilated)$")
    got = {b["block"]: (b["rf_size"], b["jump"][0]) for b in table["blocks"]}
    assert got == {"stem": (3, 2), "block": (11, 2), "pool": (13, 4), "dcls": (45, 4), "dilated": (61, 8)}


def test_receptive_field_cli_table_6_1(tmp_path, capsys):
    r = _run("receptive_field", ["--out", str(tmp_path / "rf")], capsys)
    rows = {row["block"]: row for row in r["table"]}
    assert len(rows) == 1 + 3 + 1 + 3 + 1 + 9 + 1 + 3  # stem, 4 stages of blocks, 3 downsamplers

    def expected(k: int) -> list[float]:  # stem 4x4/4, then per block + (k-1)*jump, downsample 2x2/2: + jump
        rf, jump, out = 4, 4, [4]
        for stage, depth in enumerate((3, 3, 9, 3)):
            if stage:
                rf, jump = rf + jump, jump * 2
                out.append(rf)
            for _ in range(depth):
                rf += (k - 1) * jump
                out.append(rf)
        return out

    for model, k in (("convnext_tiny", 7), ("convnext_tiny_dcls", 17), ("convnext_tiny_dcls_gauss", 23)):
        assert [row[model] for row in r["table"]] == expected(k)
    assert rows["stages.0.blocks.2"]["convnext_tiny"] == 76 and rows["stages.3.blocks.2"]["convnext_tiny"] == 1688
    _assert_png(r["png"])


# ----------------------------------------------------------------------- positions, from a real run
def test_plot_positions_from_run_dir(run_dir, tmp_path, capsys):
    out = tmp_path / "pos"
    r = _run("plot_positions", ["--run-dir", str(run_dir), "--channels", "0", "3", "--out", str(out)], capsys)
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speed = r["speed"]
    assert speed["epochs"] == [1, 2] and speed["lr"] == [m["lr"] for m in metrics]
    assert speed["pos_lr_scale"] == 5.0
    ((name, values),) = speed["speed"].items()
    assert values == [m["pos_delta"][name] for m in metrics] and all(v > 0 for v in values)

    state = load_checkpoint(run_dir / "last.pth")["model"]
    (group,) = r["positions"]  # one stage-shared tensor
    assert group["layers"] == ["stages.0.conv_dw", "stages.1.conv_dw"]
    positions = state[group["name"]]
    assert group["elements"] == positions[0].numel() == 16 * matched_kernel_count(2, 7)  # channels x count
    for a, axis in enumerate(group["axes"]):
        assert sum(axis["counts"]) == group["elements"]
        assert len(axis["counts"]) == 13 and axis["limits"] == [-6, 6]
        assert axis["mean"] == pytest.approx(float(positions[a].mean()), abs=1e-6)  # the trained weights
    assert np.array(group["hist2d"]).sum() == group["elements"]
    assert [k["channel"] for k in r["kernels"]] == [0, 3]
    for k in r["kernels"]:
        assert 0 <= k["support"][0] <= k["support"][1] < 13
    for key in ("speed", "histograms", "hist2d", "kernels"):
        _assert_png(r["png"][key])


# --------------------------------------------------------------------------------------------- ERF
def test_erf_of_linear_net_is_its_composed_kernel():
    a, b = torch.full((1, 1, 3, 3), 1 / 9), torch.rand(1, 1, 5, 5)
    b /= b.sum()
    net = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 5, padding=2, bias=False))
    net[0].weight.data, net[1].weight.data = a, b
    images = torch.randn(3, 1, 31, 31)
    erf = erf_mod.erf_map(net, images)
    composed = F.conv2d(F.pad(b, (2, 2, 2, 2)), a.flip(-1, -2))[0, 0]  # full convolution a * b: 7x7
    expected = torch.zeros(31, 31)
    expected[12:19, 12:19] = composed
    assert torch.allclose(erf, expected, atol=1e-6)
    assert float(erf.sum()) == pytest.approx(1.0, abs=1e-5)  # both kernels sum to 1
    s = erf_mod.summarise(erf)
    assert abs(s["peak_offset_from_centre"][0]) <= 1 and abs(s["peak_offset_from_centre"][1]) <= 1
    assert s["area_ratio"]["0.99"] <= 49 / 31**2


def test_erf_cli_on_checkpoint(run_dir, fashion_images, tmp_path, capsys):
    out = tmp_path / "erf"
    r = _run("erf", ["--checkpoint", str(run_dir), "--images", str(fashion_images), "--out", str(out)], capsys)
    assert r["images"] == 8 and r["shape"] == [28, 28]
    erf = np.load(r["npy"])
    assert erf.shape == (28, 28) and float(erf.sum()) == pytest.approx(r["sum"], rel=1e-5) and r["sum"] > 0
    assert max(abs(v) for v in r["peak_offset_from_centre"]) <= 2  # the central unit sees the centre most
    ratios = [r["area_ratio"][t] for t in ("0.2", "0.3", "0.5", "0.99")]
    assert ratios == sorted(ratios) and 0 < ratios[0] < ratios[-1] <= 1
    # effective, not theoretical (3 + 2*12*2 = 51 px > 28): half of the mass sits in a small central square,
    # yet it reaches past what the 3x3 stem alone sees
    assert r["area_ratio"]["0.5"] < 0.25 and (erf > 0).sum() > 9
    _assert_png(r["png"])


# ---------------------------------------------------------------------------------------- export
def test_export_cli_on_checkpoint(run_dir, tmp_path, capsys):
    out = tmp_path / "export"
    r = _run(
        "export",
        ["--checkpoint", str(run_dir / "best.pth"), "--onnx-exporter", "torchscript", "--out", str(out)],
        capsys,
    )
    assert r["all_within_atol"] and r["check_batch"] == 3 and r["trace_batch"] == 2
    assert set(r["formats"]) == {"conv", "torchscript", "onnx"}
    for fmt in r["formats"].values():
        assert fmt["max_abs_diff"] < 1e-4 and fmt["same_argmax"]
    assert r["formats"]["onnx"]["runtime"].startswith("onnxruntime")
    # the plain-conv export is an ordinary dense network: it loads into the baseline with 13x13 kernels
    import timm

    plain = timm.create_model("dcls_quickstart_baseline", dim=16, depth=2, dense_kernel_size=13).eval()
    plain.load_state_dict(load_checkpoint(out / "model_conv.pth"))
    from dcls_vision.analysis.loading import example_input, from_checkpoint

    loaded = from_checkpoint(run_dir / "best.pth")
    x = example_input(loaded, 4)
    with torch.no_grad():
        assert torch.allclose(plain(x), loaded.model(x), atol=1e-5)


def test_onnx_dynamo_exporter(run_dir, tmp_path):
    from dcls_vision.analysis.loading import example_input, from_checkpoint

    loaded = from_checkpoint(run_dir / "last.pth")
    r = export_mod.export_and_verify(
        loaded.model,
        example_input(loaded, 2),
        example_input(loaded, 5, seed=1),
        tmp_path,
        ("onnx",),
        onnx_exporter="dynamo",
    )
    assert r["all_within_atol"] and r["formats"]["onnx"]["max_abs_diff"] < 1e-4
    assert "conv" not in r["formats"] and not (tmp_path / "model_conv.pth").exists()


# ------------------------------------------------------------------------------------ throughput
def test_peak_memory_helpers():
    def fn():
        a = torch.empty(1 << 20, dtype=torch.uint8)  # 1 MiB
        b = torch.empty(1 << 21, dtype=torch.uint8)  # 2 MiB while a is alive
        del a, b
        torch.empty(1 << 20, dtype=torch.uint8)

    assert 3 << 20 <= peak_allocated_bytes(fn) < (3 << 20) + 65536
    w = torch.zeros(1000)
    assert resident_bytes(nn.Linear(10, 10), w, [w, w[:10]]) == 4 * 110 + 4000  # shared storage counted once


def test_throughput_cli_side_by_side(tmp_path, capsys):
    out = tmp_path / "tp"
    r = _run(
        "throughput",
        [
            "--models",
            "dcls_quickstart",
            "dcls_quickstart_baseline",
            "--batch-sizes",
            "2",
            "8",
            "--warmup",
            "1",
            "--repeats",
            "2",
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert [m["model"] for m in r["models"]] == ["dcls_quickstart", "dcls_quickstart_baseline"]
    for m in r["models"]:
        for mode in ("infer", "train"):
            rows = m["results"][mode]
            assert [row["batch"] for row in rows] == [2, 8]
            assert all(row["images_per_s"] > 0 and row["median_ms"] >= row["min_ms"] > 0 for row in rows)
            assert rows[1]["peak_mem_mb"] > rows[0]["peak_mem_mb"]  # activations grow with the batch
        for i in range(2):  # training keeps activations, gradients and optimizer state
            assert m["results"]["train"][i]["peak_mem_mb"] > m["results"]["infer"][i]["peak_mem_mb"]
    assert len(r["comparison"]) == 4
    assert all("dcls_quickstart_baseline / dcls_quickstart" in row for row in r["comparison"])
    _assert_png(r["png"])


def test_receptive_field_effective_from_checkpoint(run_dir, tmp_path, capsys):
    """The effective RF of the learned positions stays within the theoretical one, and is smaller."""
    out = tmp_path / "rf"
    r = _run("receptive_field", ["--checkpoint", str(run_dir), "--effective", "--out", str(out)], capsys)
    (table,) = r["models"]
    theory = [b["rf_size"] for b in table["blocks"]]
    assert theory == [3, 27, 51]  # stride-2 3x3 stem, then two 13x13 layers at jump 2
    effective = [b["rf_size"] for b in table["effective_blocks"]]
    assert effective[0] == 3 and all(e <= t for e, t in zip(effective, theory)) and effective[-1] < theory[-1]
    _assert_png(r["png"])
