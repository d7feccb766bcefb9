"""Which runs a report puts together: groups of runs that differ only in the seed and in bookkeeping, and the
baseline group each is compared with.

A group is keyed by the config keys whose values differ between the runs, except the keys that cannot change a
result (:data:`EXCLUDED_KEYS`), so a sweep needs no naming convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dcls_vision.analysis.errors import AnalysisError
from dcls_vision.analysis.runs import Run
from dcls_vision.engine.resume_config import BOOKKEEPING_KEYS, BOOKKEEPING_PREFIXES

# Config keys that cannot change a run's result and so never split groups: the seed (the statistic is over it),
# per-run bookkeeping (where the run writes, how it resumes, checkpoints and logs: the keys a resumed run does not
# report as changed either, engine/resume_config.py), where the data lives, and machine settings that change speed
# only (loader processes, torch.compile, cuDNN autotuning, the evaluation batch of a model in eval mode, the device
# the EMA copy lives on, the collective timeout). Two machines running one sweep differ in these; were they grouping
# keys, each machine's runs would be a group of their own and the paired test against the baseline would silently
# compare nothing. docs/training.md "Experiment reports" lists the same keys.
EXCLUDED_KEYS = (
    "trainer.seed",
    *BOOKKEEPING_KEYS,
    "trainer.compile",
    "trainer.cudnn_benchmark",
    "trainer.device",
    "trainer.dist_timeout_s",
    "trainer.val_batch_size",
    "trainer.ema.device",
    "data.root",
    "data.source",
    "data.num_workers",
)
EXCLUDED_PREFIXES = BOOKKEEPING_PREFIXES  # W&B ids/names/modes, log intervals, progress bars
FIRST_KEYS = ("experiment_name",)  # shown first in labels when they differ


def is_excluded(key: str) -> bool:
    return key in EXCLUDED_KEYS or key.startswith(EXCLUDED_PREFIXES)


def fmt_value(value: Any) -> str:
    """A config value as in a ``k=v`` label (YAML's words for None and booleans)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ",".join(fmt_value(v) for v in value) + "]"
    return str(value)


def differing_keys(runs: Sequence[Run]) -> list[str]:
    """Dotted config keys whose values are not the same in every run, bookkeeping excluded.

    Absent counts as null inside free-form argument dicts (``model.kwargs.dilated_kernel_size`` missing = the net
    has no such argument: a setting of its own). A schema key absent from some runs was added to the schema after
    they ran (with the behaviour they had as its default), so it must not split a sweep that an upgrade interrupted.
    """
    order: dict[str, None] = {}
    for run in runs:
        order.update(dict.fromkeys(run.config))

    def differs(key: str) -> bool:
        free_form = ".kwargs." in f".{key}"
        values = {fmt_value(r.config.get(key)) for r in runs if free_form or key in r.config}
        return len(values) > 1

    keys = [k for k in order if not is_excluded(k) and differs(k)]
    return sorted(keys, key=lambda k: (k not in FIRST_KEYS, FIRST_KEYS.index(k) if k in FIRST_KEYS else 0))


@dataclass
class Group:
    keys: dict[str, Any]
    runs: list[Run]

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={fmt_value(v)}" for k, v in self.keys.items()) or "all runs"


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Runs with equal values of ``keys``, in the order their first run appears."""
    groups: dict[tuple[str, ...], Group] = {}
    for run in runs:
        values = {k: run.config.get(k) for k in keys}
        ident = tuple(fmt_value(v) for v in values.values())
        groups.setdefault(ident, Group(values, [])).runs.append(run)
    return list(groups.values())


def parse_baseline(spec: str, keys: Sequence[str]) -> dict[str, str]:
    """``K=V[,K=V]`` -> {K: V}; K must be one of the keys that differ between runs."""
    out = {}
    for part in spec.split(","):
        k, sep, v = part.partition("=")
        if not sep or not k.strip():
            raise AnalysisError(f"--baseline {spec!r}: {part!r} is not K=V; allowed: K=V[,K=V]")
        if k.strip() not in keys:
            raise AnalysisError(
                f"--baseline key {k.strip()!r} does not differ between the runs; allowed: {', '.join(keys) or '(none)'}"
            )
        out[k.strip()] = v.strip()
    return out


def select_baselines(groups: Sequence[Group], spec: str, keys: Sequence[str]) -> dict[int, Group]:
    """Each group's baseline: the group matching ``spec`` whose other keys (those not in ``spec``) are the same.

    One matching group is the baseline of every group; several (e.g. the dense net in each training regime of a
    sweep) each serve the groups that share their other keys. No match is a one-line error naming the groups.
    """
    wanted = parse_baseline(spec, keys)
    hits = [g for g in groups if all(fmt_value(g.keys[k]) == v for k, v in wanted.items())]
    if not hits:
        shown = "; ".join(g.label for g in groups)
        raise AnalysisError(f"--baseline {spec!r} matches no group; allowed: one of the groups: {shown}")
    if len(hits) == 1:
        return {id(g): hits[0] for g in groups}
    rest = [k for k in keys if k not in wanted]
    out = {}
    for g in groups:
        same = [b for b in hits if all(fmt_value(b.keys[k]) == fmt_value(g.keys[k]) for k in rest)]
        if len(same) == 1:
            out[id(g)] = same[0]
    return out
