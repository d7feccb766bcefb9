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
    # the fallback from paired to Welch is said, on stdout (report.md) and stderr, naming the seeds
    note = f"{g7['label']} vs {groups[BASE]['label']}: Welch's t-test instead of paired (seeds [0, 1] vs [0, 1, 2]"
    assert report["notes"] == [next(n for n in report["notes"] if n.startswith(note))]
    assert f"- note: {note}" in proc.stdout and f"report.py: note: {note}" in proc.stderr
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
    assert [r["label"] for r in data["references"]] == [f"experiment_name=base, model.name=net_base ({KEY} unset)"]
    assert data["references"][0]["mean"] == pytest.approx(242 / 3)


def test_multilabel_runs_report_map(tmp_path):
    """Multi-label runs (records carry val_mAP / best_mAP / ema_mAP): the figures are named *_mAP."""
    for seed, final in enumerate((30.0, 34.0)):
        run = _write_run(tmp_path / f"{seed}_audio", "audio", seed, [final], None)
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()[:1]]
        lines[0].update(val_mAP=lines[0].pop("val_top1"), best_mAP=final, ema_mAP=final + 1)
        (run / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n")
    report = build([str(tmp_path)])
    assert report["metric"] == "final_mAP"
    stats = report["groups"][0]["stats"]
    assert stats["final_mAP"] == {"mean": 32.0, "std": pytest.approx(math.sqrt(8)), "n": 2}
    assert stats["final_ema_mAP"]["mean"] == 33.0 and "final_top1" not in stats


def test_bad_input_is_one_line_exit_2(synthetic, tmp_path):
    for args, needle in (
        (["--baseline", f"{KEY}=9"], "matches no group"),
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


def test_relative_mce_against_a_hand_computed_value():
    """Relative CE_c = 100 * sum_s (E_sc - E_clean) / sum_s (E^AlexNet_sc - 43.48); relative mCE = mean over c."""
    from dcls_vision.robustness import relative_mce

    per = {
        "gaussian_noise": {"mean_error": 50.0, "severities": [1, 2]},  # AlexNet 69.528, 82.542
        "contrast": {"mean_error": 30.0, "severities": [5]},  # AlexNet 99.27
        "sparkles": {"mean_error": 90.0, "severities": [1]},  # C-bar: no AlexNet figure, not counted
    }
    gauss = 100 * (2 * (50.0 - 20.0)) / ((69.528 - 43.48) + (82.542 - 43.48))
    contrast = 100 * (30.0 - 20.0) / (99.27 - 43.48)
    assert relative_mce(per, 20.0) == pytest.approx((gauss + contrast) / 2, rel=1e-12)
    assert relative_mce({"sparkles": per["sparkles"]}, 20.0) is None


# ------------------------------------------------------------------------------------ real runs, real eval.py
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """``train.py -m`` over 2 seeds of a tiny quickstart (Hydra's local launcher): a real multirun dir."""
    out = tmp_path_factory.mktemp("sweep") / "multirun"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "experiment=quickstart", "trainer.seed=0,1"]
    cmd += ["data.train_subset=256", "data.val_subset=128", "trainer.epochs=1", "logger.wandb=false"]
    cmd += ["logger.progress=false", f"hydra.sweep.dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_real_sweep_of_two_seeds(sweep, tmp_path):
    proc = _report(str(sweep), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["group_keys"] == [] and len(report["groups"]) == 1
    group = report["groups"][0]
    runs = sorted(sweep.glob("*_quickstart"))
    assert group["n"] == 2 and group["seeds"] == [0, 1] and group["runs"] == [str(p) for p in runs]
    assert group["incomplete"] == 0
    last = [json.loads((p / "metrics.jsonl").read_text().splitlines()[-1]) for p in runs]
    top1 = [r["val_top1"] for r in last]
    stats = group["stats"]
    assert stats["final_top1"]["mean"] == pytest.approx(sum(top1) / 2)
    assert stats["final_top1"]["std"] == pytest.approx(abs(top1[0] - top1[1]) / math.sqrt(2))
    assert stats["best_top1"]["mean"] == pytest.approx(sum(r["best_top1"] for r in last) / 2)
    assert stats["params"] == {"mean": last[0]["params"], "std": 0.0, "n": 2} and last[0]["params"] > 0
    assert stats["train_img_per_s"]["mean"] == pytest.approx(sum(r["train_img_per_s"] for r in last) / 2)
    assert stats["final_ema_top1"] is None  # quickstart trains without EMA
    assert f"| all runs | 2 | {sum(top1) / 2:.2f} ± " in proc.stdout


C_ARGS = ["benchmarks=[val,c]", "c.corruptions=[gaussian_noise,contrast]", "c.severities=[1,3]", "progress=false"]


def _eval_py(run_dir: Path, clean: Path, corrupted: Path, out: Path) -> dict:
    """eval.py as a user runs it (Hydra entry point, subprocess)."""
    cmd = [sys.executable, str(ROOT / "eval.py"), f"checkpoint={run_dir / 'last.pth'}", *C_ARGS]
    cmd += [f"val.root={clean}", f"c.root={corrupted}", f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads((out / "results.json").read_text())


def _run_eval(run_dir: Path, clean: Path, corrupted: Path, out: Path) -> dict:
    """eval.py's run_eval in this process (one interpreter start less), the same configs/eval.yaml composed."""
    from hydra import compose, initialize_config_dir

    from dcls_vision.robustness import run_eval

    overrides = [f"checkpoint={run_dir / 'last.pth'}", *C_ARGS, f"val.root={clean}", f"c.root={corrupted}"]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        run_eval(compose("eval", overrides=[*overrides, f"output_dir={out}"]))
    return json.loads((out / "results.json").read_text())


def test_two_eval_result_dirs_side_by_side(sweep, tmp_path):
    """Two checkpoints (the sweep's seeds) evaluated on a clean val folder and a 2-corruption x 2-severity C folder
    made by tools/make_corrupted.py; the report's rows equal each results.json, relative mCE by hand."""
    pytest.importorskip("imagecorruptions", reason="pip install --no-deps imagecorruptions-imaug==1.1.5")
    import importlib.util

    from dcls_vision.robustness.fashion_folder import export_val_folder
    from dcls_vision.utils.io import load_checkpoint

    runs = sorted(sweep.glob("*_quickstart"))
    clean, corrupted = tmp_path / "clean", tmp_path / "c"
    assert export_val_folder(load_checkpoint(runs[0] / "last.pth")["config"]["data"], clean) == 128
    spec = importlib.util.spec_from_file_location("make_corrupted", ROOT / "tools" / "make_corrupted.py")
    make_corrupted = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_corrupted)
    args = [str(clean), str(corrupted), "--no-progress", "--corruptions", "gaussian_noise", "contrast"]
    args += ["--severities", "1", "3", "--format", "png", "--no-resize-crop", "--upscale-small", "32", "--workers", "1"]
    assert make_corrupted.main(args) == 0
    results = [_eval_py(runs[0], clean, corrupted, tmp_path / "eval0")]
    results.append(_run_eval(runs[1], clean, corrupted, tmp_path / "eval1"))
    proc = _report(str(tmp_path / "eval0"), str(tmp_path / "eval1"), "--out", str(tmp_path / "report"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["kind"] == "eval" and len(report["rows"]) == 2
    for row, result in zip(report["rows"], results):
        c = result["benchmarks"]["c"]["summary"]
        assert row["clean"] == result["benchmarks"]["val"]["top1"] and row["c_error"] == c["mean_error"]
        assert row["mCE"] == c["mce"] and row["cbar_error"] is None
        clean_error = 100 - row["clean"]
        rel = [
            100
            * sum(s["error"] - clean_error for s in result["benchmarks"]["c"]["splits"] if s["corruption"] == n)
            / sum(100 * ALEX[n][v - 1] - 43.48 for v in (1, 3))
            for n in ALEX
        ]
        assert row["relative_mCE"] == pytest.approx(sum(rel) / 2) and result["relative_mce"] == row["relative_mCE"]
        assert f"| {row['clean']:.2f} | {row['c_error']:.2f} | – | – | – | – | {row['mCE']:.2f} |" in proc.stdout
    assert len({r["label"] for r in report["rows"]}) == 2  # same model name twice: told apart by their dirs
    assert "relative mCE" in (tmp_path / "eval0" / "table.md").read_text()


ALEX = {"gaussian_noise": (0.69528, 0.82542, 0.93554), "contrast": (0.64548, 0.7615, 0.88874)}  # Hendrycks' table


def test_baseline_per_regime_and_a_named_baseline_drawn_flat(tmp_path):
    """Kernel-size-study shape: `dense` among integer sizes, two regimes (epochs); each group vs its regime's dense."""
    sweep, i = tmp_path / "sweep", 0
    finals = {
        (2, "dense"): [70.0, 71.0, 75.0],
        (2, 3): [72.0, 74.0, 76.0],
        (3, "dense"): [60.0, 62.0, 64.0],
        (3, 3): [60.0, 61.0, 62.0],
    }
    for (epochs, kernel), values in finals.items():
        for seed, final in enumerate(values):
            _write_run(sweep / f"{i}_s", "s", seed, [final - 1] * (epochs - 1) + [final], kernel, epochs=epochs)
            i += 1
    out = tmp_path / "out"
    proc = _report(str(sweep), "--baseline", f"{KEY}=dense", "--plot", KEY, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    groups = {g["label"]: g for g in report["groups"]}
    a, b = groups[f"{KEY}=3, trainer.epochs=2"], groups[f"{KEY}=3, trainer.epochs=3"]
    assert a["baseline"] == f"{KEY}=dense, trainer.epochs=2" and b["baseline"] == f"{KEY}=dense, trainer.epochs=3"
    assert a["vs_baseline"]["diff"] == pytest.approx(2.0) and b["vs_baseline"]["diff"] == pytest.approx(-1.0)
    # paired d = (2, 3, 1) for regime 2: mean 2, sd 1 -> t = 2 * sqrt(3)
    assert a["vs_baseline"]["test"] == "paired" and a["vs_baseline"]["t"] == pytest.approx(2 * math.sqrt(3))
    assert groups[f"{KEY}=dense, trainer.epochs=2"]["is_baseline"] and not a["is_baseline"]
    series = plot_series(report, KEY)
    assert [s["x"] for s in series["series"]] == [[3], [3]]
    assert sorted(r["label"] for r in series["references"]) == [f"trainer.epochs={e} ({KEY}=dense)" for e in (2, 3)]
    assert sorted(r["series"] for r in series["references"]) == ["trainer.epochs=2", "trainer.epochs=3"]  # its colour
    assert (out / f"report_{KEY}.png").stat().st_size > 1000


def test_a_schema_key_newer_than_some_runs_does_not_split_them(tmp_path):
    """A sweep interrupted by an upgrade: later runs record a new schema key (its default), the first does not."""
    sweep = tmp_path / "sweep"
    for seed in range(3):
        run = _write_run(sweep / f"{seed}_q", "q", seed, [80.0 + seed], 3)
        if seed:
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            cfg["trainer"]["val_interval"] = 1
            (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _report(str(sweep), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["group_keys"] == [] and [g["n"] for g in report["groups"]] == [3]


def test_keys_that_cannot_change_a_result_do_not_split_a_sweep_run_on_two_machines(tmp_path):
    """Seeds 0-2 of a net and its baseline, seed 2 of each run on a second machine (other data root, loader workers,
    torch.compile, device, output dir): one group per net and a paired test over 3 seeds, no note."""
    sweep = tmp_path / "sweep"
    for i, (name, kernel, finals) in enumerate((("dcls", 3, [80.0, 82.0, 84.0]), ("base", None, [79.0, 80.0, 83.0]))):
        for seed, final in enumerate(finals):
            run = _write_run(sweep / f"{i}{seed}_{name}", name, seed, [final], kernel)
            cfg = yaml.safe_load((run / "config.yaml").read_text())
            other = seed == 2
            cfg["data"] = {"root": "/scratch/fmnist" if other else "data/fmnist", "num_workers": 8 if other else 0}
            cfg["trainer"].update(compile=other, device="cuda" if other else "cpu", cudnn_benchmark=other)
            (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    proc = _report(str(sweep), "--baseline", "experiment_name=base", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["group_keys"] == ["experiment_name", KEY, "model.name"]
    assert [g["n"] for g in report["groups"]] == [3, 3] and report["notes"] == []
    assert report["groups"][0]["vs_baseline"]["test"] == "paired" and "note:" not in proc.stdout + proc.stderr


def test_a_comparison_without_a_test_says_so(tmp_path):
    """One run a side: the difference is shown, no t-test is possible, and a note line says why."""
    sweep = tmp_path / "sweep"
    _write_run(sweep / "0_dcls", "dcls", 0, [81.0], 3)
    _write_run(sweep / "1_base", "base", 0, [80.0], None)
    report = build([str(sweep)], baseline="experiment_name=base")
    vs = report["groups"][0]["vs_baseline"]
    assert vs["diff"] == pytest.approx(1.0) and vs["p"] is None
    assert report["notes"] == [
        f"{report['groups'][0]['label']} vs {report['groups'][1]['label']}: no t-test "
        "(seeds [0] vs [0]; needs 2 runs a side)"
    ]


def _declared_closure() -> set[str]:
    """pyproject.toml's dependencies and, recursively, what they require (normalised distribution names)."""
    import importlib.metadata as md
    import re

    import tomllib

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    todo = [
        re.split(r"[\s<>=!~;\[]", d, maxsplit=1)[0]
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    seen: set[str] = set()
    while todo:
        name = norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0] for r in reqs if "extra ==" not in r]
    return seen


def _our_imports(files: list[str]) -> set[str]:
    """Top-level names of the absolute imports written in these source files (function-local ones included)."""
    import ast

    names: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(Path(file).read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names


REPORT_RUN = """import runpy, sys
tool, sys.argv = sys.argv[1], ["report.py", *sys.argv[2:]]
try:
    runpy.run_path(tool, run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
ours = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] == "dcls_vision" and m.__file__]
print(" ".join([tool, *ours]))
print(" ".join(sorted({n.split(".")[0] for n in sys.modules})))
"""


def test_report_needs_only_pyproject_dependencies(synthetic, tmp_path):
    """A `pip install .` user has every package tools/report.py imports (t-tests, --plot): each third-party module
    that our code imports on a real report run belongs to a distribution pyproject.toml declares, directly or
    through another (modules others import only when present, e.g. omegaconf's attr, are not ours to declare)."""
    import importlib.metadata as md
    import re

    args = [str(synthetic), "--baseline", "experiment_name=base", "--plot", KEY, "--out", str(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-c", REPORT_RUN, str(ROOT / "tools" / "report.py"), *args],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and (tmp_path / f"report_{KEY}.png").exists(), proc.stderr
    files, loaded = (line.split() for line in proc.stdout.strip().splitlines()[-2:])
    used = (_our_imports(files) & set(loaded)) - set(sys.stdlib_module_names) - {"dcls_vision"}
    assert {"scipy", "matplotlib"} <= used  # the run did what the user runs
    dists = md.packages_distributions()
    needed = {re.sub(r"[-_.]+", "-", d).lower() for m in used for d in dists.get(m, [m])}
    assert needed - _declared_closure() == set()
