"""tools/report.py: synthetic run dirs (grouping, mean/std, the paired and Welch statistics against hand-computed
values, CSV/JSON/PNG), a real 2-run quickstart sweep, and two real eval.py result dirs (relative mCE)."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dcls_vision.analysis.report import build, plot_series

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
KEY = "model.kwargs.dilated_kernel_size"
DCLS3 = f"experiment_name=dcls, {KEY}=3"
BASE = f"experiment_name=base, {KEY}=null"


def _report(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "tools" / "report.py"), *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def _write_run(path: Path, name: str, seed: int, top1: list[float], kernel: int | None, **extra) -> Path:
    """A trainer-like run dir: config.yaml (per-run bookkeeping differing too) and one metrics record per epoch."""
    path.mkdir(parents=True)
    kwargs = {"dim": 16} if kernel is None else {"dim": 16, "dilated_kernel_size": kernel}
    epochs = extra.pop("epochs", len(top1))
    config = {
        "model": {"name": f"net_{name}", "kwargs": kwargs},
        "trainer": {"epochs": epochs, "seed": seed, "output_dir": str(path), "resume": None},
        "logger": {"name": f"{name}-{seed}", "wandb": False},
        "experiment_name": name,
    }
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    lines, best = [], 0.0
    for epoch, acc in enumerate(top1):
        best = max(best, acc)
        rec = {"epoch": epoch, "val_top1": acc, "best_top1": best, "ema_top1": None, "train_img_per_s": 100.0 + seed}
        rec.update(extra)
        lines.append(json.dumps(rec))
    (path / "metrics.jsonl").write_text("\n".join(lines) + '\n{"epoch": 9, "val_')  # + a torn last line
    return path


@pytest.fixture
def synthetic(tmp_path):
    """A sweep dir: dcls k=3, k=5 (EMA) and base over seeds 0-2, dcls k=7 over seeds 0-1 (one run stopped early)."""
    sweep = tmp_path / "sweep"
    (sweep / ".submitit" / "x").mkdir(parents=True)  # hydra-submitit bookkeeping, not a run
    i = 0
    for name, kernel, finals, extra in (
        ("dcls", 5, [85.0, 86.0, 90.0], {"params": 1200, "ema_top1": 91.0}),  # before k=3: the plot sorts x
        ("dcls", 3, [80.0, 82.0, 84.0], {"params": 1000}),
        ("base", None, [79.0, 80.0, 83.0], {}),  # an older trainer: no params in its records
    ):
        for seed, final in enumerate(finals):
            _write_run(sweep / f"{i}_{name}", name, seed, [final - 5, final], kernel, **extra)
            i += 1
    _write_run(sweep / f"{i}_dcls", "dcls", 0, [80.0, 88.0], 7, params=1400)
    _write_run(sweep / f"{i + 1}_dcls", "dcls", 1, [89.0], 7, params=1400, epochs=2)  # stopped after epoch 1 of 2
    (sweep / f"{i + 2}_dcls").mkdir()
    (sweep / f"{i + 2}_dcls" / "config.yaml").write_text("trainer: {seed: 2}\n")  # no epoch finished yet
    return sweep


def _t_sf2(t: float, df: float, steps: int = 4000) -> float:
    """Two-sided p of Student's t: I_x(df/2, 1/2) with x = df/(df+t^2), by Simpson's rule (no scipy)."""
    a, x = df / 2, df / (df + t * t)
    h = x / steps
    f = [u ** (a - 1) * (1 - u) ** -0.5 if u > 0 else 0.0 for u in (i * h for i in range(steps + 1))]
    integral = h / 3 * (f[0] + f[-1] + 4 * sum(f[1:-1:2]) + 2 * sum(f[2:-1:2]))
    beta = math.exp(math.lgamma(a) + math.lgamma(0.5) - math.lgamma(a + 0.5))
    return integral / beta


def test_synthetic_groups_stats_and_tests(synthetic, tmp_path):
    out = tmp_path / "out"
    proc = _report(str(synthetic), "--baseline", "experiment_name=base", "--plot", KEY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "train" and report["metric"] == "final_top1"
    assert report["group_keys"] == ["experiment_name", KEY, "model.name"]  # seed, output_dir, logger.* excluded
    groups = {g["label"].rsplit(", model.name=", 1)[0]: g for g in report["groups"]}
    assert sorted(groups) == sorted([DCLS3, BASE, f"experiment_name=dcls, {KEY}=5", f"experiment_name=dcls, {KEY}=7"])
    assert report["baseline"] == groups[BASE]["label"]
    g3 = groups[DCLS3]
    assert g3["n"] == 3 and g3["seeds"] == [0, 1, 2] and g3["incomplete"] == 0
    assert g3["stats"]["final_top1"] == {"mean": 82.0, "std": 2.0, "n": 3}  # sample std of 80, 82, 84
    assert g3["stats"]["params"]["mean"] == 1000 and groups[BASE]["stats"]["params"] is None
    assert groups[f"experiment_name=dcls, {KEY}=5"]["stats"]["final_ema_top1"]["mean"] == 91.0
    assert g3["stats"]["final_ema_top1"] is None
    # paired by seed: d = (1, 2, 1), mean 4/3, sd sqrt(1/3): t = 4, df = 2, p = 1 - t / sqrt(t^2 + 2)
    vs = g3["vs_baseline"]
    assert vs["test"] == "paired" and vs["diff"] == pytest.approx(4 / 3)
    assert vs["t"] == pytest.approx(4.0) and vs["df"] == 2
    assert vs["p"] == pytest.approx(1 - 4 / math.sqrt(18), rel=1e-9)
    # Welch (seeds 0, 1 vs 0, 1, 2): x = (88, 89), y = (79, 80, 83)
    g7 = groups[f"experiment_name=dcls, {KEY}=7"]
    assert g7["incomplete"] == 1 and g7["n"] == 2
    vx, vy = 0.5 / 2, (((79 - 242 / 3) ** 2 + (80 - 242 / 3) ** 2 + (83 - 242 / 3) ** 2) / 2) / 3
    t = (88.5 - 242 / 3) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / 1 + vy**2 / 2)
    vs = g7["vs_baseline"]
    assert vs["test"] == "welch" and vs["t"] == pytest.approx(t) and vs["df"] == pytest.approx(df)
    assert vs["p"] == pytest.approx(_t_sf2(t, df), rel=1e-4)
    assert groups[BASE]["vs_baseline"] is None
    # table: incomplete marked, missing params as a dash, the pending dir named; CSV numeric columns
    assert "(1 incomplete†)" in proc.stdout and "| – |" in proc.stdout and "without a finished epoch" in proc.stdout
    assert proc.stdout == (out / "report.md").read_text()
    rows = {r["label"]: r for r in csv.DictReader((out / "report.csv").open())}
    row = rows[g3["label"]]
    assert (float(row["final_top1_mean"]), float(row["final_top1_std"]), int(row["final_top1_n"])) == (82, 2, 3)
    assert float(row["vs_baseline_t"]) == pytest.approx(4.0) and row["vs_baseline_test"] == "paired"
    _check_png(out / f"report_{KEY}.png")


def _check_png(path: Path) -> None:
    import matplotlib.image

    img = matplotlib.image.imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 200
    assert img[..., :3].std() > 0.05  # lines, labels and a band: not a blank canvas


def test_plot_series_sorts_numeric_keys_and_draws_the_baseline_flat(synthetic, tmp_path):
    report = build([str(synthetic)], baseline="experiment_name=base")
    data = plot_series(report, KEY)
    assert data["numeric"] and [s["x"] for s in data["series"]] == [[3, 5, 7]]
    assert data["series"][0]["mean"] == [82.0, 87.0, 88.5]
    assert data["series"][0]["std"][0] == 2.0 and data["series"][0]["std"][2] == pytest.approx(math.sqrt(0.5))
    assert [r["label"] for r in data["references"]] == [g["label"] for g in report["groups"] if "base" in g["label"]]
    assert data["references"][0]["mean"] == pytest.approx(242 / 3)


def test_bad_input_is_one_line_exit_2(synthetic, tmp_path):
    for args, needle in (
        (["--baseline", f"{KEY}=9"], "matches no group"),
        (["--baseline", "experiment_name=dcls"], "matches 3 groups"),
        (["--baseline", "optim.lr=1"], "does not differ"),
        (["--metric", "top5"], "--metric 'top5'"),
        (["--plot", "optim.lr"], "--plot 'optim.lr'"),
    ):
        proc = _report(str(synthetic), "--out", str(tmp_path), *args)
        assert proc.returncode == 2, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, proc.stderr)
    proc = _report(str(tmp_path / "nothing*"))
    assert proc.returncode == 2 and "matches no path" in proc.stderr
    assert not (tmp_path / "report.json").exists()  # nothing written on a bad argument
