"""Documentation figures that cannot go stale: the commands that produce each marked figure, and value extraction.

Every number the documentation quotes from a run is wrapped in an HTML comment pair,
``<!--fig:NAME-->62.40<!--/fig-->`` (invisible in rendered Markdown, table cells included). ``tools/readme_figures.py``
reruns the documented commands (:class:`Entry`), reads each marked value back from the files the commands wrote
(:class:`Value`), prints it beside the page's and, with ``--write``, rewrites the marked text in place, in whichever
page holds it. Markers are found by name, never by prose regexes, so rewording or moving text between pages cannot
silently detach a figure from its command.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .doc_markers import one_line
from .runs import read_records


class FigureMissing(LookupError):
    """An output file lacks the field a figure is read from (its command changed, or failed part-way)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------------- extraction


@dataclass(frozen=True)
class Value:
    """One marked README figure: its marker, where it is read from (``read(entry_dir)``) and how it is printed."""

    marker: str
    source: str  # human-readable: the file (relative to the entry dir) and the field
    read: Callable[[Path], float]
    fmt: str = "{:.2f}"

    def format(self, value: float) -> str:
        return self.fmt.format(value)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist (did its command run?)") from None


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """A run's metrics.jsonl records, read as tools/report.py reads them (torn line skipped, re-logged epoch once)."""
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist (did its command run?)")
    return read_records(path.parent)


def _dig(obj: Any, keys: Iterable[str | int], where: str) -> float:
    for k in keys:
        try:
            obj = obj[k]
        except (KeyError, IndexError, TypeError):
            raise FigureMissing(f"{where}: no field {'.'.join(map(str, keys))}") from None
    if obj is None:
        raise FigureMissing(f"{where}: {'.'.join(map(str, keys))} is null")
    return float(obj)


def json_value(marker: str, file: str, keys: tuple[str | int, ...], fmt: str = "{:.2f}") -> Value:
    """A field of a JSON file (e.g. eval.py's results.json), by key path."""
    return Value(marker, f"{file}: {'.'.join(map(str, keys))}", lambda d: _dig(_load_json(d / file), keys, file), fmt)


def jsonl_value(marker: str, file: str, key: str, epoch: int = -1, fmt: str = "{:.2f}") -> Value:
    """A field of one record of a metrics.jsonl (``epoch``: 0-based record index; -1 the last)."""
    label = "last record" if epoch == -1 else f"epoch {epoch + 1}"
    return Value(marker, f"{file}: {key} ({label})", lambda d: _dig(_jsonl(d / file), (epoch, key), file), fmt)


def eval_split_error(marker: str, file: str, bench: str, corruption: str, severity: int) -> Value:
    """The top-1 error of one corruption x severity split in an eval.py results.json."""

    def read(d: Path) -> float:
        splits = _load_json(d / file)["benchmarks"][bench]["splits"]
        for s in splits:
            if s["corruption"] == corruption and int(s["severity"]) == severity:
                return float(s["error"])
        raise FigureMissing(f"{file}: no {bench} split {corruption}/{severity}")

    return Value(marker, f"{file}: {bench} {corruption} severity {severity} error", read)


def report_group(report: dict[str, Any], label: str, where: str) -> dict[str, Any]:
    """The one group of a tools/report.py report.json whose keys include every ``k=v`` of ``label``.

    Matched on keys, not on the whole label: report.py groups by every config key that differs, so a sweep over
    experiments also differs in ``model.name`` (label ``experiment_name=quickstart, model.name=dcls_quickstart``).
    """
    want = dict(kv.strip().split("=", 1) for kv in label.split(","))
    found = [g for g in report["groups"] if all(str(g["keys"].get(k)) == v for k, v in want.items())]
    if len(found) != 1:
        labels = "; ".join(g["label"] for g in report["groups"])
        raise FigureMissing(f"{where}: {len(found)} groups have {label!r} (need exactly 1); groups: {labels}")
    return found[0]


def report_value(marker: str, file: str, label: str, keys: tuple[str, ...], fmt: str = "{:.2f}") -> Value:
    """A field of one group of a report.json, e.g. ``("stats", "final_top1", "mean")`` or ``("vs_baseline", "p")``."""

    def read(d: Path) -> float:
        return _dig(report_group(_load_json(d / file), label, file), keys, f"{file} [{label}]")

    return Value(marker, f"{file} [{label}]: {'.'.join(keys)}", read, fmt)


