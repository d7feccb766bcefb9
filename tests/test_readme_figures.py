"""tools/readme_figures.py: the docs' figures are marked, produced by the docs' own commands, and rewritten in place.

The slow test runs the cheapest entry (the robustness walk-through) for real on a temp copy of README.md + docs/*.md;
the fast ones check that every entry's markers and commands are on the real pages and that bad input is one line,
exit 2.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from dcls_vision.analysis.doc_markers import (
    FigureError,
    doc_commands,
    doc_pages,
    read_doc_markers,
    read_markers,
    write_markers,
)
from dcls_vision.analysis.readme_figures import Command, Entry
from dcls_vision.data.fashion_mnist import DEFAULT_SOURCE

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "readme_figures.py"


def _tool():
    spec = importlib.util.spec_from_file_location("readme_figures_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(*args: str, timeout: int = 30) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(TOOL), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _figure_lines(stdout: str, names: set[str]) -> dict[str, tuple[str, str, str]]:
    """marker -> (docs, fresh, diff) from the tool's table lines."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split()
        if parts and parts[0] in names:
            rows[parts[0]] = (parts[1], parts[2], parts[3])
    return rows


def _docs_markers() -> dict[str, str]:
    """Marker -> marked text over README.md and docs/*.md, wherever each figure now lives."""
    return {name: text for name, (_, text) in read_doc_markers(doc_pages(ROOT)).items()}


def _copy_docs(dest: Path) -> Path:
    """README.md and docs/*.md copied under ``dest`` (a --docs folder the tool may rewrite)."""
    (dest / "docs").mkdir(parents=True)
    for page in doc_pages(ROOT):
        (dest / page.relative_to(ROOT)).write_text(page.read_text(encoding="utf-8"), encoding="utf-8")
    return dest


def test_every_entry_figure_and_command_is_in_the_docs():
    tool = _tool()
    pages = doc_pages(ROOT)
    markers, commands = _docs_markers(), doc_commands(pages)
    for entry in tool.ENTRIES.values():
        for value in entry.values:
            assert value.marker in markers, f"{entry.name}: no page has a <!--fig:{value.marker}--> marker"
        for cmd in entry.commands:
            assert tool.one_line(cmd.text) in commands, f"{entry.name}: no page has the command {cmd.text!r}"
    # and the tool's own start-up check agrees (no marker without an entry figure either)
    assert set(tool.check_docs(pages, list(tool.ENTRIES.values()))) == set(markers)
    assert {m.split(".")[0] for m in markers} <= set(tool.ENTRIES)


def test_a_marker_on_two_pages_is_an_error_naming_both(tmp_path):
    docs = _copy_docs(tmp_path / "docs_root")
    page = docs / "docs" / "extra.md"
    page.write_text("again <!--fig:robustness.mce-->1.00<!--/fig-->\n")
    with pytest.raises(FigureError, match=r"fig:robustness.mce appears in .*docs/extra\.md and .*docs/robustness\.md"):
        read_doc_markers(doc_pages(docs))


def test_markers_are_read_and_rewritten_in_place_only_outside_code():
    text = "a <!--fig:x.a-->1.00<!--/fig--> b | <!--fig:x.b-->2<!--/fig--> |\n```bash\necho hi\n```\n"
    assert read_markers(text) == {"x.a": "1.00", "x.b": "2"}
    new = write_markers(text, {"x.b": "3.50"})
    assert new == text.replace("-->2<", "-->3.50<")
    with pytest.raises(FigureError, match="fig:x.c is inside"):
        read_markers(text + "```\n<!--fig:x.c-->1<!--/fig-->\n```\n")
    with pytest.raises(FigureError, match="appears twice"):
        read_markers(text + "<!--fig:x.a-->1<!--/fig-->\n")


def test_unknown_entry_is_one_line_exit_2():
    proc = _run("--only", "robustness,nope")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "readme_figures.py: error: --only 'robustness,nope': unknown entry nope; allowed: "
        "robustness, quickstart, kernel_size_study, audio_quickstart, snn_quickstart, downstream_flops, "
        "downstream_throughput"
    ]


