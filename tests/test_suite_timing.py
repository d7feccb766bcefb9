"""tools/suite_timing.py: the suite's time as JSON (total, counts, the slowest tests) from a real pytest run or from
an existing JUnit report; bad input is one line, exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "suite_timing.py"

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="12.5">
<testcase classname="tests.test_docs" name="test_slug_follows_github" time="0.25"/>
<testcase classname="tests.test_docs" name="test_every_relative_link_and_anchor_resolves[README.md]" time="7.5"/>
<testcase classname="tests.test_docs" name="test_skipped" time="0.001"><skipped message="no CUDA"/></testcase>
<testcase classname="tests.test_docs.TestGroup" name="test_failing" time="3.0"><failure message="x"/></testcase>
</testsuite></testsuites>
"""


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, str(TOOL), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_times_a_real_pytest_run(tmp_path):
    out = tmp_path / "timing.json"
    proc = _run(
        "--out",
        str(out),
        "--",
        "tests/test_docs.py",
        "-k",
        "slug or set_up or setup_commands",
        "-p",
        "no:cacheprovider",
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout[proc.stdout.index("{") :])
    assert json.loads(out.read_text()) == result
    assert (result["tests"], result["passed"], result["failed"], result["skipped"]) == (2, 2, 0, 0)
    assert {c["test"] for c in result["slowest"]} == {
        "tests/test_docs.py::test_slug_follows_github",
        "tests/test_docs.py::test_setup_commands_are_verbatim_in_readme_and_ci",
    }
    assert result["total_s"] >= result["report_s"] >= 0
    assert result["command"].startswith("python -m pytest -q tests/test_docs.py -k")
    assert result["pytest_exit_code"] == 0 and result["machine"]["cpus"] == os.cpu_count()


def test_summarises_an_existing_report_slowest_first(tmp_path):
    report = tmp_path / "junit.xml"
    report.write_text(JUNIT)
    proc = _run("--junit", str(report), "--top", "2")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert (result["tests"], result["passed"], result["failed"], result["skipped"]) == (4, 2, 1, 1)
    assert result["total_s"] == result["report_s"] == 12.5
    assert result["slowest"] == [
        {"test": "tests/test_docs.py::test_every_relative_link_and_anchor_resolves[README.md]", "s": 7.5},
        {"test": "tests/test_docs.py::TestGroup::test_failing", "s": 3.0},
    ]


def test_bad_input_is_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text("not xml")
    for args, needle in (
        (("--junit", str(bad)), f"--junit {bad}: not a readable JUnit XML report"),
        (("--top", "0", "--junit", str(bad)), "argument --top: '0' is invalid; allowed: an integer >= 1"),
        (("--top", "many"), "argument --top: 'many' is invalid; allowed: an integer >= 1"),
    ):
        proc = _run(*args)
        assert proc.returncode == 2
        assert len(proc.stderr.strip().splitlines()) == 1 and needle in proc.stderr, proc.stderr
