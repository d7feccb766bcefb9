"""Rerun the documented examples and print every figure the docs quote beside the fresh one (and the difference).

    python tools/readme_figures.py [--only NAME[,NAME]] [--out DIR] [--write] [--docs DIR] [--reuse DIR] [--check]

Each entry of ENTRIES (dcls_vision/analysis/figure_entries.py) is one documented example: its commands exactly as a
page prints them (paths such as ``outputs/robustness_demo`` are replaced by places under ``--out``/NAME, default
outputs/readme_figures/NAME), the figures it yields and the file and field each is read from. README.md and docs/*.md
(the pages under ``--docs``, default the repository) mark each figure as ``<!--fig:NAME-->62.40<!--/fig-->``
(invisible when rendered), on whichever page discusses it. ``--write`` rewrites the marked values in place, in the
page that holds each (atomically), and copies produced plots to docs/figures/. ``--reuse DIR`` (one entry) skips the
commands that train or evaluate and reads the figures from DIR, e.g. a sweep you already ran; analysis commands
(tools/report.py) still run. ``--list`` prints the entries, their estimated cost and commands without running
anything.
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
from dcls_vision.analysis.figure_entries import ENTRIES
from dcls_vision.analysis.readme_figures import Entry, Value, compare
from dcls_vision.utils.errors import run_cli
from dcls_vision.utils.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
STAMP = ".readme_figures"  # written into every entry dir this tool made, so only those are ever deleted


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
