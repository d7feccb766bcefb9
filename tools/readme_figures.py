"""Rerun the documented examples and print every figure the docs quote beside the fresh one (and the difference).

    python tools/readme_figures.py [--only NAME[,NAME]] [--out DIR] [--write] [--docs DIR] [--reuse DIR] [--check]

Each entry of ENTRIES is one documented example: its commands exactly as a page prints them (paths such as
``outputs/robustness_demo`` are replaced by places under ``--out``/NAME, default outputs/readme_figures/NAME), the
figures it yields and the file and field each is read from. README.md and docs/*.md (the pages under ``--docs``,
default the repository) mark each figure as ``<!--fig:NAME-->62.40<!--/fig-->`` (invisible when rendered), on
whichever page discusses it. ``--write`` rewrites the marked values in place, in the page that holds each
(atomically), and copies produced plots to docs/figures/. ``--reuse DIR`` (one entry) skips the commands that train
or evaluate and reads the figures from DIR, e.g. a sweep you already ran; analysis commands (tools/report.py) still
run. ``--list`` prints the entries, their estimated cost and commands without running anything.
Exit codes: 0 done (figures may differ; with --check: 0 only if none differs), 1 a command failed, a figure could
not be read or (--check) differs, 2 bad arguments or a marker without an entry / an entry figure without a marker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dcls_vision.analysis.cli import make_parser
from dcls_vision.analysis.doc_markers import (
    FigureError,
    doc_commands,
    doc_pages,
    one_line,
    read_doc_markers,
    write_doc_markers,
)
from dcls_vision.analysis.readme_figures import (
    Command,
    Entry,
    Value,
    compare,
    epoch_time,
    eval_split_error,
    group_runs_value,
    json_value,
    jsonl_row_value,
    jsonl_value,
    max_over_runs_value,
    position_stat,
    report_group_values,
    report_value,
    seed_run_value,
)
from dcls_vision.utils.errors import run_cli
from dcls_vision.utils.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
STAMP = ".readme_figures"  # written into every entry dir this tool made, so only those are ever deleted

# --------------------------------------------------------------------------------------------- robustness walk-through
# README "Walk-through on real data that fits on a laptop" (section Robustness), commands verbatim.
ROBUSTNESS_COMMANDS = (
    Command(
        "python train.py experiment=quickstart trainer.epochs=1 data.train_subset=3000 data.val_subset=100 \\\n"
        "    trainer.ema.enabled=true trainer.ema.decay=0.998 logger.wandb=false "
        "trainer.output_dir=outputs/robustness_demo"
    ),
    Command(
        "python -m dcls_vision.robustness.fashion_folder data/fmnist_val --checkpoint outputs/robustness_demo/best.pth"
    ),
    Command(
        "python tools/make_corrupted.py data/fmnist_val data/fmnist_val_c --corruptions all --no-resize-crop "
        "--upscale-small 32 --format png"
    ),
    Command(
        "python eval.py checkpoint=outputs/robustness_demo/best.pth val.root=data/fmnist_val "
        "c.root=data/fmnist_val_c \\\n"
        "    sketch.root=data/fmnist_val output_dir=outputs/robustness_demo/eval"
    ),
)
_RESULTS = "robustness_demo/eval/results.json"
_C_EXAMPLES = ("gaussian_noise", "defocus_blur")  # the per-corruption rows the README shows
ROBUSTNESS_VALUES = (
    jsonl_value("robustness.val", "robustness_demo/metrics.jsonl", "val_top1"),
    json_value("robustness.clean", _RESULTS, ("benchmarks", "val", "top1")),
    json_value("robustness.c", _RESULTS, ("benchmarks", "c", "summary", "mean_error")),
    json_value("robustness.sk", _RESULTS, ("benchmarks", "sketch", "top1")),
    json_value("robustness.mce", _RESULTS, ("benchmarks", "c", "summary", "mce")),
    json_value("robustness.val.images", _RESULTS, ("benchmarks", "val", "samples"), "{:.0f}"),
    json_value("robustness.c.images", _RESULTS, ("benchmarks", "c", "splits", 0, "samples"), "{:.0f}"),
    json_value("robustness.sk.images", _RESULTS, ("benchmarks", "sketch", "samples"), "{:.0f}"),
    *(
        eval_split_error(f"robustness.{name}.{sev}", _RESULTS, "c", name, sev)
        for name in _C_EXAMPLES
        for sev in range(1, 6)
    ),
    *(
        json_value(f"robustness.{name}.{stat}", _RESULTS, ("benchmarks", "c", "summary", "per_corruption", name, key))
        for name in _C_EXAMPLES
        for stat, key in (("mean", "mean_error"), ("ce", "ce"))
    ),
)

# ------------------------------------------------------------------------------------------ quickstart over 3 seeds
QUICKSTART_COMMANDS = (
    Command(
        "python train.py -m experiment=quickstart,quickstart_baseline trainer.seed=0,1,2 logger.wandb=false "
        "hydra.sweep.dir=outputs/quickstart_seeds"
    ),
    Command(
        "python tools/report.py outputs/quickstart_seeds --baseline experiment_name=quickstart_baseline", analysis=True
    ),
)
_QS, _QB = "experiment_name=quickstart", "experiment_name=quickstart_baseline"
QUICKSTART_VALUES = (
    *(
        report_value(f"quickstart.{tag}.{stat}", "report.json", label, ("stats", "final_top1", stat), fmt)
        for tag, label in (("dcls", _QS), ("baseline", _QB))
        for stat, fmt in (("mean", "{:.2f}"), ("std", "{:.2f}"), ("n", "{:.0f}"))
    ),
    report_value("quickstart.diff", "report.json", _QS, ("vs_baseline", "diff")),
    report_value("quickstart.p", "report.json", _QS, ("vs_baseline", "p"), "{:.3f}"),
    *(seed_run_value(f"quickstart.epoch{e + 1}", "report.json", _QS, 0, "val_top1", e, "{:.1f}") for e in range(3)),
    *(
        seed_run_value(f"quickstart.seed{seed}.{tag}", "report.json", label, seed, "val_top1", -1, "{:.2f}")
        for tag, label in (("dcls", _QS), ("baseline", _QB))
        for seed in range(3)
    ),
    group_runs_value(
        "quickstart.epoch_s", "report.json", (_QS,), epoch_time("mean"), "mean epoch_time (s)", "{:.0f}", seeds=(0,)
    ),
)

# ---------------------------------------------------------------------------------- kernel-size study (thesis Fig 6.1)
# README "Kernel-size study": the sweep (sizes x 2 regimes x 3 seeds + the dense baseline, all in the experiment's
# hydra.sweeper.params), then the report with one baseline per regime and the plot.
KERNEL_SIZE_STUDY_COMMANDS: tuple[Command, ...] = (
    Command("python train.py -m experiment=kernel_size_study hydra.sweep.dir=outputs/kernel_size_study"),
    Command(
        "python tools/report.py outputs/kernel_size_study --baseline model.kwargs.dilated_kernel_size=dense \\\n"
        "    --plot model.kwargs.dilated_kernel_size",
        analysis=True,
    ),
)
KERNEL_SIZE_STUDY_DIRS: dict[str, str] = {"outputs/kernel_size_study": "."}
_KS = "model.kwargs.dilated_kernel_size"


def _ks(sizes: tuple[int, ...], epochs: int) -> tuple[str, ...]:
    return tuple(f"{_KS}={k}, trainer.epochs={epochs}" for k in sizes)


# The README's statements on where the learned positions went (read from the seed-0 runs' last.pth) and what a run
# costs (its metrics.jsonl epoch_time: training + validation, without start-up; mean over the seeds).
KERNEL_SIZE_STUDY_VALUES = (
    max_over_runs_value(
        "kernel_size_study.pos.max_abs.epochs_10",
        "report.json",
        _ks((7, 13, 21), 10),
        position_stat("max_abs"),
        "largest |position|",
        "{:.2f}",
        seeds=(0,),
    ),
    *(
        group_runs_value(
            f"kernel_size_study.pos.mean_abs.epochs_{epochs}",
            "report.json",
            _ks((7, 13, 21), epochs),
            position_stat("mean_abs"),
            "mean |position|",
            fmt,
            seeds=(0,),
        )
        for epochs, fmt in ((10, "{:.2f}"), (100, "{:.1f}"))
    ),
    *(
        group_runs_value(
            f"kernel_size_study.pos.beyond_3.size_{size}",
            "report.json",
            _ks((size,), 100),
            position_stat("pct_beyond_3"),
            "% of |position| > 3",
            "{:.0f}",
            seeds=(0,),
        )
        for size in (13, 21)
    ),
    max_over_runs_value(
        "kernel_size_study.pos.max_abs.epochs_100",
        "report.json",
        _ks((13, 21), 100),
        position_stat("max_abs"),
        "largest |position|",
        "{:.1f}",
        seeds=(0,),
    ),
    *(
        group_runs_value(
            f"kernel_size_study.time.size_21_epochs_{epochs}",
            "report.json",
            _ks((21,), epochs),
            epoch_time("sum"),
            "summed epoch_time (s)",
            "{:.0f}",
        )
        for epochs in (10, 100)
    ),
)
KERNEL_SIZE_STUDY_PLOT = "report_model.kwargs.dilated_kernel_size.png"


def seeds_vs_baseline(
    name: str, tag: str, metric: str, seed_epoch: int, seed_fmt: str, p_fmt: str
) -> tuple[tuple[Command, ...], tuple[Value, ...]]:
    """A quickstart and its ``_baseline`` over seeds 0-2 as one sweep, compared by tools/report.py: the commands and
    the figures (each group's mean/std/n of ``final_<metric>``, the paired difference and p, every seed's
    ``val_<metric>`` at record ``seed_epoch``), markers ``<name>.{<tag>,baseline}.*``."""
    sweep, run, base = f"outputs/{name}_seeds", f"experiment_name={name}", f"experiment_name={name}_baseline"
    commands = (
        Command(
            f"python train.py -m experiment={name},{name}_baseline trainer.seed=0,1,2 logger.wandb=false "
            f"hydra.sweep.dir={sweep}"
        ),
        Command(f"python tools/report.py {sweep} --baseline {base}", analysis=True),
    )
    groups = ((tag, run), ("baseline", base))
    values = (
        *(
            report_value(f"{name}.{t}.{stat}", "report.json", label, ("stats", f"final_{metric}", stat), fmt)
            for t, label in groups
            for stat, fmt in (("mean", "{:.2f}"), ("std", "{:.2f}"), ("n", "{:.0f}"))
        ),
        report_value(f"{name}.diff", "report.json", run, ("vs_baseline", "diff")),
        report_value(f"{name}.p", "report.json", run, ("vs_baseline", "p"), p_fmt),
        *(
            seed_run_value(f"{name}.{t}.seed{seed}", "report.json", label, seed, f"val_{metric}", seed_epoch, seed_fmt)
            for t, label in groups
            for seed in range(3)
        ),
    )
    return commands, values


# -------------------------------------------------------------------------------------- audio quickstart, 3 seeds
AUDIO_COMMANDS, AUDIO_VALUES = seeds_vs_baseline("audio_quickstart", "dcls", "mAP", 5, "{:.2f}", "{:.3f}")

# ------------------------------------------------------------------------- SNN quickstart over 3 seeds (thesis ch. 4)
_SNN_SEEDS = seeds_vs_baseline("snn_quickstart", "delays", "top1", -1, "{:.1f}", "{:.4f}")
SNN_COMMANDS = (
    *_SNN_SEEDS[0],
    Command(
        "python tools/plot_positions.py --checkpoint outputs/snn_quickstart_seeds/0_snn_quickstart/last.pth --delays "
        "--out outputs/snn_quickstart_seeds/delays",
        analysis=True,
    ),
)
SNN_VALUES = (
    *_SNN_SEEDS[1],
    *(  # share of first-layer delays within 0.1 step of an integer, seed 0 (thesis Fig. 6.6)
        json_value(f"snn_quickstart.near_integer.{when}", "delays/positions.json", ("delays", when, 0, "near_integer"))
        for when in ("before", "after")
    ),
)

# ------------------------------------------------------------------------------- downstream FLOPs and throughput
# README "Downstream": the FLOPs table (tools/downstream_flops.py; CPU, random weights: deterministic counts) and the
# CPU throughput sentence (tools/downstream_throughput.py: timings of this machine, so they differ run to run).
COST_FLOPS_S = 210  # measured: 205 s on 2 CPU cores (load ~2), 2026-12-06
_ADE, _COCO = "_8xb2-amp-160k_ade20k-512x512.py", "_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py"
FLOPS_COMMANDS = (
    Command(
        "python tools/downstream_flops.py configs/downstream/ade20k/*.py configs/downstream/coco/*.py",
        extra="--out {dir}/flops.jsonl",
    ),
    Command(
        "python tools/downstream_flops.py configs/downstream/ade20k/upernet_convnext-t-dcls_8xb2*.py "
        "--backbone convnext_tiny",
        extra="--out {dir}/flops_convnext_tiny_ade20k.jsonl",
    ),
    Command(
        "python tools/downstream_flops.py configs/downstream/coco/cascade-mask-rcnn_convnext-t-dcls_fpn*.py "
        "--backbone convnext_tiny",
        extra="--out {dir}/flops_convnext_tiny_coco.jsonl",
    ),
)
_DCLS_BACKBONES = (  # marker part, config name part: the DCLS backbones of both FLOPs tables
    ("t_dcls", "convnext-t-dcls"),
    ("t_dcls_gauss", "convnext-t-dcls-gauss"),
    ("s_dcls", "convnext-s-dcls"),
    ("b_dcls", "convnext-b-dcls"),
    ("convformer_s18_dcls", "convformer-s18-dcls"),
)
_FLOPS_ROWS = (  # marker part, output file, config file name, has DCLS layers (a construction cost)
    *((f"upernet.{tag}", "flops.jsonl", f"upernet_{name}{_ADE}", True) for tag, name in _DCLS_BACKBONES),
    *((f"cascade.{tag}", "flops.jsonl", f"cascade-mask-rcnn_{name}{_COCO}", True) for tag, name in _DCLS_BACKBONES),
    ("upernet.t", "flops_convnext_tiny_ade20k.jsonl", f"upernet_convnext-t-dcls{_ADE}", False),
    ("cascade.t", "flops_convnext_tiny_coco.jsonl", f"cascade-mask-rcnn_convnext-t-dcls{_COCO}", False),
)
_DECODE_HEADS = ("upernet.t_dcls", "upernet.b_dcls", "upernet.convformer_s18_dcls")  # one per stage-width set
FLOPS_VALUES = tuple(
    jsonl_row_value(f"downstream_flops.{tag}.{field}", file, config, keys, fmt, scale)
    for tag, file, config, dcls in _FLOPS_ROWS
    for field, keys, fmt, scale in (
        ("params", ("params_m",), "{:.2f}", 1.0),
        ("gmacs", ("gmacs",), "{:.1f}", 1.0),
        ("backbone", ("parts_gmacs", "backbone"), "{:.1f}", 1.0),
        ("decode_head", ("parts_gmacs", "decode_head"), "{:.1f}", 1.0),
        ("construction", ("construction", "gflops_per_pass"), "{:.1f}", 1000.0),
    )
    if (dcls or field != "construction") and (tag in _DECODE_HEADS or field != "decode_head")
)

THROUGHPUT_COMMANDS = tuple(
    Command(
        "python tools/downstream_throughput.py configs/downstream/ade20k/upernet_convnext-t-dcls_8xb2*.py \\\n"
        f"    configs/downstream/coco/cascade-mask-rcnn_convnext-t-dcls_fpn*.py --warmup 1 --repeats 2{flag}",
        extra=f"> {{dir}}/{file}",
    )
    for flag, file in (("", "throughput.jsonl"), (" --backbone convnext_tiny", "throughput_convnext_tiny.jsonl"))
)
THROUGHPUT_VALUES = tuple(
    jsonl_row_value(f"downstream_throughput.{tag}.{field}", file, config, keys, fmt, scale)
    for tag, file, config in (
        ("upernet.t", "throughput_convnext_tiny.jsonl", f"upernet_convnext-t-dcls{_ADE}"),
        ("upernet.t_dcls", "throughput.jsonl", f"upernet_convnext-t-dcls{_ADE}"),
        ("cascade.t", "throughput_convnext_tiny.jsonl", f"cascade-mask-rcnn_convnext-t-dcls{_COCO}"),
        ("cascade.t_dcls", "throughput.jsonl", f"cascade-mask-rcnn_convnext-t-dcls{_COCO}"),
    )
    for field, keys, fmt, scale in (
        ("images_per_s", ("images_per_s",), "{:.4f}" if tag.startswith("upernet") else "{:.3f}", 1.0),
        ("seconds", ("median_ms",), "{:.0f}", 1e-3),
    )
)

ENTRIES: dict[str, Entry] = {
    e.name: e
    for e in (
        Entry(
            "robustness",
            ROBUSTNESS_COMMANDS,
            ROBUSTNESS_VALUES,
            cost_s=300,
            dirs={"outputs/robustness_demo": "robustness_demo", "data/fmnist_val": "fmnist_val"},
        ),
        Entry(
            "quickstart", QUICKSTART_COMMANDS, QUICKSTART_VALUES, cost_s=3600, dirs={"outputs/quickstart_seeds": "."}
        ),
        Entry(
            "kernel_size_study",
            KERNEL_SIZE_STUDY_COMMANDS,
            KERNEL_SIZE_STUDY_VALUES,
            cost_s=460,  # measured: 457 s for the 30 runs and the report on 2 nearly idle cores, 2026-12-06
            dirs=KERNEL_SIZE_STUDY_DIRS,
            dynamic=report_group_values("kernel_size_study", "report.json"),
            dynamic_prefix="kernel_size_study.",
            plots={KERNEL_SIZE_STUDY_PLOT: "kernel_size_study.png"},
        ),
        Entry(
            "audio_quickstart",
            AUDIO_COMMANDS,
            AUDIO_VALUES,
            cost_s=900,  # 6 runs of 131 / 91 s on 2 idle cores, plus set generation (~1 min)
            dirs={"outputs/audio_quickstart_seeds": "."},
        ),
        Entry(
            "snn_quickstart",
            SNN_COMMANDS,
            SNN_VALUES,
            cost_s=1800,  # 6 runs of 2-5 min on 2 cores, the delays' set generated once (~2 min)
            dirs={"outputs/snn_quickstart_seeds": "."},
            plots={"delays/delays_hist.png": "snn_delays_hist.png"},
        ),
        Entry("downstream_flops", FLOPS_COMMANDS, FLOPS_VALUES, cost_s=COST_FLOPS_S),
        Entry("downstream_throughput", THROUGHPUT_COMMANDS, THROUGHPUT_VALUES, cost_s=210),  # 200 s on 2 idle cores
    )
}


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("readme_figures.py", __doc__)
    parser.add_argument("--only", default=None, help=f"comma-separated entries (default: all): {', '.join(ENTRIES)}")
    parser.add_argument("--out", type=Path, default=Path("outputs/readme_figures"), help="entry dirs go to OUT/NAME")
    parser.add_argument("--docs", type=Path, default=ROOT, help="folder of README.md + docs/*.md to compare/rewrite")
    parser.add_argument("--write", action="store_true", help="rewrite the pages' marked values; copy plots")
    parser.add_argument("--reuse", type=Path, default=None, help="one entry: read figures from DIR, run no training")
    parser.add_argument("--check", action="store_true", help="exit 1 if any figure differs from the docs'")
    parser.add_argument("--list", action="store_true", help="print entries, cost and commands; run nothing")
    return parser


def select(only: str | None) -> list[Entry]:
    """The entries named by ``--only`` (all by default); an unknown name is a FigureError."""
    if only is None:
        return list(ENTRIES.values())
    names = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ENTRIES]
    if unknown or not names:
        raise FigureError(
            f"--only {only!r}: unknown entry {unknown[0] if unknown else '(none)'}; allowed: {', '.join(ENTRIES)}"
        )
    return [ENTRIES[n] for n in names]


ALLOWED = ", ".join(f"{name}.*" for name in ENTRIES)


def check_docs(pages: Sequence[Path], entries: Sequence[Entry]) -> dict[str, tuple[Path, str]]:
    """Every marker of ``pages`` belongs to an entry, every static figure of ``entries`` has a marker and every
    command of ``entries`` is in a bash block of one page, verbatim (else one line, exit 2); returns the markers."""
    markers, commands = read_doc_markers(pages), doc_commands(pages)
    docs = f"{pages[0].parent}/README.md or docs/*.md" if pages else "the docs (no README.md, no docs/*.md)"
    for entry in entries:
        for cmd in entry.commands:
            if one_line(cmd.text) not in commands:
                raise FigureError(f"entry {entry.name}: command not in a bash block of {docs}: {one_line(cmd.text)}")
    for name, (page, _) in markers.items():
        entry = ENTRIES.get(name.split(".")[0])
        if entry is None or (name not in {v.marker for v in entry.values} and not _dynamic(entry, name)):
            raise FigureError(f"{page}: marker fig:{name} has no figure in ENTRIES; allowed: {ALLOWED}")
    for entry in entries:
        for v in entry.values:
            if v.marker not in markers:
                raise FigureError(
                    f"entry {entry.name}: figure {v.marker} has no <!--fig:{v.marker}--> marker in {docs}"
                )
    return markers


def _dynamic(entry: Entry, name: str) -> bool:
    return entry.dynamic_prefix is not None and name.startswith(entry.dynamic_prefix)


def prepare(entry_dir: Path) -> None:
    """A fresh entry dir (train.py and eval.py would resume from old outputs); deletes only dirs this tool made."""
    if entry_dir.exists() and any(entry_dir.iterdir()):
        if not (entry_dir / STAMP).exists():
            raise FigureError(f"--out: {entry_dir} exists and was not made by readme_figures.py; allowed: a new dir")
        shutil.rmtree(entry_dir)
    entry_dir.mkdir(parents=True, exist_ok=True)
    (entry_dir / STAMP).write_text("made by tools/readme_figures.py; deleted and remade by its next run\n")


def run_commands(entry: Entry, entry_dir: Path, reuse: bool) -> bool:
    """Run the entry's commands in order (from the repo root, output to entry_dir/commands.log); False on a failure."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    if not entry.commands and not reuse:
        print(f"readme_figures: {entry.name}: no commands defined yet (see its *_COMMANDS constant)", file=sys.stderr)
        return False
    log = entry_dir / "commands.log"
    for i, cmd in enumerate(entry.commands, 1):
        line = entry.shell(cmd, entry_dir)
        if reuse and not cmd.analysis:
            print(f"  [{i}] skipped (--reuse): {line}")
            continue
        print(f"  [{i}] $ {line}", flush=True)
        start = time.monotonic()
        with open(log, "a") as f:
            f.write(f"$ {line}\n")
            f.flush()
            rc = subprocess.run(["bash", "-c", line], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        print(f"      exit {rc} after {time.monotonic() - start:.1f} s", flush=True)
        if rc != 0:
            print(
                f"readme_figures: {entry.name}: command {i} failed with exit code {rc} (log: {log}): {line}",
                file=sys.stderr,
            )
            return False
    return True


def extract(entry: Entry, entry_dir: Path, markers: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Print the docs' figure vs the fresh one for every figure; returns (marker -> fresh text, problems)."""
    values: list[Value] = list(entry.values)
    problems: list[str] = []
    if entry.dynamic is not None:
        try:
            values += entry.dynamic(entry_dir)
        except (OSError, LookupError, ValueError) as err:
            problems.append(f"{entry.name}: {err}")
    fresh_text: dict[str, str] = {}
    print(f"  {'figure':<34} {'docs':>9} {'fresh':>9} {'diff':>8}  source")
    for v in values:
        readme = markers.get(v.marker)
        try:
            fresh: float | None = v.read(entry_dir)
        except (OSError, LookupError, ValueError) as err:
            fresh = None
            problems.append(f"{v.marker}: {err}")
        text = "?" if fresh is None else v.format(fresh)
        if fresh is not None:
            fresh_text[v.marker] = text
        shown = "(none)" if readme is None else readme
        print(f"  {v.marker:<34} {shown:>9} {text:>9} {compare(readme, fresh, v):>8}  {v.source}")
    produced = {v.marker for v in values}
    missing = [m for m in markers if _dynamic(entry, m) and m not in produced]
    problems += [f"{m}: marked in the docs but not produced by this run" for m in missing]
    return fresh_text, problems


def main(args: argparse.Namespace) -> int:
    entries = select(args.only)
    if args.list:
        for e in entries:
            print(
                f"{e.name} (~{e.cost_s / 60:.0f} min): " + "; ".join(e.shell(c, args.out / e.name) for c in e.commands)
            )
        return 0
    if args.reuse is not None and len(entries) != 1:
        raise FigureError(f"--reuse {args.reuse}: needs exactly one entry; allowed: --only NAME with one name")
    if args.reuse is not None and not args.reuse.is_dir():
        raise FigureError(f"--reuse {args.reuse}: not a directory; allowed: an existing output dir of the entry")
    root = args.docs.resolve()
    if not (root / "README.md").is_file():
        raise FigureError(f"--docs {args.docs}: no README.md there; allowed: a folder holding README.md and docs/")
    where = check_docs(doc_pages(root), entries)
    markers = {name: text for name, (_, text) in where.items()}
    failed, unmarked, fresh_all = False, False, {}
    for entry in entries:
        entry_dir = (args.reuse or args.out / entry.name).resolve()
        print(f"== {entry.name} (estimated {entry.cost_s / 60:.0f} min on 2 CPU cores) in {entry_dir}", flush=True)
        if args.reuse is None and entry.commands:
            prepare(entry_dir)
        ok = run_commands(entry, entry_dir, reuse=args.reuse is not None)
        fresh, problems = extract(entry, entry_dir, markers)
        for p in problems:
            print(f"readme_figures: {entry.name}: {p}", file=sys.stderr)
        unmarked |= any(_dynamic(entry, m) and m not in markers for m in fresh)
        failed |= not ok or bool(problems)
        if ok:  # a failed command leaves a partial run: its figures are shown, never written
            fresh_all.update({m: t for m, t in fresh.items() if m in markers})
        if args.write:
            _copy_plots(entry, entry_dir, root / "docs" / "figures")
    changed = {m: t for m, t in fresh_all.items() if markers[m].strip() != t}
    if args.write and changed:
        pages = write_doc_markers({m: where[m][0] for m in changed}, changed)
        print(f"wrote {len(changed)} figure(s) into {', '.join(map(str, pages))}")
    print(f"{len(changed)} of {len(fresh_all)} figure(s) differ from the docs")
    if unmarked:
        raise FigureError("some fresh figures have no marker in the docs (listed as '(none)'); add <!--fig:NAME-->")
    return 1 if failed or (args.check and changed and not args.write) else 0


def _copy_plots(entry: Entry, entry_dir: Path, dest: Path) -> None:
    for src, name in entry.plots.items():
        if (entry_dir / src).is_file():
            atomic_write_bytes(dest / name, (entry_dir / src).read_bytes())
            print(f"copied {entry_dir / src} -> {dest / name}")


if __name__ == "__main__":
    parser = build_parser()
    sys.exit(run_cli(lambda: main(parser.parse_args()), prog=parser.prog))
