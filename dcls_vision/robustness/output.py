"""Where one evaluation writes: its output dir (the same on every rank), its log, and its reports after every split.

Before evaluating, rank 0 finds the saved results of the same command there or, with ``resume_search``, in the
newest unfinished run beside it (moving there; see :mod:`.resume`), and every rank gets the same answer. The reports
are rewritten after every split (atomically); a write that fails (a full disk, a read-only filesystem, a quota)
stops every rank with one :class:`~dcls_vision.utils.errors.SaveError` line (exit 4) naming the file, the free
space and what the intact ``results.json`` holds.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from dcls_vision.data.paths import resolve_path
from dcls_vision.engine.distributed import barrier, broadcast_object
from dcls_vision.engine.runlog import RunLogger
from dcls_vision.utils.errors import SaveError

from .report import write_reports
from .resume import changed_fields, read_results, supersede, unfinished_sibling


def _only_hydra_files(folder: Path) -> bool:
    """True when ``folder`` holds nothing but Hydra's ``.hydra/`` and ``*.log`` files (safe to remove)."""
    return all(p.name == ".hydra" or p.suffix == ".log" for p in folder.iterdir())


class EvalOutput:
    """The output dir, log and reports of one evaluation; every rank holds one, rank 0 writes."""

    def __init__(self, requested: Path, rank: int, progress: bool | None) -> None:
        self.rank, self.progress = rank, progress
        self.out_dir = self._agreed_dir(requested)
        self.log = RunLogger(self.out_dir, rank, progress=progress)

    def _agreed_dir(self, requested: Path) -> Path:
        """Rank 0's output dir for all ranks (a ``${now:}`` default may differ by a second between ranks)."""
        requested = resolve_path(str(requested), "output_dir")
        out = Path(broadcast_object(str(requested.resolve()) if self.rank == 0 else None))
        if self.rank != 0 and requested.resolve() != out and requested.is_dir():
            if _only_hydra_files(requested):  # Hydra's, for this rank
                shutil.rmtree(requested, ignore_errors=True)
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        barrier()
        return out

    def _move_to(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.log = RunLogger(self.out_dir, self.rank, progress=self.progress)

    # ---------------------------------------------------------------------------------------------- resume
    def previous(self, key: dict[str, Any], resume_search: Path | None) -> dict[str, Any] | None:
        """Rank 0 picks the saved results to resume (moving ``out_dir`` to an unfinished sibling if it is the same
        command); every rank gets the same answer."""
        decision: tuple[str, dict[str, Any] | None] | None = None
        if self.rank == 0:
            saved = self._find_previous(key, resume_search)  # may move self.out_dir to the run it resumes
            decision = (str(self.out_dir), saved)
        out, saved = broadcast_object(decision)
        if Path(out) != self.out_dir:
            self._move_to(Path(out))
        return saved

    def _find_previous(self, key: dict[str, Any], resume_search: Path | None) -> dict[str, Any] | None:
        saved = read_results(self.out_dir)
        if saved is None and (self.out_dir / "results.json").exists():
            moved = supersede(self.out_dir)
            self.log.info(
                f"{self.out_dir}/results.json is not a resumable eval result (an older version's?); "
                f"moved to {moved}, evaluating afresh"
            )
        if saved is None and resume_search is not None:
            sibling, note = unfinished_sibling(resume_search, self.out_dir, key)
            if note:
                self.log.info(note)
            if sibling is not None:
                fresh = self.out_dir
                self._move_to(sibling)
                if _only_hydra_files(fresh):
                    shutil.rmtree(fresh, ignore_errors=True)
                self.log.info(f"resuming the unfinished evaluation in {self.out_dir} (same command)")
                return read_results(self.out_dir)
            return None
        if saved is None:
            return None
        changed = changed_fields(saved["resume_key"], key)
        if changed:
            moved = supersede(self.out_dir)
            self.log.info(
                f"{self.out_dir}/results.json came from another command (changed: {', '.join(changed)}); "
                f"re-evaluating everything, the old results moved to {moved}"
            )
            return None
        if saved.get("complete"):
            self.log.info(
                f"{self.out_dir}/results.json is a finished run of this command; reporting it again "
                f"without re-evaluating (pass another output_dir to evaluate afresh)"
            )
        return saved

    # ---------------------------------------------------------------------------------------------- reports
    def write(self, result: dict[str, Any]) -> dict[str, Path] | None:
        """Rank 0 writes the reports (collective); a failed write becomes one :class:`SaveError` line on every rank
        (the others would wait in the next collective) saying what the intact results.json holds."""
        paths, message = None, None
        if self.rank == 0:
            try:
                paths = write_reports(result, self.out_dir)
            except SaveError as err:
                message = f"{err}; {self._intact_note()}"
        message = broadcast_object(message)
        if message is not None:
            raise SaveError(message)
        return paths

    def _intact_note(self) -> str:
        saved = read_results(self.out_dir)
        if saved is None:
            return "no results.json was saved yet: free space (or fix the permissions) and rerun the same command"
        entries = (saved.get("benchmarks") or {}).values()
        splits = sum(len(e.get("splits") or []) or int(e.get("top1") is not None) for e in entries)
        return (
            f"{self.out_dir / 'results.json'} is intact with {splits} evaluated split(s): free space (or fix the "
            "permissions) and rerun the same command to resume (saved splits are not re-evaluated)"
        )
