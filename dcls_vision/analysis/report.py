"""Experiment reports (``tools/report.py``): the report of trainer runs, and the entry that builds and writes a
report of either kind.

Trainer runs: grouped by the config keys that differ, seed excepted (:mod:`.grouping`), mean ± std over seeds, the
difference to a baseline group with a paired or Welch t-test, and the series of ``--plot KEY``. eval.py results
side by side (Table 2.5 rows): :mod:`.eval_report`. The numbers come from the files the trainer and eval.py write
(``metrics.jsonl``, ``config.yaml``, ``results.json``; see :mod:`dcls_vision.analysis.runs`); nothing is rebuilt or
re-evaluated.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.errors import AnalysisError
from dcls_vision.analysis.eval_report import DASH, eval_csv, eval_markdown, eval_report
from dcls_vision.analysis.grouping import Group, differing_keys, fmt_value, group_runs, select_baselines
from dcls_vision.analysis.runs import Run


def summary(values: Sequence[float | None]) -> dict[str, Any] | None:
    """mean, sample std (ddof=1; None for one value) and n of the values present; None when none is."""
    xs = [float(v) for v in values if v is not None]
    if not xs:
        return None
    mean = sum(xs) / len(xs)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else None
    return {"mean": mean, "std": std, "n": len(xs)}


def _by_seed(group: Group, metric: str) -> dict[Any, float]:
    return {r.seed: float(r.values()[metric]) for r in group.runs if r.values().get(metric) is not None}


def compare(group: Group, baseline: Group, metric: str) -> dict[str, Any]:
    """Difference of means on ``metric`` and its t-test: paired by seed when both groups ran the same seeds
    (each once), else Welch's unequal-variance test; t/df/p are None with fewer than 2 runs a side."""
    from scipy import stats

    a, b = _by_seed(group, metric), _by_seed(baseline, metric)
    xs = [float(r.values()[metric]) for r in group.runs if r.values().get(metric) is not None]
    ys = [float(r.values()[metric]) for r in baseline.runs if r.values().get(metric) is not None]
    out: dict[str, Any] = {"metric": metric, "diff": None, "test": None, "t": None, "df": None, "p": None}
    if not xs or not ys:
        return out
    out["diff"] = sum(xs) / len(xs) - sum(ys) / len(ys)
    paired = set(a) == set(b) and len(a) == len(xs) and len(b) == len(ys)
    out["test"] = "paired" if paired else "welch"
    if min(len(xs), len(ys)) < 2:
        return out
    with warnings.catch_warnings():  # equal values: t is nan (reported as null), scipy warns
        warnings.simplefilter("ignore", RuntimeWarning)
        if paired:
            seeds = sorted(a, key=str)
            res = stats.ttest_rel([a[s] for s in seeds], [b[s] for s in seeds])
        else:
            res = stats.ttest_ind(xs, ys, equal_var=False)
    out.update(t=_finite(res.statistic), df=_finite(res.df), p=_finite(res.pvalue))
    return out


def _finite(x: Any) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def train_report(runs: Sequence[Run], metric: str | None, baseline: str | None) -> dict[str, Any]:
    """The report.json dict for trainer runs (see the module doc and docs/training.md "Experiment reports")."""
    m = "mAP" if any(r.multilabel for r in runs) else "top1"
    names = [f"final_{m}", f"best_{m}", f"final_ema_{m}", f"best_ema_{m}", "params", "train_img_per_s"]
    metric = metric or f"final_{m}"
    if metric not in names:
        raise AnalysisError(f"--metric {metric!r} is not a run figure; allowed: {', '.join(names)}")
    keys = differing_keys(runs)
    groups = group_runs(runs, keys)
    bases = select_baselines(groups, baseline, keys) if baseline else {}
    base_ids = {id(b) for b in bases.values()}
    out_groups, notes = [], []
    for g in groups:
        base = bases.get(id(g))
        if baseline and base is None:
            notes.append(f"{g.label}: no baseline group shares its other keys, so it is not compared")
        out_groups.append(
            {
                "label": g.label,
                "keys": g.keys,
                "n": len(g.runs),
                "seeds": [r.seed for r in g.runs],
                "runs": [str(r.path) for r in g.runs],
                "incomplete": sum(not r.complete for r in g.runs),
                "stats": {name: summary([r.values()[name] for r in g.runs]) for name in names},
                "vs_baseline": compare(g, base, metric) if base is not None and g is not base else None,
                "is_baseline": id(g) in base_ids,
                "baseline": base.label if base is not None else None,
            }
        )
        vs = out_groups[-1]["vs_baseline"]
        if vs is not None and (note := fallback_note(g, base, vs)):
            notes.append(note)
    return {
        "kind": "train",
        "metric": metric,
        "group_keys": keys,
        "baseline": "; ".join(g.label for g in groups if id(g) in base_ids) or None,
        "groups": out_groups,
        "notes": notes,
    }


