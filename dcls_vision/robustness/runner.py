"""Evaluate a checkpoint on any subset of ImageNet val, -C, -C-bar, -A, -R and -Sketch (thesis Table 2.5).

Each split goes through the trainer's own :func:`~dcls_vision.engine.evaluate.evaluate` (exact counts summed over
torchrun ranks, unreadable images skipped and counted, progress bars on rank 0). A benchmark whose folder is not
set, missing or empty gets a one-line message and the others still run (the folders: :mod:`.datasets`); a partial
ImageNet-C(-bar) folder is evaluated on what is there and flagged as partial, and so is one with unusable splits
(each skipped and named). Results are written after every split and a re-run of the same command resumes from them
(:mod:`.output`, :mod:`.resume`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset

from dcls_vision.engine.config import amp_dtype
from dcls_vision.engine.distributed import barrier, cleanup, init_distributed
from dcls_vision.engine.evaluate import evaluate
from dcls_vision.engine.loader import EpochLoader
from dcls_vision.engine.runlog import RunLogger

from .benchmarks import BENCHMARKS, IMAGENET_C, IMAGENET_C_BAR, Benchmark, coverage_note
from .config import checkpoint_path, validate_eval_config
from .datasets import BenchmarkDatasets, BenchmarkUnavailable
from .metrics import corruption_summary, relative_mce
from .model import LoadedModel, SubsetLogits, load_model
from .output import EvalOutput
from .report import render_markdown, table_values
from .resume import resume_key


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
        self.output = EvalOutput(Path(str(cfg.output_dir)), rank, cfg.get("progress"))
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
        self.datasets = BenchmarkDatasets(cfg, self.data_cfg)
        self.name = cfg.get("name") or (
            str(train_cfg.get("experiment_name") or train_cfg.model.name)
            + (" (EMA)" if self.loaded.weights == "ema" else "")
        )

    @property
    def log(self) -> RunLogger:
        """The output dir's log (a new one when the run moves to the unfinished run it resumes)."""
        return self.output.log

    @property
    def out_dir(self) -> Path:
        """Where the reports go, the same on every rank."""
        return self.output.out_dir

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
            stats = self._evaluate(self.datasets.checkpoint_val(), self.loaded.model, bench.title)
            return {**stats, "path": f"the checkpoint's data config ({self.data_cfg.get('name')})"}
        path = self.datasets.root(bench)
        if bench.subset is None:
            stats = self._evaluate(
                self.datasets.folder(bench, path, self.datasets.class_map()), self.loaded.model, bench.title
            )
            return self._with_coverage(bench, {**stats, "path": str(path)}, [stats])
        wnids, indices = self.datasets.subset(bench)
        ds = self.datasets.folder(bench, path, {w: i for i, w in enumerate(wnids)})  # labels: positions in the subset
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

    def _corrupted(self, bench: Benchmark, entries: dict[str, Any], saved: dict[str, Any] | None) -> dict[str, Any]:
        """Every present split of C / C-bar; an unusable split is skipped and named, the others still count.

        Splits in ``saved`` (this command's earlier, interrupted run) are reused; after each split the partial
        result is written, so an interruption loses at most the split in progress.
        """
        root = self.datasets.root(bench)
        splits, missing = self.datasets.splits(bench, root)
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
                stats = self._evaluate(
                    self.datasets.folder(bench, folder, self.datasets.class_map()), self.loaded.model, desc
                )
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

    # ---------------------------------------------------------------------------------------------- results
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
                "crop_pct": {k: self.datasets.crop_pct(BENCHMARKS[k]) for k in self.benchmarks},
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
        return self.output.write(self._result(entries, complete))

    # ---------------------------------------------------------------------------------------------- run
    def run(self) -> dict[str, Any]:
        lm = self.loaded
        self._key = resume_key(
            self.cfg, self.ckpt, lm.weights, self.amp, self.channels_last, self.benchmarks, self.datasets.crop_pct
        )
        previous = self.output.previous(self._key, self.resume_search)
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
        paths = self.output.write(result)
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
