"""README.md and docs/*.md stay navigable and true to what runs: every relative link and ``#anchor`` resolves, every
figure marker belongs to a ``tools/readme_figures.py`` entry on whichever page it moved to, the two set-up commands
are in the README verbatim and ``.ci/run`` runs the second one, and the README stays short (one page per topic).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

from dcls_vision.analysis.doc_markers import FENCE_RE, doc_pages, prose_lines, read_doc_markers

ROOT = Path(__file__).resolve().parents[1]
PAGES = doc_pages(ROOT)
SETUP_COMMANDS = (
    "bash tools/install.sh && python train.py experiment=quickstart",
    "bash tools/install.sh --dev && python -m pytest -q",
)
TOPIC_PAGES = (  # issue 32: one page per topic, each linked from the README's table
    "operator",
    "models",
    "training",
    "weights",
    "slurm",
    "downstream",
    "robustness",
    "audio",
    "snn",
    "analysis",
    "benchmarks",
    "tests",
    "design",
)
LINK_RE = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING_RE = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (letters, digits, _ and - kept), spaces -> -."""
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on ``page``; repeated headings get GitHub's -1, -2, ... suffixes."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(page.read_text(encoding="utf-8")):
        m = HEADING_RE.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(page: Path) -> list[str]:
    """``page:line: target (why)`` for every relative link or anchor of ``page`` that does not resolve."""
    problems = []
    for lineno, line in prose_lines(page.read_text(encoding="utf-8")):
        for target in LINK_RE.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ... are not checked offline
                continue
            path_part, _, anchor = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            where = f"{page.relative_to(ROOT)}:{lineno}: {target}"
            if not dest.exists():
                problems.append(
                    f"{where} (no such file: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})"
                )
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{where} (no heading with anchor #{anchor} in {dest.relative_to(ROOT)})")
    return problems


def test_slug_follows_github():
    assert slug("Kernel-size study (thesis Fig. 6.1)") == "kernel-size-study-thesis-fig-61"
    assert slug("1.1 Where the kernel is built") == "11-where-the-kernel-is-built"
    assert slug("Downstream: detection (mmdet) and segmentation (mmseg)") == (
        "downstream-detection-mmdet-and-segmentation-mmseg"
    )
    assert slug("`train.py` and σ") == "trainpy-and-σ"


def test_the_checker_finds_a_broken_link_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Some part\n\ntext\n")
    page = tmp_path / "README.md"
    page.write_text(
        "# R\n\n[ok](docs/a.md#some-part) [self](#r) [web](https://example.org/x)\n"
        "[gone](docs/b.md) [bad](docs/a.md#other-part)\n```\n[in code](nowhere.md)\n```\n`[span](nowhere.md)`\n"
    )
    assert broken_links(page) == [
        "README.md:4: docs/b.md (no such file: docs/b.md)",
        "README.md:4: docs/a.md#other-part (no heading with anchor #other-part in docs/a.md)",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_readme_is_short_and_links_one_page_per_topic():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    linked = {m for _, line in prose_lines(readme) for m in LINK_RE.findall(line)}
    for topic in TOPIC_PAGES:
        page = ROOT / "docs" / f"{topic}.md"
        assert page.is_file(), f"docs/{topic}.md is missing"
        assert f"docs/{topic}.md" in linked, f"the README does not link docs/{topic}.md"


def test_topic_pages_open_with_their_commands():
    """After the title and at most a short paragraph, a topic page shows commands (a code block) before any section."""
    for topic in TOPIC_PAGES:
        if topic == "design":  # the architecture page: read, not run
            continue
        lines = (ROOT / "docs" / f"{topic}.md").read_text(encoding="utf-8").splitlines()
        first_code = next(i for i, line in enumerate(lines) if FENCE_RE.match(line))
        first_section = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
        assert first_code < min(first_section, 8), f"docs/{topic}.md: no commands before line {first_code + 1}"


def test_every_figure_marker_has_its_readme_figures_entry_on_any_page():
    spec = importlib.util.spec_from_file_location("readme_figures_tool", ROOT / "tools" / "readme_figures.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    markers = read_doc_markers(PAGES)
    assert markers, "no figure marker found in README.md or docs/*.md"
    # raises FigureError for a marker without an entry figure, an entry figure without a marker, or an entry command
    # that no page prints verbatim
    assert tool.check_docs(PAGES, list(tool.ENTRIES.values())) == markers
    assert {page.name for page, _ in markers.values()} > {"training.md"}  # figures live on the topic pages


def test_setup_commands_are_verbatim_in_readme_and_ci():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set-up", 1)[1].split("\n## ", 1)[0]
    block = setup.split("```bash\n", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert commands == list(SETUP_COMMANDS)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert [line for line in ci.splitlines() if "pytest" in line] == [SETUP_COMMANDS[1]]
