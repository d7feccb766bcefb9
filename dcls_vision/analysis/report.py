"""Experiment reports: runs grouped by the config keys that differ (seed excepted), mean ± std over seeds, the
difference to a baseline group with a paired or Welch t-test, and eval.py results side by side (Table 2.5 rows).

The numbers come from the files the trainer and eval.py write (``metrics.jsonl``, ``config.yaml``,
``results.json``; see :mod:`dcls_vision.analysis.runs`); nothing is rebuilt or re-evaluated.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dcls_vision.analysis.errors import AnalysisError
from dcls_vision.analysis.runs import Run
from dcls_vision.engine.resume_config import BOOKKEEPING_KEYS, BOOKKEEPING_PREFIXES

# Config keys that cannot change a run's result and so never split groups: the seed (the statistic is over it),
# per-run bookkeeping (where the run writes, how it resumes, checkpoints and logs: the keys a resumed run does not
# report as changed either, engine/resume_config.py), where the data lives, and machine settings that change speed
# only (loader processes, torch.compile, cuDNN autotuning, the evaluation batch of a model in eval mode, the device
# the EMA copy lives on, the collective timeout). Two machines running one sweep differ in these; were they grouping
# keys, each machine's runs would be a group of their own and the paired test against the baseline would silently
# compare nothing. The README's "Experiment reports" lists the same keys.
EXCLUDED_KEYS = (
    "trainer.seed",
    *BOOKKEEPING_KEYS,
    "trainer.compile",
    "trainer.cudnn_benchmark",
    "trainer.device",
    "trainer.dist_timeout_s",
    "trainer.val_batch_size",
    "trainer.ema.device",
    "data.root",
    "data.source",
    "data.num_workers",
)
EXCLUDED_PREFIXES = BOOKKEEPING_PREFIXES  # W&B ids/names/modes, log intervals, progress bars
FIRST_KEYS = ("experiment_name",)  # shown first in labels when they differ
DASH = "–"


def is_excluded(key: str) -> bool:
    return key in EXCLUDED_KEYS or key.startswith(EXCLUDED_PREFIXES)


def fmt_value(value: Any) -> str:
    """A config value as in a ``k=v`` label (YAML's words for None and booleans)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(fmt_value(v) for v in value) + "]"
    return str(value)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Dotted config keys whose values are not the same in every run, bookkeeping excluded.

    Absent counts as null inside free-form argument dicts (``model.kwargs.dilated_kernel_size`` missing = the net
    has no such argument: a setting of its own). A schema key absent from some runs was added to the schema after
    they ran (with the behaviour they had as its default), so it must not split a sweep that an upgrade interrupted.
    """
    order: dict[str, None] = {}
    for run in runs:
        order.update(dict.fromkeys(run.config))

    def differs(key: str) -> bool:
        free_form = ".kwargs." in f".{key}"
        values = {fmt_value(r.config.get(key)) for r in runs if free_form or key in r.config}
        return len(values) > 1

    keys = [k for k in order if not is_excluded(k) and differs(k)]
    return sorted(keys, key=lambda k: (k not in FIRST_KEYS, FIRST_KEYS.index(k) if k in FIRST_KEYS else 0))


@dataclass
class Group:
    keys: dict[str, Any]
    runs: list[Run]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in self.keys.items()) or "all runs"


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Runs with equal values of ``keys``, in the order their first run appears."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = {k: run.config.get(k) for k in keys}
        ident = tuple(fmt_value(v) for v in values.values())
        groups.setdefault(ident, Group(values, [])).runs.append(run)
    return list(groups.values())


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


def parse_baseline(spec: str, keys: Sequence[str]) -> dict[str, str]:
    """``K=V[,K=V]`` -> {K: V}; K must be one of the keys that differ between runs."""
    out = {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise AnalysisError(f"--baseline {spec!r}: {part!r} is not K=V; allowed: K=V[,K=V]")
        if k.strip() not in keys:
            raise AnalysisError(
                f"--baseline key {k.strip()!r} does not differ between the runs; allowed: {', '.join(keys) or '(none)'}"
            )
        out[k.strip()] = v.strip()
    return out


def select_baselines(groups: Sequence[Group], spec: str, keys: Sequence[str]) -> dict[int, Group]:
    """Each group's baseline: the group matching ``spec`` whose other keys (those not in ``spec``) are the same.

    One matching group is the baseline of every group; several (e.g. the dense net in each training regime of a
    sweep) each serve the groups that share their other keys. No match is a one-line error naming the groups.
    """
    wanted = parse_baseline(spec, keys)
    hits = [g for g in groups if all(fmt_value(g.keys[k]) == v for k, v in wanted.items())]
    if not hits:
        shown = "; ".join(g.label for g in groups)
        raise AnalysisError(f"--baseline {spec!r} matches no group; allowed: one of the groups: {shown}")
    if len(hits) == 1:
        return {id(g): hits[0] for g in groups}
    rest = [k for k in keys if k not in wanted]
    out = {}
    for g in groups:
        same = [b for b in hits if all(fmt_value(b.keys[k]) == fmt_value(g.keys[k]) for k in rest)]
        if len(same) == 1:
            out[id(g)] = same[0]
    return out


def train_report(runs: Sequence[Run], metric: str | None, baseline: str | None) -> dict[str, Any]:
    """The report.json dict for trainer runs (see the module doc and the README's "Experiment reports")."""
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


# --------------------------------------------------------------------------------------------- eval results
EVAL_COLUMNS = (  # report.json field, results.json table key, Table 2.5 column
    ("clean", "val", "Clean"),
    ("c_error", "c", "C↓"),
    ("cbar_error", "cbar", "C-bar↓"),
    ("a", "a", "A"),
    ("r", "r", "R"),
    ("sketch", "sketch", "SK"),
)


def eval_row(result: dict[str, Any], source: Path) -> dict[str, Any]:
    """One Table 2.5 row from eval.py's results.json (accuracy %, C/C-bar mean error %, mCE, relative mCE)."""
    table = result.get("table") or {}
    c_summary = (result["benchmarks"].get("c") or {}).get("summary") or {}
    row: dict[str, Any] = {"label": str(result.get("name") or source.name), "source": str(source)}
    row.update({field: table.get(key) for field, key, _ in EVAL_COLUMNS})
    row["mCE"] = c_summary.get("mce")
    row["relative_mCE"] = result.get("relative_mce")  # written by eval.py since relative mCE; older: absent
    return row


def eval_report(results: Sequence[tuple[Path, dict[str, Any]]]) -> dict[str, Any]:
    rows = [eval_row(result, path) for path, result in results]
    seen: dict[str, int] = {}
    for row in rows:  # the same model evaluated twice: tell the rows apart by their dirs
        seen[row["label"]] = seen.get(row["label"], 0) + 1
    for row in rows:
        if seen[row["label"]] > 1:
            row["label"] = f"{row['label']} ({Path(row['source']).name})"
    return {"kind": "eval", "rows": rows}


def _num(value: float | None) -> str:
    return DASH if value is None else f"{value:.2f}"


def eval_markdown(report: dict[str, Any]) -> str:
    cols = [c for _, _, c in EVAL_COLUMNS] + ["mCE↓", "rel. mCE↓"]
    lines = ["| Model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    for row in report["rows"]:
        cells = [_num(row[f]) for f, _, _ in EVAL_COLUMNS] + [_num(row["mCE"]), _num(row["relative_mCE"])]
        lines.append(f"| {row['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- Clean/A/R/SK: top-1 accuracy (%); C↓/C-bar↓: mean top-1 error (%) over corruptions and severities; mCE and "
        f"relative mCE: AlexNet-normalised (Hendrycks & Dietterich 2019); {DASH}: not evaluated",
    ]
    return "\n".join(lines) + "\n"


def eval_csv(report: dict[str, Any]) -> str:
    fields = ["label", "source", *(f for f, _, _ in EVAL_COLUMNS), "mCE", "relative_mCE"]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in report["rows"]:
        writer.writerow({k: "" if row[k] is None else row[k] for k in fields})
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