def seed_run_value(marker: str, file: str, label: str, seed: int, key: str, epoch: int, fmt: str) -> Value:
    """A metrics.jsonl field of the run of ``seed`` in one report.json group (the group's runs and seeds align)."""

    def read(d: Path) -> float:
        g = report_group(_load_json(d / file), label, file)
        runs = dict(zip(g["seeds"], g["runs"]))
        if seed not in runs:
            raise FigureMissing(f"{file} [{label}]: no run with seed {seed}; seeds: {g['seeds']}")
        return _dig(_jsonl(Path(runs[seed]) / "metrics.jsonl"), (epoch, key), f"{runs[seed]}/metrics.jsonl")

    when = "last epoch" if epoch < 0 else f"epoch {epoch + 1}"
    return Value(marker, f"{file} [{label}] seed {seed}: metrics.jsonl {key} ({when})", read, fmt)


def _runs_value(
    marker: str,
    file: str,
    labels: tuple[str, ...],
    per_run: Callable[[Path], float],
    what: str,
    fmt: str,
    seeds: tuple[int, ...] | None,
    reduce: str,
) -> Value:
    """``reduce`` (``mean`` or ``max``) over the runs of report.json groups (one per label; ``seeds``: only those)
    of ``per_run(run dir)``."""

    def read(d: Path) -> float:
        report, runs = _load_json(d / file), []
        for label in labels:
            g = report_group(report, label, file)
            runs += [Path(r) for s, r in zip(g["seeds"], g["runs"]) if seeds is None or s in seeds]
        if not runs:
            raise FigureMissing(f"{file} {list(labels)}: no run with seeds {seeds}")
        values = [per_run(r) for r in runs]
        return max(values) if reduce == "max" else sum(values) / len(values)

    where = f"{file} {' | '.join(labels)}{'' if seeds is None else f' seeds {seeds}'}"
    return Value(marker, f"{where}: {'max of ' if reduce == 'max' else ''}{what}", read, fmt)


def group_runs_value(
    marker: str,
    file: str,
    labels: tuple[str, ...],
    per_run: Callable[[Path], float],
    what: str,
    fmt: str,
    seeds: tuple[int, ...] | None = None,
) -> Value:
    """The mean over the runs of report.json groups (one per label; ``seeds``: only those) of ``per_run(run dir)``,
    e.g. the summed epoch_time of a run, or a statistic of its learned positions."""
    return _runs_value(marker, file, labels, per_run, what, fmt, seeds, "mean")


def epoch_time(how: str) -> Callable[[Path], float]:
    """A run's training + validation seconds from its metrics.jsonl ``epoch_time``: ``sum`` or ``mean`` per epoch."""

    def read(run: Path) -> float:
        times = [_dig(r, ("epoch_time",), f"{run}/metrics.jsonl") for r in _jsonl(run / "metrics.jsonl")]
        return sum(times) / (len(times) if how == "mean" else 1)

    return read


def run_positions(run: Path) -> Any:
    """Every learned position (all DCLS layers, both axes) of a run's ``last.pth``, flattened; read with
    weights_only=True by the model factory's reader."""
    import torch

    from dcls_vision.models.checkpoint_formats import read_checkpoint

    state, _ = read_checkpoint(run / "last.pth")
    found = [v.flatten().float() for k, v in state.items() if k.endswith("positions")]
    if not found:
        raise FigureMissing(f"{run}/last.pth: no positions tensor (not a DCLS run?)")
    return torch.cat(found)


def position_stat(stat: str) -> Callable[[Path], float]:
    """``max_abs`` (largest |position|), ``mean_abs``, or ``pct_beyond_N`` (% of positions with |p| > N) of a run."""

    def read(run: Path) -> float:
        p = run_positions(run).abs()
        if stat.startswith("pct_beyond_"):
            return 100.0 * float((p > float(stat.rsplit("_", 1)[1])).float().mean())
        return float(p.max() if stat == "max_abs" else p.mean())

    return read


def max_over_runs_value(
    marker: str,
    file: str,
    labels: tuple[str, ...],
    per_run: Callable[[Path], float],
    what: str,
    fmt: str,
    seeds: tuple[int, ...] | None = None,
) -> Value:
    """As :func:`group_runs_value`, the largest per-run figure instead of the mean (e.g. the largest |position|)."""
    return _runs_value(marker, file, labels, per_run, what, fmt, seeds, "max")