def fallback_note(group: Group, baseline: Group, vs: dict[str, Any]) -> str | None:
    """One line when a comparison is weaker than the paired test a seed sweep intends: Welch's test because the
    seeds differ, or no test at all (fewer than 2 runs a side); None when paired (or no figure to compare)."""
    if vs["diff"] is None:
        return None
    seeds = f"seeds {_seed_list(group, vs['metric'])} vs {_seed_list(baseline, vs['metric'])}"
    if vs["t"] is None and vs["df"] is None:
        return f"{group.label} vs {baseline.label}: no t-test ({seeds}; needs 2 runs a side)"
    if vs["test"] == "welch":
        why = "paired needs the same seeds, each once"
        return f"{group.label} vs {baseline.label}: Welch's t-test instead of paired ({seeds}; {why})"
    return None


def _seed_list(group: Group, metric: str) -> str:
    seeds = [r.seed for r in group.runs if r.values().get(metric) is not None]
    return "[" + ", ".join(map(str, seeds)) + "]"


# ------------------------------------------------------------------------------------------------ rendering
def _ms(stat: dict[str, Any] | None, digits: int = 2) -> str:
    if stat is None:
        return DASH
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat["std"] is not None else "")


def _params(stat: dict[str, Any] | None) -> str:
    if stat is None:
        return DASH
    return f"{stat['mean']:,.0f}" + (f" ± {stat['std']:,.0f}" if stat["std"] else "")


def _delta(vs: dict[str, Any] | None, is_baseline: bool) -> str:
    if is_baseline:
        return "baseline"
    if vs is None or vs["diff"] is None:
        return DASH
    text = f"{vs['diff']:+.2f}"
    if vs["t"] is None:
        return f"{text} ({vs['test']}, n < 2 or no variance)"
    return f"{text} ({vs['test']} t={vs['t']:.2f}, df={vs['df']:.1f}, p={vs['p']:.3g})"


