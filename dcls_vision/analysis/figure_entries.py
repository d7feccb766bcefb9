"""The documented examples whose figures ``tools/readme_figures.py`` regenerates: per entry, its commands exactly as
a page of README.md / docs/*.md prints them, the figures they yield and the file and field each is read from.

Data, not logic (the readers are in :mod:`dcls_vision.analysis.readme_figures`): a changed command on a page is
changed here too, and ``tests/test_docs.py`` fails until both agree.
"""

from __future__ import annotations

from dcls_vision.analysis.readme_figures import (
    Command,
    Entry,
    Value,
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