def jsonl_row_value(marker: str, file: str, config: str, keys: tuple[str, ...], fmt: str, scale: float = 1.0) -> Value:
    """A field of the JSON line of ``config`` (the config file's name) in a file of one JSON object per line, as
    tools/downstream_flops.py --out writes; ``scale`` converts units (e.g. 1000 for GFLOPs -> MFLOPs)."""

    def read(d: Path) -> float:
        path = d / file
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (did its command run?)")
        # a tool's stdout redirected here may carry other lines (library warnings): the JSON objects are the rows
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
        found = [r for r in rows if Path(str(r.get("config", ""))).name == config]
        if len(found) != 1:
            raise FigureMissing(f"{file}: {len(found)} rows for config {config} (need exactly 1)")
        return scale * _dig(found[0], keys, f"{file} [{config}]")

    return Value(marker, f"{file} [{config}]: {'.'.join(keys)}", read, fmt)


def sanitise(label: str) -> str:
    """A report.json group label as a marker-name part (the last dotted component of each key; ``=`` and separators
    to ``_``): ``model.kwargs.dilated_kernel_size=7`` -> ``dilated_kernel_size_7``."""
    parts = []
    for kv in label.split(","):
        key, _, val = kv.strip().partition("=")
        parts.append(f"{key.split('.')[-1]}_{val}" if val else key)
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", "_".join(parts)).strip("_")


def report_group_values(
    prefix: str, file: str, stats: tuple[str, ...] = ("mean", "std")
) -> Callable[[Path], list[Value]]:
    """Values for every group of a report.json: ``<prefix>.<sanitised label>.<stat>`` of its metric (generic tables),
    and ``.diff`` / ``.p`` of its comparison with its baseline when the report has one."""

    def values(d: Path) -> list[Value]:
        report, out = _load_json(d / file), []
        for g in report["groups"]:
            name, label = f"{prefix}.{sanitise(g['label'])}", g["label"]
            stat = g["stats"].get(report["metric"]) or {}
            for s in stats:
                if stat.get(s) is not None:  # std is null for n == 1: no figure
                    out.append(report_value(f"{name}.{s}", file, label, ("stats", report["metric"], s)))
            vs = g.get("vs_baseline") or {}
            if vs.get("diff") is not None:
                out.append(report_value(f"{name}.diff", file, label, ("vs_baseline", "diff"), "{:+.2f}"))
            if vs.get("p") is not None:
                out.append(report_value(f"{name}.p", file, label, ("vs_baseline", "p"), "{:.3f}"))
        return out

    return values


# ------------------------------------------------------------------------------------------------------ entries


@dataclass(frozen=True)
class Command:
    """One README command, verbatim (``text``), plus arguments the tool appends (``extra``, e.g. an output dir).

    ``analysis``: the command only reads earlier outputs (e.g. tools/report.py), so it also runs with ``--reuse``.
    """

    text: str
    extra: str = ""
    analysis: bool = False


@dataclass(frozen=True)
class Entry:
    """One README example: its commands, where their README paths go under the entry dir, and the figures it yields.

    ``dirs`` maps a path as written in the README (``outputs/robustness_demo``) to a path relative to the entry dir;
    ``dynamic`` yields further values once the outputs exist (one per report.json group); ``plots`` maps a produced
    file (relative to the entry dir) to its name under docs/figures/; ``cost_s``: estimated wall time on 2 CPU cores.
    """

    name: str
    commands: tuple[Command, ...]
    values: tuple[Value, ...]
    cost_s: float
    dirs: Mapping[str, str] = field(default_factory=dict)
    dynamic: Callable[[Path], list[Value]] | None = None
    dynamic_prefix: str | None = None
    plots: Mapping[str, str] = field(default_factory=dict)

    def shell(self, cmd: Command, entry_dir: Path) -> str:
        """The command line to run: README paths replaced by their place under ``entry_dir``, ``extra`` appended."""
        line = one_line(cmd.text)
        for readme_path in sorted(self.dirs, key=len, reverse=True):
            target = os.path.normpath(entry_dir / self.dirs[readme_path])
            line = re.sub(rf"(?<![\w/.]){re.escape(readme_path)}", target, line)
        extra = cmd.extra.format(dir=entry_dir)
        return f"{line} {extra}".strip()


def compare(readme: str | None, fresh: float | None, value: Value) -> str:
    """``+1.23`` (fresh - README), ``same``, or ``n/a`` when either side is missing or not a number."""
    if readme is None or fresh is None:
        return "n/a"
    if readme.strip() == value.format(fresh):
        return "same"
    try:
        diff = fresh - float(readme.strip().replace("−", "-"))
    except ValueError:
        return "n/a"
    return f"{diff:+.2f}" if math.isfinite(diff) else "n/a"
