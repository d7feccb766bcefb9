"""``data.name=spikes``: train/val datasets of spiking audio for the SNN-delays recipes (thesis ch. 4).

``data.format``: ``shd`` / ``ssc`` (the published HDF5 files in data.root, :mod:`.spikes`), ``gsc`` (Speech
Commands, :mod:`.gsc`). ``data.embedded=true`` (format shd) generates the spiking-digits set into data.root first
(:mod:`.spike_synth`). Every sample is ``(x, y)``: x float32 (T, in_chans), time-major, T the same for every sample
of a dataset (collated by default); y an int class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset, Subset

from .gsc import GSC_MEL, SpeechCommandsMel
from .gsc import WORDS as GSC_WORDS
from .paths import resolve_path
from .spikes import CLASSES, N_UNITS, SpikeDataError, open_splits
from .subset import stratified_indices

FORMATS = ("shd", "ssc", "gsc")


def _subset(ds: Any, n: int | None, key: str) -> Dataset:
    """A class-stratified deterministic subset (data.train_subset / val_subset), keeping ``targets``."""
    if n is None:
        return ds
    indices = stratified_indices(ds.targets, n, name=f"data.{key}")
    sub = Subset(ds, indices)
    sub.targets = [ds.targets[i] for i in indices]  # type: ignore[attr-defined]
    return sub


def _datasets(cfg: Mapping[str, Any]) -> tuple[Any, Any, int, int]:
    """(train, val, classes, channels) for data.format, before subsets."""
    fmt = cfg["format"]
    root = resolve_path(cfg["root"], "data.root")
    splits = (str(cfg["train_split"]), str(cfg["val_split"]))
    if fmt == "gsc":
        train, val = (SpeechCommandsMel(root, s) for s in splits)
        return train, val, len(GSC_WORDS), GSC_MEL.n_mels
    if fmt not in ("shd", "ssc"):
        raise SpikeDataError(f"data.format={fmt!r} is not supported; allowed: {', '.join(FORMATS)}")
    if cfg["embedded"]:
        if fmt != "shd":
            raise SpikeDataError(f"data.embedded=true with data.format={fmt}; allowed: the embedded set is format shd")
        from .spike_synth import ensure_spiking_digits  # here: `python -m ...spike_synth` stays warning-free

        ensure_spiking_digits(root)
    group, steps = int(cfg["channel_group"]), cfg["num_steps"]
    train, val = open_splits(root, fmt, splits, float(cfg["dt_ms"]), group, None if steps is None else int(steps))
    return train, val, CLASSES[fmt], N_UNITS // group


def build_spikes(cfg: Mapping[str, Any]) -> tuple[Dataset, Dataset, int]:
    """(train, val, classes) for ``data.name=spikes``; data.num_classes and data.in_chans are checked against it."""
    train, val, classes, channels = _datasets(cfg)
    expected = cfg.get("num_classes")
    if expected is not None and int(expected) != classes:
        raise SpikeDataError(f"data.num_classes={expected} but data.format={cfg['format']} has {classes} classes")
    if int(cfg["in_chans"]) != channels:
        raise SpikeDataError(
            f"data.in_chans={cfg['in_chans']} but the samples have {channels} channels "
            f"(data.format={cfg['format']}, data.channel_group={cfg['channel_group']}); set data.in_chans={channels}"
        )
    return (
        _subset(train, cfg.get("train_subset"), "train_subset"),
        _subset(val, cfg.get("val_subset"), "val_subset"),
        classes,
    )


__all__ = ["FORMATS", "build_spikes"]
