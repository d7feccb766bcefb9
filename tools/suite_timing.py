"""How long the test suite takes, as JSON: the total and the slowest tests, with the machine it ran on.

The suite's time is tracked with this script, never with timed tests (a test that asserts on wall time fails on a
busy machine and passes on a fast one for the wrong reasons). It runs pytest with a JUnit XML report and reads each
test's time (setup + call + teardown) from it, or reads a report you already have:

    python tools/suite_timing.py                                 # the README's test command, whole suite
    python tools/suite_timing.py --top 10 -- -m 'not slow'        # arguments after -- go to pytest
    python tools/suite_timing.py --junit old-run.xml             # no run: summarise an existing JUnit report

Prints one JSON object (``--out FILE`` also writes it, atomically): ``total_s`` (wall time of the pytest process, or
the report's own time with ``--junit``), ``tests`` / ``passed`` / ``failed`` / ``errors`` / ``skipped``,
``slowest`` (``--top`` N, default 20: test id and seconds), the machine (CPUs, load average before and after,
Python, torch) and the pytest command. The exit code is pytest's (2 for a bad argument or an unreadable report).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from dcls_vision.analysis.cli import make_parser, positive_int
from dcls_vision.utils.errors import UserError, run_cli
from dcls_vision.utils.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def read_junit(path: Path) -> dict[str, Any]:
    """Counts, the report's own total and every test's (id, seconds) from a pytest JUnit XML report."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as err:
        raise UserError(
            f"--junit {path}: not a readable JUnit XML report ({err}); allowed: pytest --junitxml output"
        ) from None
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise UserError(f"--junit {path}: no <testsuite> element; allowed: pytest --junitxml output")
    cases, counts = [], {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    for case in (c for suite in suites for c in suite.iter("testcase")):
        cases.append(
            {
                "test": test_id(case.get("classname", ""), case.get("name", "")),
                "s": round(float(case.get("time") or 0.0), 3),
            }
        )
        outcome = {"failure": "failed", "error": "errors", "skipped": "skipped"}
        kinds = [outcome[child.tag] for child in case if child.tag in outcome]
        counts[kinds[0] if kinds else "passed"] += 1
    report_s = sum(float(suite.get("time") or 0.0) for suite in suites)
    return {"report_s": round(report_s, 3), "tests": len(cases), **counts, "cases": cases}


def test_id(classname: str, name: str) -> str:
    """pytest's node id (``tests/test_x.py::TestY::test_z``) from JUnit's dotted ``classname`` and ``name``."""
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        if (ROOT / Path(*parts[:i])).with_suffix(".py").is_file():
            return "::".join(["/".join(parts[:i]) + ".py", *parts[i:], name])
    return f"{classname}::{name}"


def machine() -> dict[str, Any]:
    """Where the figures were measured: they mean nothing without it."""
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def summarise(junit: dict[str, Any], top: int, total_s: float) -> dict[str, Any]:
    """The JSON object this tool prints: totals, counts and the ``top`` slowest tests (slowest first)."""
    slowest = sorted(junit["cases"], key=lambda c: (-c["s"], c["test"]))[:top]
    counts = {k: junit[k] for k in ("tests", "passed", "failed", "errors", "skipped")}
    return {"total_s": round(total_s, 1), "report_s": junit["report_s"], **counts, "slowest": slowest}


def run_suite(pytest_args: list[str], junit_path: Path) -> tuple[int, float]:
    """Run pytest from the repository root with a JUnit report; returns (exit code, wall seconds)."""
    cmd = [sys.executable, "-m", "pytest", "-q", f"--junitxml={junit_path}", *pytest_args]
    start = time.monotonic()
    rc = subprocess.run(cmd, cwd=ROOT).returncode
    return rc, time.monotonic() - start


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser("suite_timing.py", __doc__)
    parser.add_argument(
        "--top", type=positive_int, default=20, help="how many of the slowest tests to list (default 20)"
    )
    parser.add_argument("--junit", type=Path, default=None, help="summarise this JUnit XML report; run nothing")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON to this file (atomically)")
    parser.add_argument("pytest_args", nargs="*", help="arguments for pytest (after --), e.g. -m 'not slow'")
    return parser


def main(args: argparse.Namespace) -> int:
    load_before = os.getloadavg()
    if args.junit is not None:
        if args.pytest_args:
            raise UserError(f"--junit with pytest arguments {args.pytest_args}: allowed: one or the other")
        junit = read_junit(args.junit)
        rc, total_s, command = 0, junit["report_s"], None
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rc, total_s = run_suite(args.pytest_args, Path(tmp) / "junit.xml")
            junit = read_junit(Path(tmp) / "junit.xml")
        command = " ".join(["python -m pytest -q", *args.pytest_args])
    result = summarise(junit, args.top, total_s)
    result.update(
        command=command,
        pytest_exit_code=rc,
        machine=machine(),
        load_before=[round(x, 2) for x in load_before],
        load_after=[round(x, 2) for x in os.getloadavg()],
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    text = json.dumps(result, indent=1)
    if args.out is not None:
        atomic_write_text(args.out, text + "\n")
    print(text)
    return rc


if __name__ == "__main__":
    parser = build_parser()
    sys.exit(run_cli(lambda: main(parser.parse_args()), prog=parser.prog))
