"""Corruption benchmark summaries: mean error (the thesis' C / C-bar columns) and AlexNet-normalised mCE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .benchmarks import ALEXNET_CLEAN_ERROR, ALEXNET_ERRORS, SEVERITIES


def corruption_summary(
    errors: Mapping[str, Mapping[int, float]], reference: Sequence[str], normalise: bool = False
) -> dict[str, Any]:
    """Summarise top-1 errors (%) per corruption and severity.

    ``mean_error``: mean over the ``reference`` corruptions of their mean error over severities (with all 5
    severities of all corruptions this is the plain mean over every split, as the thesis reports it).
    ``mce`` (``normalise``): mean over corruptions of ``CE_c = 100 * sum_s E_{s,c} / sum_s E^AlexNet_{s,c}`` over
    the severities evaluated. ``complete`` says whether every reference corruption had all 5 severities;
    corruptions outside ``reference`` (ImageNet-C's 4 extra ones) are summarised, averaged apart in
    ``extra_mean_error`` and kept out of both means.
    """
    per: dict[str, dict[str, Any]] = {}
    for name, by_sev in errors.items():
        if not by_sev:
            continue
        row: dict[str, Any] = {"mean_error": sum(by_sev.values()) / len(by_sev), "severities": sorted(by_sev)}
        if normalise and name in ALEXNET_ERRORS:
            alex = sum(100.0 * ALEXNET_ERRORS[name][s - 1] for s in by_sev)
            row["ce"] = 100.0 * sum(by_sev.values()) / alex
        per[name] = row
    counted = [n for n in reference if n in per]
    others = [n for n in per if n not in reference]
    complete = len(counted) == len(reference) and all(per[n]["severities"] == list(SEVERITIES) for n in counted)
    out: dict[str, Any] = {
        "mean_error": sum(per[n]["mean_error"] for n in counted) / len(counted) if counted else None,
        "corruptions_counted": len(counted),
        "corruptions_expected": len(reference),
        "complete": complete,
        "per_corruption": per,
        "extra": others,
        "extra_mean_error": sum(per[n]["mean_error"] for n in others) / len(others) if others else None,
    }
    if normalise:
        ces = [per[n]["ce"] for n in counted if "ce" in per[n]]
        out["mce"] = sum(ces) / len(ces) if ces else None
    return out


def relative_mce(per_corruption: Mapping[str, Mapping[str, Any]], clean_error: float) -> float | None:
    """Relative mCE (%): how much accuracy a model loses under corruption, relative to AlexNet's loss.

    Hendrycks & Dietterich 2019, section 3: ``RelCE_c = 100 * sum_s (E_{s,c} - E_clean) / sum_s (E^AlexNet_{s,c} -
    E^AlexNet_clean)`` over the severities evaluated, relative mCE = mean over the ImageNet-C corruptions with AlexNet
    figures. ``per_corruption`` is :func:`corruption_summary`'s (``mean_error`` and ``severities`` per corruption),
    ``clean_error`` the model's clean top-1 error (%). None when no corruption has AlexNet figures.
    """
    rel = []
    for name, row in per_corruption.items():
        if name not in ALEXNET_ERRORS:
            continue
        sevs = row["severities"]
        model_gap = len(sevs) * (row["mean_error"] - clean_error)
        alex_gap = sum(100.0 * (ALEXNET_ERRORS[name][s - 1] - ALEXNET_CLEAN_ERROR) for s in sevs)
        rel.append(100.0 * model_gap / alex_gap)
    return sum(rel) / len(rel) if rel else None