def train_markdown(report: dict[str, Any]) -> str:
    """The Markdown table (one row per group) and notes on incomplete runs."""
    m = "mAP" if "final_mAP" in report["groups"][0]["stats"] else "top1"
    head = ["group", "n", f"final {m}", f"best {m}", f"EMA {m}", "params", "train img/s"]
    if report["baseline"]:
        head.append(f"Δ {report['metric']} vs baseline")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for g in report["groups"]:
        s = g["stats"]
        n = f"{g['n']}" + (f" ({g['incomplete']} incomplete†)" if g["incomplete"] else "")
        row = [g["label"], n, _ms(s[f"final_{m}"]), _ms(s[f"best_{m}"]), _ms(s[f"final_ema_{m}"])]
        row += [_params(s["params"]), _ms(s["train_img_per_s"], 0)]
        if report["baseline"]:
            row.append(_delta(g["vs_baseline"], g["is_baseline"]))
        lines.append("| " + " | ".join(row) + " |")
    total = sum(g["n"] for g in report["groups"])
    incomplete = sum(g["incomplete"] for g in report["groups"])
    lines += ["", f"- {total} run(s) in {len(report['groups'])} group(s); mean ± sample std (ddof=1) over seeds"]
    if incomplete:
        lines.append(f"- † {incomplete} run(s) stopped before their last epoch (trainer.epochs): last epoch's figures")
    lines += [f"- note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines) + "\n"


def train_csv(report: dict[str, Any]) -> str:
    """One row per group: its label and keys, n, then mean/std/n of every figure and the baseline comparison."""
    names = list(report["groups"][0]["stats"])
    head = ["label", *report["group_keys"], "n", "seeds", "incomplete"]
    head += [f"{name}_{part}" for name in names for part in ("mean", "std", "n")]
    head += [f"vs_baseline_{k}" for k in ("metric", "diff", "test", "t", "df", "p")]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(head)
    for g in report["groups"]:
        row: list[Any] = [g["label"], *(fmt_value(g["keys"][k]) for k in report["group_keys"])]
        row += [g["n"], " ".join(map(str, g["seeds"])), g["incomplete"]]
        for name in names:
            stat = g["stats"][name] or {}
            row += [stat.get("mean", ""), stat.get("std", ""), stat.get("n", "")]
        vs = g["vs_baseline"] or {}
        row += [vs.get(k, "") for k in ("metric", "diff", "test", "t", "df", "p")]
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------- --plot KEY
def plot_series(report: dict[str, Any], key: str) -> dict[str, Any]:
    """``--metric`` against config ``key``: one line per setting of the other differing keys (x sorted when
    numeric), and a flat reference for each group where ``key`` is absent or null (e.g. the dense baseline)."""
    if key not in report["group_keys"]:
        allowed = ", ".join(report["group_keys"]) or "(none: all runs share one config)"
        raise AnalysisError(f"--plot {key!r} does not differ between the runs; allowed: {allowed}")
    metric = report["metric"]
    lines: dict[str, list[tuple[Any, float, float]]] = {}
    refs: list[tuple[str, str, float, float]] = []  # label, the series it belongs to (same other keys), mean, std
    values = [g["keys"][key] for g in report["groups"] if g["keys"][key] is not None]
    numeric_key = any(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    for g in report["groups"]:
        stat = g["stats"][metric]
        if stat is None:
            continue
        point = (stat["mean"], stat["std"] or 0.0)
        rest = ", ".join(f"{k}={fmt_value(v)}" for k, v in g["keys"].items() if k != key) or metric
        value = g["keys"][key]
        if value is None:
            refs.append((f"{rest} ({key} unset)", rest, *point))
        elif isinstance(value, str) and numeric_key:  # e.g. dilated_kernel_size=dense among sizes
            refs.append((f"{rest} ({key}={value})" if rest != metric else f"{key}={value}", rest, *point))
        else:
            lines.setdefault(rest, []).append((value, *point))
    xs = [x for pts in lines.values() for x, _, _ in pts]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    order = sorted(set(xs)) if numeric else list(dict.fromkeys(map(fmt_value, xs)))
    series = []
    for label, pts in lines.items():
        pts = sorted(pts, key=lambda p: p[0]) if numeric else sorted(pts, key=lambda p: order.index(fmt_value(p[0])))
        x = [p[0] for p in pts] if numeric else [order.index(fmt_value(p[0])) for p in pts]
        series.append({"label": label, "x": x, "mean": [p[1] for p in pts], "std": [p[2] for p in pts]})
    return {
        "key": key,
        "metric": metric,
        "numeric": numeric,
        "ticks": None if numeric else order,
        "series": series,
        "references": [{"label": lbl, "series": rest, "mean": m, "std": s} for lbl, rest, m, s in refs],
    }


# ------------------------------------------------------------------------------------------------------ entry
def build(sources: Sequence[str], metric: str | None = None, baseline: str | None = None) -> dict[str, Any]:
    """The report dict for ``sources`` (trainer runs or eval.py results), with ``notes`` on what was skipped."""
    from dcls_vision.analysis import runs as found_runs

    found = found_runs.discover(list(sources))
    if found.evals:
        if baseline or metric:
            flag = "--baseline" if baseline else "--metric"
            raise AnalysisError(f"{flag} applies to trainer runs; the sources are eval.py results")
        return eval_report([(p, found_runs.load_eval(p)) for p in found.evals])
    loaded = [(p, found_runs.load_run(p)) for p in found.runs]
    pending = found.pending + [p for p, r in loaded if r is None]
    runs = [r for _, r in loaded if r is not None]
    if not runs:
        raise AnalysisError(f"no run has finished an epoch yet: {', '.join(map(str, pending[:3]))}")
    report = train_report(runs, metric, baseline)
    if pending:
        report["pending"] = [str(p) for p in pending]  # run dirs without a finished epoch (not counted)
    return report


def render(report: dict[str, Any]) -> tuple[str, str]:
    """(Markdown, CSV) of a report of either kind."""
    if report["kind"] == "eval":
        return eval_markdown(report), eval_csv(report)
    md = train_markdown(report)
    if report.get("pending"):
        md += (
            f"- {len(report['pending'])} run dir(s) without a finished epoch, not counted: "
            + ", ".join(report["pending"])
            + "\n"
        )
    return md, train_csv(report)


def write(report: dict[str, Any], out: Path, plot_key: str | None = None) -> dict[str, Path]:
    """report.md / .csv / .json (and report_<KEY>.png) in ``out``, each replaced atomically."""
    from dcls_vision.analysis.cli import dumps
    from dcls_vision.utils.io import atomic_write_bytes, atomic_write_text

    md, table = render(report)
    paths = {"md": out / "report.md", "csv": out / "report.csv", "json": out / "report.json"}
    if plot_key is not None:
        if report["kind"] != "train":
            raise AnalysisError(f"--plot {plot_key!r} applies to trainer runs; the sources are eval.py results")
        from dcls_vision.analysis.plots import metric_vs_key

        paths["png"] = atomic_write_bytes(out / f"report_{plot_key}.png", metric_vs_key(plot_series(report, plot_key)))
    atomic_write_text(paths["md"], md)
    atomic_write_text(paths["csv"], table)
    atomic_write_text(paths["json"], dumps(report) + "\n")
    return paths
