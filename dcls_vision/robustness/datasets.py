"""The benchmark folders eval.py is pointed at, as datasets labelled in the checkpoint's class order.

Each folder is checked before it is read: a root that is not set or not found, no class folders, class folders the
model does not know, no images, or none of the requested ImageNet-C(-bar) splits is a
:class:`BenchmarkUnavailable` with one line naming the folder and the layout expected (the runner skips that
benchmark and still runs the others). Without ``val.root`` the clean split is the one the trainer validated on.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch.utils.data import Dataset

from dcls_vision.data import SkipBadImageFolder, build_datasets
from dcls_vision.data.paths import resolve_path

from .benchmarks import BENCHMARKS, Benchmark, severity_folder_names
from .classes import ClassListError, checkpoint_classes, class_folders, subset_logit_indices
from .config import as_list
from .transforms import effective_crop_pct, eval_transform, pil_mode


class BenchmarkUnavailable(RuntimeError):
    """A benchmark that cannot run here (folder not set, missing, empty or with foreign classes)."""


class BenchmarkDatasets:
    """Datasets of the benchmarks in eval.py's config ``cfg`` for a checkpoint whose data config is ``data_cfg``."""

    def __init__(self, cfg: DictConfig, data_cfg: Mapping[str, Any]) -> None:
        self.cfg, self.data_cfg = cfg, data_cfg
        self.mode = pil_mode(data_cfg)
        self._classes: list[str] | None = None

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            try:
                self._classes = checkpoint_classes(self.data_cfg, self.cfg.get("classes"))
            except ClassListError as err:
                raise BenchmarkUnavailable(str(err)) from err
        return self._classes

    def root(self, bench: Benchmark) -> Path:
        root = self.cfg.get(bench.key, {}).get("root")
        if root in (None, ""):
            raise BenchmarkUnavailable(
                f"{bench.key}.root is not set; pass {bench.key}.root=<folder> laid out as {bench.layout}"
            )
        path = resolve_path(str(root), f"{bench.key}.root")
        if not path.is_dir():
            raise BenchmarkUnavailable(f"{bench.key}.root={root}: folder not found; expected {bench.layout}")
        return path

    def folder(self, bench: Benchmark, path: Path, class_to_idx: dict[str, int]) -> Dataset:
        """An ImageNet-style split labelled by ``class_to_idx``; refuses class folders the model does not know."""
        found = class_folders(path)
        if not found:
            raise BenchmarkUnavailable(f"{path}: no class folders; expected {bench.layout}")
        unknown = [c for c in found if c not in class_to_idx]
        if unknown:
            example = ", ".join(list(class_to_idx)[:3])
            raise BenchmarkUnavailable(
                f"{path}: class folders {unknown[:3]} are not among the model's "
                f"{len(class_to_idx)} classes (e.g. {example}); name class folders after the "
                f"checkpoint's classes or pass classes=<file>"
            )
        ds = SkipBadImageFolder(
            path,
            transform=eval_transform(self.data_cfg, self.crop_pct(bench)),
            class_to_idx=class_to_idx,
            mode=self.mode,
        )
        if len(ds) == 0:
            raise BenchmarkUnavailable(f"{path}: no image files in its class folders; expected {bench.layout}")
        return ds

    def crop_pct(self, bench: Benchmark) -> float:
        return effective_crop_pct(self.data_cfg, self.cfg.get(bench.key, {}).get("crop_pct"))

    def class_map(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def subset(self, bench: Benchmark) -> tuple[list[str], list[int]]:
        """ImageNet-A/-R: the subset's class folder names and their output columns in the checkpoint's order."""
        try:
            return subset_logit_indices(self.classes, str(bench.subset))
        except ClassListError as err:
            raise BenchmarkUnavailable(str(err)) from err

    def checkpoint_val(self) -> Dataset:
        """The val split the trainer validated on (same dataset, subset and transform)."""
        data = dict(self.data_cfg)
        if data.get("name") != "fashion_mnist":
            root, val_dir = data.get("root"), data.get("val_dir") or "val"
            if root in (None, "", "???"):
                raise BenchmarkUnavailable(
                    "val.root is not set and the checkpoint's data.root is unset; pass "
                    "val.root=<folder> laid out as <root>/<wnid>/*"
                )
            path = resolve_path(str(root), "data.root") / str(val_dir)
            if not path.is_dir():
                raise BenchmarkUnavailable(
                    f"val.root is not set and the checkpoint's val split {path} is not found; "
                    f"pass val.root=<folder> laid out as <root>/<wnid>/*"
                )
            ds = self.folder(BENCHMARKS["val"], path, self.class_map())
            subset = data.get("val_subset")
            if subset is not None:  # the trainer's deterministic subset of the same folder
                from dcls_vision.data import stratified_indices

                keep = stratified_indices(ds.targets, int(subset), name="data.val_subset")
                ds.samples = [ds.samples[i] for i in keep]
                ds.targets = [s[1] for s in ds.samples]
                ds.imgs = ds.samples
            return ds
        try:
            return build_datasets(data, None)[1]
        except (OSError, ValueError) as err:
            raise BenchmarkUnavailable(
                f"val.root is not set and the checkpoint's data cannot be loaded ({err})"
            ) from err

    def splits(self, bench: Benchmark, root: Path) -> tuple[list[tuple[str, int, Path]], list[str]]:
        """The requested (corruption, severity, folder) splits present under ``root``, and the missing ones."""
        section = self.cfg.get(bench.key, {})
        corruptions = as_list(section.get("corruptions"), f"{bench.key}.corruptions")
        severities = [int(s) for s in as_list(section.get("severities"), f"{bench.key}.severities")]
        splits, missing = [], []
        for name in corruptions:
            if not (root / name).is_dir():
                missing.append(name)
                continue
            for sev in severities:
                folder = next(
                    (
                        root / name / d
                        for d in severity_folder_names(bench.key, name, sev)
                        if (root / name / d).is_dir()
                    ),
                    None,
                )
                if folder is None:
                    missing.append(f"{name}/{sev}")
                    continue
                splits.append((name, sev, folder))
        return splits, missing
