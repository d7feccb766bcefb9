"""Evaluate a checkpoint on any subset of ImageNet val, -C, -C-bar, -A, -R and -Sketch (thesis Table 2.5).

Each split goes through the trainer's own :func:`~dcls_vision.engine.evaluate.evaluate` (exact counts summed over
torchrun ranks, unreadable images skipped and counted, progress bars on rank 0). A benchmark whose folder is not
set, missing or empty gets a one-line message and the others still run; a partial ImageNet-C(-bar) folder is
evaluated on what is there and flagged as partial, and so is one with unusable splits (each skipped and named).
Results are written after every split and a re-run of the same command resumes from them (see :mod:`.resume`);
a write that fails (a full disk, a read-only filesystem, a quota) stops every rank with one line naming the file,
the free space and what the intact ``results.json`` holds (:class:`~dcls_vision.utils.errors.SaveError`, exit 4).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from dcls_vision.data import SkipBadImageFolder, build_datasets
from dcls_vision.data.paths import resolve_path
from dcls_vision.engine.config import amp_dtype
from dcls_vision.engine.distributed import barrier, broadcast_object, cleanup, init_distributed
from dcls_vision.engine.evaluate import evaluate
from dcls_vision.engine.loader import EpochLoader
from dcls_vision.engine.runlog import RunLogger
from dcls_vision.models.hub import hub_weights_file, is_hub_source
from dcls_vision.utils.errors import SaveError

from .benchmarks import BENCHMARKS, IMAGENET_C, IMAGENET_C_BAR, Benchmark, coverage_note, severity_folder_names
from .classes import ClassListError, checkpoint_classes, class_folders, subset_logit_indices
from .config import as_list, checkpoint_path, validate_eval_config
from .metrics import corruption_summary, relative_mce
from .model import LoadedModel, SubsetLogits, load_model
from .report import render_markdown, table_values, write_reports
from .resume import changed_fields, read_results, supersede, unfinished_sibling
from .transforms import effective_crop_pct, eval_transform, pil_mode


class BenchmarkUnavailable(RuntimeError):
    """A benchmark that cannot run here (folder not set, missing, empty or with foreign classes)."""


class Evaluator:
    """Runs the requested benchmarks for one checkpoint; every rank runs it, rank 0 writes the reports."""

    def __init__(
        self,
        cfg: DictConfig,
        benchmarks: list[str],
        rank: int,
        world: int,
        device: torch.device,
        resume_search: Path | None = None,
    ) -> None:
        self.cfg, self.benchmarks, self.rank, self.world, self.device = cfg, benchmarks, rank, world, device
        self.resume_search = resume_search
        self.out_dir = self._setup_out_dir(Path(str(cfg.output_dir)))
        self.log = RunLogger(self.out_dir, rank, progress=cfg.get("progress"))
        self.ckpt = checkpoint_path(cfg)
        self.loaded: LoadedModel = load_model(
            self.ckpt, bool(cfg.use_ema), device, OmegaConf.to_container(cfg.model), OmegaConf.to_container(cfg.data)
        )
        train_cfg = self.loaded.config
        tcfg, self.data_cfg = train_cfg.trainer, OmegaConf.to_container(train_cfg.data, resolve=True)
        self.batch_size = int(cfg.get("batch_size") or tcfg.get("val_batch_size") or tcfg.batch_size)
        workers = cfg.get("num_workers")
        self.num_workers = int(self.data_cfg.get("num_workers") or 0) if workers is None else int(workers)
        self.amp = amp_dtype(cfg.get("amp") if cfg.get("amp") is not None else tcfg.get("amp"))
        cl = cfg.get("channels_last")
        self.channels_last = bool(tcfg.get("channels_last", False) if cl is None else cl)
        if self.channels_last:
            self.loaded.model.to(memory_format=torch.channels_last)
        self.mode = pil_mode(self.data_cfg)
        self._classes: list[str] | None = None
        self.name = cfg.get("name") or (
            str(train_cfg.get("experiment_name") or train_cfg.model.name)
            + (" (EMA)" if self.loaded.weights == "ema" else "")
        )

    # ------------------------------------------------------------------------------------------- set-up
    def _setup_out_dir(self, requested: Path) -> Path:
        """Rank 0's output dir for all ranks (a ``${now:}`` default may differ by a second between ranks)."""
        requested = resolve_path(str(requested), "output_dir")
        out = Path(broadcast_object(str(requested.resolve()) if self.rank == 0 else None))
        if self.rank != 0 and requested.resolve() != out and requested.is_dir():
            if all(p.name == ".hydra" or p.suffix == ".log" for p in requested.iterdir()):  # Hydra's, for this rank
                shutil.rmtree(requested, ignore_errors=True)
        if self.rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        barrier()
        return out

    @property
    def classes(self) -> list[str]:
        if self._classes is None:
            try:
                self._classes = checkpoint_classes(self.data_cfg, self.cfg.get("classes"))
            except ClassListError as err:
                raise BenchmarkUnavailable(str(err)) from err
        return self._classes

    # ------------------------------------------------------------------------------------------ datasets
    def _root(self, bench: Benchmark) -> Path:
        root = self.cfg.get(bench.key, {}).get("root")
        if root in (None, ""):
            raise BenchmarkUnavailable(
                f"{bench.key}.root is not set; pass {bench.key}.root=<folder> laid out as {bench.layout}"
            )
        path = resolve_path(str(root), f"{bench.key}.root")
        if not path.is_dir():
            raise BenchmarkUnavailable(f"{bench.key}.root={root}: folder not found; expected {bench.layout}")
        return path

    def _folder(self, bench: Benchmark, path: Path, class_to_idx: dict[str, int]) -> Dataset:
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
            transform=eval_transform(self.data_cfg, self._crop_pct(bench)),
            class_to_idx=class_to_idx,
            mode=self.mode,
        )
        if len(ds) == 0:
            raise BenchmarkUnavailable(f"{path}: no image files in its class folders; expected {bench.layout}")
        return ds

    def _crop_pct(self, bench: Benchmark) -> float:
        return effective_crop_pct(self.data_cfg, self.cfg.get(bench.key, {}).get("crop_pct"))

    def _class_map(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    # -------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, ds: Dataset, model: nn.Module, desc: str) -> dict[str, Any]:
        loader = EpochLoader(
            ds,
            self.batch_size,
            train=False,
            num_replicas=self.world,
            rank=self.rank,
            seed=0,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        stats = evaluate(model, loader, self.device, self.amp, self.channels_last, self.log, desc)
        if stats["samples"] == 0:
            raise BenchmarkUnavailable(f"{desc}: none of its {len(ds)} images could be read")
        if stats["skipped"]:
            self.log.info(f"{desc}: skipped {stats['skipped']} unreadable image(s)")
        self.log.info(f"{desc}: top-1 {stats['top1']:.2f} on {stats['samples']} image(s)")
        targets = getattr(ds, "targets", None)
        return {
            "top1": stats["top1"],
            "top5": stats["top5"],
            "error": 100.0 - stats["top1"],
            "loss": stats["loss"],
            "samples": stats["samples"],
            "skipped": stats["skipped"],
            "images": len(ds),
            "classes": None if targets is None else len(set(int(t) for t in targets)),
        }

    def _single(self, bench: Benchmark) -> dict[str, Any]:
        """val, A, R or Sketch: one split; A and R score only their 200 output columns."""
        if bench.key == "val" and self.cfg.get("val", {}).get("root") in (None, ""):
            stats = self._evaluate(self._checkpoint_val(), self.loaded.model, bench.title)
            return {**stats, "path": f"the checkpoint's data config ({self.data_cfg.get('name')})"}
        path = self._root(bench)
        if bench.subset is None:
            stats = self._evaluate(self._folder(bench, path, self._class_map()), self.loaded.model, bench.title)
            return self._with_coverage(bench, {**stats, "path": str(path)}, [stats])
        wnids, indices = self._subset(bench)
        ds = self._folder(bench, path, {w: i for i, w in enumerate(wnids)})  # labels: positions in the subset
        stats = self._evaluate(ds, SubsetLogits(self.loaded.model, indices), bench.title)
        entry = {**stats, "path": str(path), "classes": len(wnids), "classes_found": stats["classes"]}
        return self._with_coverage(bench, entry, [stats])

    def _with_coverage(self, bench: Benchmark, entry: dict[str, Any], splits: list[dict[str, Any]]) -> dict[str, Any]:
        """Add a one-line warning when the folder's image or class count differs from the released benchmark."""
        images = [int(s["images"]) for s in splits if s.get("images") is not None]
        classes = [int(s["classes"]) for s in splits if s.get("classes") is not None]
        note = (
            coverage_note(bench.key, (min(images), max(images)), (min(classes), max(classes)))
            if images and classes
            else None
        )
        entry["warnings"] = [note] if note else []
        return entry

    def _subset(self, bench: Benchmark) -> tuple[list[str], list[int]]:
        try:
            return subset_logit_indices(self.classes, str(bench.subset))
        except ClassListError as err:
            raise BenchmarkUnavailable(str(err)) from err

    def _checkpoint_val(self) -> Dataset:
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
            ds = self._folder(BENCHMARKS["val"], path, self._class_map())
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

    def _splits(self, bench: Benchmark, root: Path) -> tuple[list[tuple[str, int, Path]], list[str]]:
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

    def _corrupted(self, bench: Benchmark, entries: dict[str, Any], saved: dict[str, Any] | None) -> dict[str, Any]:
        """Every present split of C / C-bar; an unusable split is skipped and named, the others still count.

        Splits in ``saved`` (this command's earlier, interrupted run) are reused; after each split the partial
        result is written, so an interruption loses at most the split in progress.
        """
        root = self._root(bench)
        splits, missing = self._splits(bench, root)
        if not splits:
            raise BenchmarkUnavailable(
                f"{bench.key}.root={root}: none of the requested corruption/severity folders "
                f"exist; expected {bench.layout}"
            )
        if missing:
            shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
            self.log.info(
                f"{bench.title}: missing {shown} under {root}; evaluating the {len(splits)} split(s) "
                f"present (result flagged partial)"
            )
        done = {(s["corruption"], s["severity"]): s for s in (saved or {}).get("splits") or []}
        reused = [done[n, v] for n, v, _ in splits if (n, v) in done]
        if reused:
            self.log.info(
                f"{bench.title}: {len(reused)} split(s) already in results.json (same command), not re-evaluated"
            )
        results, bad = [], []
        for name, sev, folder in splits:
            if (name, sev) in done:
                results.append(done[name, sev])
                continue
            desc = f"{bench.title} {name}/{sev}"
            try:
                stats = self._evaluate(self._folder(bench, folder, self._class_map()), self.loaded.model, desc)
            except BenchmarkUnavailable as err:
                bad.append(f"{name}/{sev} ({err})")
                self.log.info(f"{desc}: {err}; skipped, the other splits still run")
                continue
            results.append({"corruption": name, "severity": sev, **stats, "path": str(folder)})
            entries[bench.key] = {
                **self._corrupted_entry(bench, root, results, missing, bad),
                "status": "running",
                "corrupted": True,
            }
            self._save(entries, complete=False)
        if not results:
            raise BenchmarkUnavailable(
                f"{bench.key}.root={root}: none of its {len(splits)} split(s) could be evaluated: {'; '.join(bad[:3])}"
            )
        return self._corrupted_entry(bench, root, results, missing, bad)

    def _corrupted_entry(
        self, bench: Benchmark, root: Path, results: list[dict[str, Any]], missing: list[str], bad: list[str]
    ) -> dict[str, Any]:
        errors: dict[str, dict[int, float]] = {}
        for r in results:
            errors.setdefault(r["corruption"], {})[int(r["severity"])] = r["error"]
        reference = IMAGENET_C if bench.key == "c" else IMAGENET_C_BAR
        summary = corruption_summary(errors, reference, normalise=bench.key == "c")
        entry = {
            "path": str(root),
            "splits": results,
            "summary": summary,
            "missing": missing,
            "unusable": bad,
            "samples": sum(r["samples"] for r in results),
            "skipped": sum(r["skipped"] for r in results),
        }
        return self._with_coverage(bench, entry, results)

    def _single_or_saved(self, bench: Benchmark, saved: dict[str, Any] | None) -> dict[str, Any]:
        if saved and saved.get("status") == "ok" and saved.get("top1") is not None:
            self.log.info(
                f"{bench.title}: already in results.json (same command), not re-evaluated: top-1 {saved['top1']:.2f}"
            )
            return {k: v for k, v in saved.items() if k not in ("status", "corrupted")}
        return self._single(bench)

    # ------------------------------------------------------------------------------------- resume, results
    def resume_key(self) -> dict[str, Any]:
        """What makes saved results valid for this command (see :mod:`dcls_vision.robustness.resume`)."""
        hub = is_hub_source(self.ckpt)
        weights = hub_weights_file(self.ckpt) if hub else self.ckpt  # a Hub folder: its weights file
        st = weights.stat() if weights is not None and weights.is_file() else None
        key: dict[str, Any] = {
            "checkpoint": str(self.ckpt) if hub else str(self.ckpt.resolve()),
            "checkpoint_size": None if st is None else st.st_size,
            "checkpoint_mtime_ns": None if st is None else st.st_mtime_ns,
            "weights": self.loaded.weights,
            "classes": self.cfg.get("classes"),
            "amp": str(self.amp),
            "channels_last": self.channels_last,
            "benchmarks": list(self.benchmarks),
        }
        given = {k: v for k, v in OmegaConf.to_container(self.cfg.data).items() if v is not None}
        if given:  # data.* overrides change every figure
            key["data"] = given
        if self.cfg.model.name:  # weights without a run config: the architecture they were loaded into
            key["model"] = {"name": str(self.cfg.model.name), "kwargs": OmegaConf.to_container(self.cfg.model.kwargs)}
        for k in self.benchmarks:
            section = self.cfg.get(k, {})
            root = section.get("root")
            key[f"{k}.root"] = None if root in (None, "") else str(resolve_path(str(root), f"{k}.root").resolve())
            key[f"{k}.crop_pct"] = self._crop_pct(BENCHMARKS[k])
            if BENCHMARKS[k].corrupted:
                key[f"{k}.corruptions"] = [str(c) for c in as_list(section.get("corruptions"), f"{k}.corruptions")]
                key[f"{k}.severities"] = [int(v) for v in as_list(section.get("severities"), f"{k}.severities")]
        return key

    def _previous(self, key: dict[str, Any]) -> dict[str, Any] | None:
        """Rank 0 picks the saved results to resume (moving ``out_dir`` to an unfinished sibling if it is the same
        command); every rank gets the same answer."""
        decision: tuple[str, dict[str, Any] | None] | None = None
        if self.rank == 0:
            saved = self._find_previous(key)  # may move self.out_dir to the run it resumes
            decision = (str(self.out_dir), saved)
        out, saved = broadcast_object(decision)
        if Path(out) != self.out_dir:
            self.out_dir = Path(out)
            self.log = RunLogger(self.out_dir, self.rank, progress=self.cfg.get("progress"))
        return saved

    def _find_previous(self, key: dict[str, Any]) -> dict[str, Any] | None:
        saved = read_results(self.out_dir)
        if saved is None and (self.out_dir / "results.json").exists():
            moved = supersede(self.out_dir)
            self.log.info(
                f"{self.out_dir}/results.json is not a resumable eval result (an older version's?); "
                f"moved to {moved}, evaluating afresh"
            )
        if saved is None and self.resume_search is not None:
            sibling, note = unfinished_sibling(self.resume_search, self.out_dir, key)
            if note:
                self.log.info(note)
            if sibling is not None:
                fresh, self.out_dir = self.out_dir, sibling
                if all(p.name == ".hydra" or p.suffix == ".log" for p in fresh.iterdir()):
                    shutil.rmtree(fresh, ignore_errors=True)
                self.log = RunLogger(self.out_dir, self.rank, progress=self.cfg.get("progress"))
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

    def _result(self, entries: dict[str, Any], complete: bool) -> dict[str, Any]:
        lm = self.loaded
        result = {
            "name": self.name,
            "checkpoint": str(self.ckpt),
            "weights": lm.weights,
            "epoch": lm.epoch,
            "model": str(lm.config.model.name),
            "trainer_metrics": lm.stored_metrics,
            "world_size": self.world,
            "settings": {
                "batch_size": self.batch_size,
                "amp": self.amp,
                "channels_last": self.channels_last,
                "crop_pct": {k: self._crop_pct(BENCHMARKS[k]) for k in self.benchmarks},
            },
            "benchmarks": entries,
            "complete": complete,
            "resume_key": self._key,
            "skipped_images": sum(int(e.get("skipped") or 0) for e in entries.values()),
        }
        result["table"] = {k: v for k, v in table_values(result).items() if k in entries}
        result["relative_mce"] = _relative_mce(entries)
        return result

    def _save(self, entries: dict[str, Any], complete: bool) -> dict[str, Path] | None:
        """Rank 0 rewrites results.json / .csv / table.md (atomically) with what is finished so far."""
        return self._write(self._result(entries, complete))

    def _write(self, result: dict[str, Any]) -> dict[str, Path] | None:
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

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        lm = self.loaded
        self._key = self.resume_key()
        previous = self._previous(self._key)
        n_params = sum(p.numel() for p in lm.model.parameters())
        self.log.info(
            f"checkpoint {self.ckpt} ({lm.weights} weights, epoch {lm.epoch}) | model {lm.config.model.name} "
            f"{n_params / 1e6:.2f}M params | {self.world} process(es) on {self.device} | batch "
            f"{self.batch_size} | amp {self.amp or 'off'} | benchmarks {', '.join(self.benchmarks)} | "
            f"results in {self.out_dir} (written after every split; the same command resumes there)"
        )
        entries: dict[str, Any] = {}
        for key in self.benchmarks:
            bench = BENCHMARKS[key]
            saved = ((previous or {}).get("benchmarks") or {}).get(key)
            try:
                entry = (
                    self._corrupted(bench, entries, saved) if bench.corrupted else self._single_or_saved(bench, saved)
                )
                entry["status"] = "partial" if entry.get("missing") or entry.get("unusable") else "ok"
                for note in entry.get("warnings") or []:
                    self.log.info(note)
            except BenchmarkUnavailable as err:
                entry = {"status": "unavailable", "message": str(err)}
                self.log.info(f"{bench.title}: {err}; skipped, the other benchmarks still run")
            entry["corrupted"] = bench.corrupted
            entries[key] = entry
            self._save(entries, complete=False)
        result = self._result(entries, complete=True)
        barrier()
        paths = self._write(result)
        if paths is not None:
            result["reports"] = {k: str(v) for k, v in paths.items()}
            self.log.info(render_markdown(result).rstrip())
            self.log.info(f"reports: {paths['markdown']} {paths['json']} {paths['csv']}")
        result["rank"] = self.rank
        result["evaluated"] = [k for k, e in entries.items() if e["status"] != "unavailable"]
        return result


def _relative_mce(entries: dict[str, Any]) -> float | None:
    """Relative mCE when both the clean val top-1 and ImageNet-C splits were evaluated, else None."""
    clean = (entries.get("val") or {}).get("top1")
    summary = (entries.get("c") or {}).get("summary")
    if clean is None or not summary:
        return None
    return relative_mce(summary["per_corruption"], 100.0 - clean)


def run_eval(cfg: DictConfig, resume_search: Path | None = None) -> dict[str, Any]:
    """Validate ``cfg`` (configs/eval.yaml), evaluate, write reports on rank 0 and return the result dict.

    Results already in ``output_dir``/results.json from the same command are reused (an interrupted run resumes);
    ``resume_search`` (eval.py passes the parent of its default, timestamped output_dir) also resumes the newest
    unfinished run of the same command found there. Raises
    :class:`~dcls_vision.robustness.config.EvalConfigError` before any work for a bad config.
    """
    benchmarks = validate_eval_config(cfg)
    rank, world, _, device = init_distributed(str(cfg.get("device") or "auto"))
    try:
        return Evaluator(cfg, benchmarks, rank, world, device, resume_search).run()
    finally:
        cleanup()
