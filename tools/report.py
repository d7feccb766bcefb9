"""Experiment reports: trainer runs grouped by the config keys that differ (seed excepted), mean ± std over
seeds and the difference to a baseline group (paired t-test by seed, else Welch); or eval.py results as
Table 2.5 rows side by side. Prints the Markdown table; writes report.md, report.csv, report.json (and
report_<KEY>.png with --plot) into --out.

    python tools/report.py outputs/multirun/2026-12-01/10-00-00 --baseline experiment_name=quickstart_baseline
    python tools/report.py 'outputs/kernel_size_study/*' --plot model.kwargs.dilated_kernel_size
    python tools/report.py outputs/eval/convnext_tiny_dcls outputs/eval/convnext_tiny --out outputs/analysis/report

SOURCE: run dirs (config.yaml + metrics.jsonl), globs, Hydra multirun/sweep dirs (searched 2 levels down), or
eval.py output dirs (results.json).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import make_parser, run_tool


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("report.py", __doc__)
    parser.add_argument("sources", nargs="+", metavar="SOURCE", help="run dirs, globs, sweep dirs or eval.py dirs")
    parser.add_argument("--baseline", default=None, metavar="K=V[,K=V]", help="the group the others are compared with")
    parser.add_argument(
        "--metric", default=None, metavar="NAME", help="figure compared and plotted (default: final_top1 / final_mAP)"
    )
    parser.add_argument("--plot", default=None, metavar="KEY", help="draw --metric against this config key (PNG)")
    parser.add_argument(
        "--out", default=None, metavar="DIR", help="output dir (default: the SOURCE dir if only one, else the cwd)"
    )
    parser.add_argument("--format", default="md", choices=("md", "csv", "json"), help="what to print on stdout")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    from dcls_vision.analysis.cli import dumps
    from dcls_vision.analysis.report import build, render, write

    report = build(args.sources, args.metric, args.baseline)
    dirs = [s for s in args.sources if Path(s).is_dir()]
    out = Path(args.out) if args.out else Path(dirs[0]) if len(args.sources) == 1 and dirs else Path.cwd()
    paths = write(report, out, args.plot)
    md, table = render(report)
    print({"md": md, "csv": table, "json": dumps(report) + "\n"}[args.format], end="", flush=True)
    for note in report.get("notes", []):  # also with --format csv/json, whose stdout has no notes
        print(f"report.py: note: {note}", file=sys.stderr)
    print(f"written: {' '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_tool(run, build_parser(), argv)


if __name__ == "__main__":
    main()
