"""Reports: the Table 2.5 row (Markdown), the full result (JSON) and one CSV row per evaluated split."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from dcls_vision.utils.io import atomic_write_text

from .benchmarks import BENCHMARKS, SEVERITIES

CSV_FIELDS = ("benchmark", "corruption", "severity", "top1", "top5", "error", "samples", "skipped", "path")
DASH = "–"


def _fmt(value: float | None, partial: bool = False) -> str:
    return DASH if value is None else f"{value:.2f}" + ("*" if partial else "")


def table_values(result: dict[str, Any]) -> dict[str, float | None]:
    """Table 2.5 cells by benchmark key: accuracy (%) for val/A/R/Sketch, mean error (%) for C and C-bar."""
    out: dict[str, float | None] = {}
    for key in BENCHMARKS:
        bench = result["benchmarks"].get(key) or {}
        if bench.get("corrupted"):
            out[key] = (bench.get("summary") or {}).get("mean_error")
        else:
            out[key] = bench.get("top1")
    return out


def render_markdown(result: dict[str, Any]) -> str:
    """The Table 2.5 row plus notes, then per-corruption x severity tables for C and C-bar."""
    values = table_values(result)
    cols = [b.column for b in BENCHMARKS.values()]
    lines = ["| Model | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    cells, notes, not_run = [], [], []
    for key, bench in BENCHMARKS.items():
        entry = result["benchmarks"].get(key)
        partial = bool(entry and entry.get("corrupted") and entry.get("summary") and not entry["summary"]["complete"])
        cells.append(_fmt(values[key], partial))
        if entry is None:
            continue
        extra = (entry.get("summary") or {}).get("extra") or []
        if extra:
            notes.append(
                f"{bench.title} extra corruptions ({', '.join(extra)}), not in {bench.column}: mean error "
                f"{entry['summary']['extra_mean_error']:.2f}"
            )
        unusable = entry.get("unusable") or []
        if unusable:
            notes.append(
                f"{bench.title}: {len(unusable)} unusable split(s) skipped: "
                + "; ".join(unusable[:3])
                + (f"; and {len(unusable) - 3} more" if len(unusable) > 3 else "")
            )
        notes += entry.get("warnings") or []
        if values[key] is None and not entry.get("splits"):
            not_run.append(f"{bench.title} ({entry.get('message') or 'not evaluated'})")
        elif partial and values[key] is not None:
            s = entry["summary"]
            notes.append(
                f"\\* {bench.title}: partial, {s['corruptions_counted']} of {s['corruptions_expected']} "
                f"corruptions, {len(entry['splits'])} split(s) evaluated"
            )
    lines.append(f"| {result['name']} | " + " | ".join(cells) + " |")
    lines.append("")
    c = result["benchmarks"].get("c") or {}
    if (c.get("summary") or {}).get("mce") is not None:
        tag = "" if c["summary"]["complete"] else " (partial)"
        notes.append(
            f"ImageNet-C mCE (AlexNet-normalised): {c['summary']['mce']:.2f}{tag}; C↓ is the unnormalised "
            f"mean top-1 error over corruptions and severities, as in the thesis"
        )
    if result.get("relative_mce") is not None:
        notes.append(
            f"ImageNet-C relative mCE (AlexNet-normalised error increase over clean): {result['relative_mce']:.2f}"
        )
    if not_run:
        notes.append(f"{DASH} not run: " + "; ".join(not_run))
    if result.get("skipped_images"):
        notes.append(f"unreadable images skipped: {result['skipped_images']}")
    if result.get("complete") is False:
        notes.insert(0, "in progress: the benchmarks and splits finished so far (re-run the same command to resume)")
    lines += [f"- {n}" for n in notes]
    for key in ("c", "cbar"):
        entry = result["benchmarks"].get(key)
        if entry and entry.get("splits"):
            lines += ["", *_corruption_table(BENCHMARKS[key].title, entry)]
    return "\n".join(lines).rstrip() + "\n"


def _corruption_table(title: str, entry: dict[str, Any]) -> list[str]:
    errors: dict[str, dict[int, float]] = {}
    for s in entry["splits"]:
        errors.setdefault(s["corruption"], {})[s["severity"]] = s["error"]
    per = entry["summary"]["per_corruption"]
    with_ce = any("ce" in row for row in per.values())
    head = ["corruption", *map(str, SEVERITIES), "mean"] + (["CE"] if with_ce else [])
    lines = [
        f"{title}: top-1 error (%) per severity",
        "",
        "| " + " | ".join(head) + " |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    extra = set(entry["summary"].get("extra") or [])
    for name, by_sev in errors.items():
        label = name + (" (extra)" if name in extra else "")
        row = [label] + [_fmt(by_sev.get(s)) for s in SEVERITIES] + [_fmt(per[name]["mean_error"])]
        if with_ce:
            row.append(_fmt(per[name].get("ce")))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def csv_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, entry in result["benchmarks"].items():
        for split in entry.get("splits") or ([entry] if entry.get("top1") is not None else []):
            rows.append(
                {
                    "benchmark": key,
                    "corruption": split.get("corruption", ""),
                    "severity": split.get("severity", ""),
                    "top1": split["top1"],
                    "top5": split["top5"],
                    "error": 100.0 - split["top1"],
                    "samples": split["samples"],
                    "skipped": split["skipped"],
                    "path": split.get("path", ""),
                }
            )
    return rows


def write_reports(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """``results.json``, ``results.csv`` and ``table.md`` in ``out_dir`` (atomically replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(csv_rows(result))
    paths = {"json": out_dir / "results.json", "csv": out_dir / "results.csv", "markdown": out_dir / "table.md"}
    atomic_write_text(paths["json"], json.dumps(result, indent=2) + "\n")
    atomic_write_text(paths["csv"], buf.getvalue())
    atomic_write_text(paths["markdown"], render_markdown(result))
    return paths
