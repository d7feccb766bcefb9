"""Finding and reading experiment outputs for reports: trainer run dirs and eval.py result dirs.

A trainer run dir holds ``config.yaml`` (the full resolved config) and ``metrics.jsonl`` (one record per epoch);
an eval.py output dir holds ``results.json``. A source may be one of those, a glob, or a directory above them
(a Hydra multirun dir ``<sweep>/<num>_<experiment>``, a hydra-submitit sweep with its ``.submitit/`` bookkeeping,
``outputs/<experiment>/<timestamp>``): directories are searched :data:`MAX_DEPTH` levels down.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dcls_vision.analysis.errors import AnalysisError

CONFIG, METRICS, RESULTS = "config.yaml", "metrics.jsonl", "results.json"
MAX_DEPTH = 2  # <sweep>/<num>_<name>, or outputs/<experiment>/<timestamp>
# directories that hold no runs: Hydra/submitit bookkeeping, W&B's local files
SKIPPED_DIRS = frozenset({".hydra", ".submitit", "wandb"})


@dataclass
class Run:
    """One trainer run: its flattened config and its per-epoch records (last record per epoch, epoch order)."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]

    @property
    def seed(self) -> Any:
        return self.config.get("trainer.seed")

    @property
    def multilabel(self) -> bool:
        return "val_mAP" in self.records[-1]

    @property
    def metric(self) -> str:
        """``top1``, or ``mAP`` for multi-label runs (the score the trainer's best.pth follows)."""
        return "mAP" if self.multilabel else "top1"

    @property
    def complete(self) -> bool:
        """The last logged epoch is the last configured one (0-based ``epoch`` in the records)."""
        epochs = self.config.get("trainer.epochs")
        return epochs is None or int(self.records[-1]["epoch"]) >= int(epochs) - 1

    def values(self) -> dict[str, float | None]:
        """The figures a report gathers: final/best (EMA) score, params, last epoch's throughput."""
        last, m = self.records[-1], self.metric
        return {
            f"final_{m}": last.get(f"val_{m}"),
            f"best_{m}": last.get(f"best_{m}"),
            f"final_ema_{m}": last.get(f"ema_{m}"),
            f"best_ema_{m}": last.get(f"best_ema_{m}"),
            "params": last.get("params"),  # absent in runs written before the trainer logged it
            "train_img_per_s": last.get("train_img_per_s"),
        }


@dataclass
class Found:
    """What the sources hold: trainer runs, eval.py result dirs, and run dirs with no finished epoch yet."""

    runs: list[Path] = field(default_factory=list)
    evals: list[Path] = field(default_factory=list)
    pending: list[Path] = field(default_factory=list)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}``; lists become tuples (hashable), empty mappings vanish."""
    if not isinstance(tree, dict):
        return {prefix: tuple(tree) if isinstance(tree, list) else tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def _natural(path: Path) -> list[Any]:
    """Sort key putting ``2_x`` before ``10_x`` (Hydra job numbers)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _collect(path: Path, depth: int, found: Found) -> None:
    if (path / CONFIG).is_file() and (path / METRICS).is_file() and (path / METRICS).stat().st_size:
        found.runs.append(path)
    elif (path / RESULTS).is_file():
        found.evals.append(path)
    elif (path / CONFIG).is_file():
        found.pending.append(path)  # a run that has not finished its first epoch yet
    elif depth < MAX_DEPTH:
        for child in sorted((p for p in path.iterdir() if p.is_dir()), key=_natural):
            if child.name not in SKIPPED_DIRS and not child.name.startswith("."):
                _collect(child, depth + 1, found)


def expand(sources: list[str]) -> list[Path]:
    """Existing paths as given, globs expanded to the dirs they match (sorted); a file given by name
    (config.yaml, results.json ...) means its dir."""
    paths: list[Path] = []
    for source in sources:
        if Path(source).exists():
            matches = [source]
        elif glob.has_magic(source):
            matches = sorted(m for m in glob.glob(source) if Path(m).is_dir())  # not a sweep's multirun.yaml
            if not matches:
                raise AnalysisError(f"SOURCE {source!r} matches no path; allowed: run dirs, globs, sweep dirs")
        else:
            raise AnalysisError(f"SOURCE {source!r} does not exist; allowed: run dirs, globs, sweep dirs")
        paths += [Path(m).resolve() if Path(m).is_dir() else Path(m).resolve().parent for m in matches]
    return list(dict.fromkeys(paths))


def discover(sources: list[str]) -> Found:
    """Run dirs and eval.py dirs under ``sources``; one line error when there are none, or both kinds."""
    found = Found()
    for path in expand(sources):
        before = len(found.runs) + len(found.evals)
        _collect(path, 0, found)
        if len(found.runs) + len(found.evals) == before and not any(p.is_relative_to(path) for p in found.pending):
            raise AnalysisError(
                f"SOURCE {str(path)!r} holds no trainer run ({CONFIG} + {METRICS}) or eval.py result ({RESULTS}) "
                f"within {MAX_DEPTH} levels"
            )
    if found.runs and found.evals:
        raise AnalysisError(
            f"the sources mix trainer runs ({found.runs[0]}) and eval.py results ({found.evals[0]}); "
            "allowed: one kind per report"
        )
    if not found.runs and not found.evals:
        raise AnalysisError(f"no run has finished an epoch yet: {', '.join(map(str, found.pending[:3]))}")
    found.runs, found.evals = list(dict.fromkeys(found.runs)), list(dict.fromkeys(found.evals))
    return found


def read_records(path: Path) -> list[dict[str, Any]]:
    """The epoch records of ``metrics.jsonl``: a torn last line skipped, a re-logged epoch's last record kept."""
    by_epoch: dict[int, dict[str, Any]] = {}
    for line in (path / METRICS).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "epoch" in record:
            by_epoch[int(record["epoch"])] = record
    return [by_epoch[e] for e in sorted(by_epoch)]


def load_run(path: Path) -> Run | None:
    """The run at ``path``, or None when its metrics.jsonl holds no epoch record yet."""
    from omegaconf import OmegaConf

    records = read_records(path)
    if not records:
        return None
    try:
        config = OmegaConf.to_container(OmegaConf.load(path / CONFIG), resolve=False)
    except Exception as err:  # a YAML syntax error: the user's file
        raise AnalysisError(f"{path / CONFIG}: not a readable config ({type(err).__name__}); allowed: YAML") from None
    return Run(path, flatten(config), records)


def load_eval(path: Path) -> dict[str, Any]:
    """eval.py's ``results.json`` at ``path``."""
    try:
        result = json.loads((path / RESULTS).read_text())
    except json.JSONDecodeError as err:
        raise AnalysisError(f"{path / RESULTS}: not JSON ({err.msg}); allowed: an eval.py results.json") from None
    if not isinstance(result, dict) or "benchmarks" not in result:
        raise AnalysisError(f"{path / RESULTS}: no 'benchmarks' entry; allowed: an eval.py results.json")
    return result