def test_missing_marker_or_marker_without_entry_is_one_line_exit_2(tmp_path):
    gone = _copy_docs(tmp_path / "gone")
    for page in doc_pages(gone):
        text = page.read_text(encoding="utf-8")
        page.write_text(re.sub(r"<!--fig:robustness\.mce-->(.*?)<!--/fig-->", r"\1", text), encoding="utf-8")
    proc = _run("--only", "robustness", "--docs", str(gone), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "figure robustness.mce has no <!--fig:robustness.mce--> marker" in proc.stderr
    stray = _copy_docs(tmp_path / "stray") / "docs" / "stray.md"
    stray.write_text("See <!--fig:robustness.bogus-->1.0<!--/fig-->.\n")
    proc = _run("--only", "robustness", "--docs", str(stray.parents[1]), "--out", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"readme_figures.py: error: {stray}: marker fig:robustness.bogus has no figure in ENTRIES; allowed: "
        "robustness.*, quickstart.*, kernel_size_study.*, audio_quickstart.*, snn_quickstart.*, downstream_flops.*, "
        "downstream_throughput.*"
    ]
    assert not (tmp_path / "out").exists()  # nothing ran


def test_failed_command_is_named_with_its_exit_code_and_later_ones_do_not_run(tmp_path, capsys):
    tool = _tool()
    # the commands run from the repo root, so they aim their files at tmp_path
    commands = ("echo one > first.txt", "exit 3", "touch never.txt")
    entry = Entry("demo", tuple(Command(f"cd {tmp_path} && {c}") for c in commands), (), cost_s=1)
    assert tool.run_commands(entry, tmp_path, reuse=False) is False
    err = capsys.readouterr().err
    assert f"demo: command 2 failed with exit code 3 (log: {tmp_path / 'commands.log'})" in err
    assert (tmp_path / "first.txt").read_text() == "one\n"  # what ran is kept
    assert not (tmp_path / "never.txt").exists()


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(DEFAULT_SOURCE, "t10k-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)
def test_robustness_entry_reruns_the_walk_through_and_rewrites_the_readme(tmp_path):
    pytest.importorskip("imagecorruptions", reason="pip install --no-deps imagecorruptions-imaug==1.1.5")
    tool = _tool()
    entry = tool.ENTRIES["robustness"]
    names = {v.marker for v in entry.values}
    docs = _copy_docs(tmp_path / "docs_root")
    before = _docs_markers()
    out = tmp_path / "out"
    proc = _run("--only", "robustness", "--out", str(out), "--docs", str(docs), "--write", timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    rows = _figure_lines(proc.stdout, names)
    assert set(rows) == names
    # the docs column is the marked text, the fresh column the produced files' values
    assert {m: r[0] for m, r in rows.items()} == {m: before[m] for m in names}
    run_dir = out / "robustness" / "robustness_demo"
    result = json.loads((run_dir / "eval" / "results.json").read_text())
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    c = result["benchmarks"]["c"]
    files = {
        "robustness.val": last["val_top1"],
        "robustness.clean": result["benchmarks"]["val"]["top1"],
        "robustness.c": c["summary"]["mean_error"],
        "robustness.sk": result["benchmarks"]["sketch"]["top1"],
        "robustness.mce": c["summary"]["mce"],
        "robustness.val.images": result["benchmarks"]["val"]["samples"],
        "robustness.c.images": c["splits"][0]["samples"],
        "robustness.sk.images": result["benchmarks"]["sketch"]["samples"],
    }
    for name in ("gaussian_noise", "defocus_blur"):
        files[f"robustness.{name}.mean"] = c["summary"]["per_corruption"][name]["mean_error"]
        files[f"robustness.{name}.ce"] = c["summary"]["per_corruption"][name]["ce"]
        for s in c["splits"]:
            if s["corruption"] == name:
                files[f"robustness.{name}.{s['severity']}"] = s["error"]
    assert set(files) == names
    expected = {m: f"{v:.0f}" if m.endswith(".images") else f"{v:.2f}" for m, v in files.items()}
    assert {m: r[1] for m, r in rows.items()} == expected
    assert files["robustness.val"] == files["robustness.clean"]  # eval.py's clean figure is the trainer's
    # --write put the fresh values into the temp pages (the real ones are untouched); a second comparison, reading
    # the same outputs without rerunning them, shows no difference
    after = {name: text for name, (_, text) in read_doc_markers(doc_pages(docs)).items()}
    assert after == {**before, **{m: r[1] for m, r in rows.items()}}
    assert _docs_markers() == before
    again = _run("--only", "robustness", "--reuse", str(out / "robustness"), "--docs", str(docs), "--check")
    assert again.returncode == 0, again.stdout + again.stderr
    assert {r[2] for r in _figure_lines(again.stdout, names).values()} == {"same"}
    assert "0 of 22 figure(s) differ from the docs" in again.stdout


def _report(groups: list[dict], metric: str = "final_top1") -> dict:
    """A report.json as tools/report.py writes it (CONTRACT_REPORT: kind train, groups with stats and vs_baseline)."""
    return {"kind": "train", "metric": metric, "group_keys": ["experiment_name"], "baseline": None, "groups": groups}


def _group(label: str, mean: float, std: float | None, n: int, runs: list[str], vs: dict | None = None) -> dict:
    stat = {"mean": mean, "std": std, "n": n}
    return {
        "label": label,
        "keys": dict(kv.split("=") for kv in label.split(", ")),
        "n": n,
        "seeds": list(range(n)),
        "runs": runs,
        "incomplete": 0,
        "stats": {"final_top1": stat, "best_top1": stat, "final_ema_top1": None, "params": None},
        "vs_baseline": vs,
    }


def test_quickstart_figures_are_read_from_report_json_and_the_seed_0_run(tmp_path, capsys):
    tool = _tool()
    runs: dict[str, list[str]] = {"run": [], "b": []}
    for prefix, offset in (("run", 0.0), ("b", -2.0)):
        for seed in (1, 0, 2):  # the group's runs and seeds align, in any order
            run = tmp_path / f"{prefix}{seed}"
            run.mkdir()
            records = [
                {"epoch": e, "val_top1": 80.0 + offset + 3 * e + seed / 10, "epoch_time": 150.0 + 10 * e + seed}
                for e in range(3)
            ]
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            runs[prefix].append(str(run))
    vs = {"metric": "final_top1", "diff": 1.3183, "test": "paired", "t": 2.1, "df": 1.0, "p": 0.04567}
    # report.py groups by every key that differs: a sweep over experiments also differs in model.name
    groups = [
        _group("experiment_name=quickstart, model.name=dcls_quickstart", 86.05, 0.0707, 2, runs["run"], vs),
        _group(
            "experiment_name=quickstart_baseline, model.name=dcls_quickstart_baseline", 84.7317, 0.1414, 2, runs["b"]
        ),
    ]
    groups[0]["seeds"] = groups[1]["seeds"] = [1, 0, 2]
    (tmp_path / "report.json").write_text(json.dumps(_report(groups)))
    markers = _docs_markers()
    fresh, problems = tool.extract(tool.ENTRIES["quickstart"], tmp_path, markers)
    assert problems == []
    assert fresh == {
        "quickstart.dcls.mean": "86.05",
        "quickstart.dcls.std": "0.07",
        "quickstart.dcls.n": "2",
        "quickstart.baseline.mean": "84.73",
        "quickstart.baseline.std": "0.14",
        "quickstart.baseline.n": "2",
        "quickstart.diff": "1.32",
        "quickstart.p": "0.046",
        "quickstart.epoch1": "80.0",  # seed 0's run, not the first listed
        "quickstart.epoch2": "83.0",
        "quickstart.epoch3": "86.0",
        # each seed's final epoch; the s/epoch figure is seed 0's mean epoch_time (150, 160, 170)
        **{f"quickstart.seed{s}.dcls": f"{86.0 + s / 10:.2f}" for s in range(3)},
        **{f"quickstart.seed{s}.baseline": f"{84.0 + s / 10:.2f}" for s in range(3)},
        "quickstart.epoch_s": "160",
    }
    printed = capsys.readouterr().out
    assert re.search(r"quickstart\.epoch3 +88\.1 +86\.0 +-2\.10 ", printed), printed
    # a label that no longer picks exactly one group is a problem, never a silently wrong figure
    groups.append(_group("experiment_name=quickstart, model.name=other", 1.0, 0.1, 2, runs, vs))
    (tmp_path / "report.json").write_text(json.dumps(_report(groups)))
    fresh, problems = tool.extract(tool.ENTRIES["quickstart"], tmp_path, markers)
    assert "quickstart.dcls.mean" not in fresh and "quickstart.baseline.mean" in fresh
    assert (
        "quickstart.dcls.mean: report.json: 2 groups have 'experiment_name=quickstart' (need exactly 1)" in problems[0]
    )


def test_kernel_size_study_yields_one_figure_per_report_group(tmp_path):
    tool = _tool()
    labels = [
        "model.kwargs.dilated_kernel_size=5, trainer.epochs=10",
        "model.kwargs.dilated_kernel_size=17, trainer.epochs=10",
    ]
    groups = [_group(label, 70.0 + i, 0.5, 3, []) for i, label in enumerate(labels)]
    groups[0]["stats"]["final_top1"]["std"] = None  # null as for n == 1 (CONTRACT): no figure
    groups[1]["vs_baseline"] = {"metric": "final_top1", "diff": 1.0, "test": "paired", "t": 2.0, "df": 2.0, "p": 0.18}
    (tmp_path / "report.json").write_text(json.dumps(_report(groups)))
    markers = {"kernel_size_study.dilated_kernel_size_17_epochs_10.mean": "1", "kernel_size_study.gone.mean": "2"}
    entry = dataclasses.replace(tool.ENTRIES["kernel_size_study"], values=())  # the position/time figures: below
    fresh, problems = tool.extract(entry, tmp_path, markers)
    assert fresh == {
        "kernel_size_study.dilated_kernel_size_5_epochs_10.mean": "70.00",
        "kernel_size_study.dilated_kernel_size_17_epochs_10.mean": "71.00",
        "kernel_size_study.dilated_kernel_size_17_epochs_10.std": "0.50",
        "kernel_size_study.dilated_kernel_size_17_epochs_10.diff": "+1.00",  # vs its baseline, when there is one
        "kernel_size_study.dilated_kernel_size_17_epochs_10.p": "0.180",
    }
    assert problems == ["kernel_size_study.gone.mean: marked in the docs but not produced by this run"]


def test_jsonl_rows_are_found_by_config_name_and_other_lines_skipped(tmp_path):
    from dcls_vision.analysis.readme_figures import FigureMissing, jsonl_row_value

    rows = [
        {"config": "configs/a/x.py", "gmacs": 10.25, "construction": {"gflops_per_pass": 0.0194}},
        {"config": "configs/b/y.py", "gmacs": 3.0},
    ]
    (tmp_path / "f.jsonl").write_text(
        "Loads checkpoint by local backend\n" + "".join(json.dumps(r) + "\n" for r in rows)
    )
    value = jsonl_row_value("m", "f.jsonl", "x.py", ("construction", "gflops_per_pass"), "{:.1f}", 1000.0)
    assert value.format(value.read(tmp_path)) == "19.4"
    assert jsonl_row_value("m", "f.jsonl", "y.py", ("gmacs",), "{:.1f}").read(tmp_path) == 3.0
    with pytest.raises(FigureMissing, match="0 rows for config z.py"):
        jsonl_row_value("m", "f.jsonl", "z.py", ("gmacs",), "{:.1f}").read(tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(
    not Path(DEFAULT_SOURCE, "t10k-images-idx3-ubyte.gz").is_file(), reason="apt-get install dataset-fashion-mnist"
)
def test_position_and_time_figures_are_read_from_real_runs(tmp_path):
    """Two real 1-epoch kernel-size-study runs (sizes 7 and 13): the entry's readers give the largest / mean |position|
    of their last.pth, the share beyond a limit, and the summed epoch_time, as computed here from the files."""
    import torch

    from dcls_vision.analysis.readme_figures import epoch_time, group_runs_value, max_over_runs_value, position_stat

    runs = []
    for size in (7, 13):
        run = tmp_path / f"k{size}"
        cmd = [sys.executable, str(ROOT / "train.py"), "experiment=kernel_size_study", "trainer.epochs=1"]
        cmd += [f"model.kwargs.dilated_kernel_size={size}", f"trainer.output_dir={run}", "logger.progress=false"]
        proc = subprocess.run(
            cmd, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs.append(run)
    label = "model.kwargs.dilated_kernel_size={}, trainer.epochs=1"
    groups = [_group(label.format(k), 30.0, None, 1, [str(r)]) for k, r in zip((7, 13), runs)]
    (tmp_path / "report.json").write_text(json.dumps(_report(groups)))
    both = (label.format(7), label.format(13))
    pos = [
        torch.cat(
            [
                v.flatten()
                for k, v in torch.load(r / "last.pth", weights_only=True)["model"].items()
                if k.endswith("positions")
            ]
        ).abs()
        for r in runs
    ]
    assert all(p.numel() > 0 for p in pos)
    assert max_over_runs_value("m", "report.json", both, position_stat("max_abs"), "", "").read(tmp_path) == (
        pytest.approx(max(float(p.max()) for p in pos))
    )
    mean = group_runs_value("m", "report.json", both, position_stat("mean_abs"), "", "").read(tmp_path)
    assert mean == pytest.approx(sum(float(p.mean()) for p in pos) / 2)
    beyond = group_runs_value("m", "report.json", both[:1], position_stat("pct_beyond_0.5"), "", "").read(tmp_path)
    assert beyond == pytest.approx(100 * float((pos[0] > 0.5).float().mean())) and 0 < beyond < 100
    seconds = json.loads((runs[1] / "metrics.jsonl").read_text().splitlines()[-1])["epoch_time"]
    assert group_runs_value("m", "report.json", both[1:], epoch_time("sum"), "", "").read(tmp_path) == seconds
