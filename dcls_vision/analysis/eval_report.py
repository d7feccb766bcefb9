"""The report of eval.py results: one Table 2.5 row per ``results.json`` (accuracy, C/C-bar error, mCE, relative
mCE), as Markdown and CSV; the figures are read from the file, never recomputed."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

DASH = "–"

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
