"""The documentation's figure markers and commands: ``<!--fig:NAME-->62.40<!--/fig-->`` pairs and ```bash blocks in
README.md and docs/*.md, read and rewritten by name.

Kept apart from the figure extraction (:mod:`dcls_vision.analysis.readme_figures`) because the pages' own tests (links,
anchors, markers, set-up commands) need only this text handling, never the runs behind the figures.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from dcls_vision.utils.errors import UserError
from dcls_vision.utils.io import atomic_write_text

MARKER_RE = re.compile(r"<!--fig:([A-Za-z0-9_.\-]+)-->(.*?)<!--/fig-->")
FENCE_RE = re.compile(r"^\s*```")
CODE_SPAN_RE = re.compile(r"(`[^`\n]*`)")


class FigureError(UserError):
    """A README marker without an entry value, an entry value without a marker, or an unknown entry name."""


def _outside_fences(text: str) -> list[tuple[int, str]]:
    """(line number, line) of every line outside ``` code blocks: markers there would be printed literally."""
    lines, inside = [], False
    for i, line in enumerate(text.splitlines(), 1):
        if FENCE_RE.match(line):
            inside = not inside
            continue
        if not inside:
            lines.append((i, line))
    return lines


def _without_code_spans(line: str) -> str:
    """``line`` without its inline `code` spans: a marker written there (e.g. to document the syntax) is shown."""
    return CODE_SPAN_RE.sub("", line)


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the page's prose: outside ``` blocks, inline `code` removed. Markers and links count
    only there; in code they are shown as written."""
    return [(i, _without_code_spans(line)) for i, line in _outside_fences(text)]


def read_markers(text: str) -> dict[str, str]:
    """Marker name -> the README's text between the markers; a name used twice or a marker in code is an error."""
    found: dict[str, str] = {}
    for _, line in prose_lines(text):
        for m in MARKER_RE.finditer(line):
            if m.group(1) in found:
                raise FigureError(f"README marker fig:{m.group(1)} appears twice; allowed: each name once")
            found[m.group(1)] = m.group(2)
    in_code = set(MARKER_RE.findall("\n".join(_without_code_spans(ln) for ln in text.splitlines()))) - set(
        found.items()
    )
    if in_code:
        name = sorted(in_code)[0][0]
        raise FigureError(f"README marker fig:{name} is inside a ``` code block; allowed: markers in prose/tables")
    return found


def one_line(command: str) -> str:
    """A shell command as one line: backslash continuations joined, whitespace collapsed, a trailing comment cut."""
    line = " ".join(command.replace("\\\n", " ").split())
    return re.sub(r"\s+#.*$", "", line)


def readme_commands(text: str) -> set[str]:
    """Every command of the README's ```bash blocks (continuations joined), as :func:`one_line` writes it."""
    return {one_line(c) for c in _bash_lines(text) if c.strip()}


def _bash_lines(text: str) -> list[str]:
    out, block, pending = [], None, ""
    for line in text.splitlines():
        if FENCE_RE.match(line):
            block = line.strip()[3:].strip() if block is None else None
            continue
        if block not in ("bash", "sh", "shell") or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        out.append(pending + line)
        pending = ""
    return out


def write_markers(text: str, values: Mapping[str, str]) -> str:
    """``text`` with the content of each marker named in ``values`` replaced (other text byte-identical)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        return f"<!--fig:{name}-->{values[name]}<!--/fig-->" if name in values else m.group(0)

    parts = CODE_SPAN_RE.split(text)  # odd items are the `code` spans, left as they are
    return "".join(p if i % 2 else MARKER_RE.sub(sub, p) for i, p in enumerate(parts))


def doc_pages(root: Path) -> list[Path]:
    """README.md and docs/*.md under ``root``: the pages that may quote a figure or print a documented command."""
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    return [p for p in pages if p.is_file()]


def read_doc_markers(pages: Iterable[Path]) -> dict[str, tuple[Path, str]]:
    """Marker name -> (page, marked text) over all ``pages``; a name on two pages is an error naming both."""
    found: dict[str, tuple[Path, str]] = {}
    for page in pages:
        try:
            markers = read_markers(page.read_text(encoding="utf-8"))
        except FigureError as err:
            raise FigureError(f"{page}: {err}") from None
        for name, text in markers.items():
            if name in found:
                raise FigureError(f"marker fig:{name} appears in {found[name][0]} and {page}; allowed: each name once")
            found[name] = (page, text)
    return found


def doc_commands(pages: Iterable[Path]) -> set[str]:
    """Every command of the ```bash blocks of ``pages`` (see :func:`readme_commands`)."""
    return {cmd for page in pages for cmd in readme_commands(page.read_text(encoding="utf-8"))}


def write_doc_markers(where: Mapping[str, Path], values: Mapping[str, str]) -> list[Path]:
    """Rewrite each marker of ``values`` in the page ``where`` names for it (atomically); returns the pages written."""
    by_page: dict[Path, dict[str, str]] = {}
    for name, text in values.items():
        by_page.setdefault(where[name], {})[name] = text
    for page, page_values in by_page.items():
        atomic_write_text(page, write_markers(page.read_text(encoding="utf-8"), page_values))
    return sorted(by_page)
