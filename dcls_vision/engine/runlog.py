"""Run outputs on rank 0: console lines (+ ``log.txt``), ``metrics.jsonl``, optional W&B, progress bars."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from dcls_vision.ops import dcls_parameters


class RunLogger:
    """Writes only on rank 0; other ranks get no-ops, so callers need no ``if rank == 0``."""

    def __init__(
        self,
        run_dir: Path,
        rank: int,
        wandb_cfg: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
        wandb_id: str | None = None,
        progress: bool | None = None,
    ) -> None:
        self.run_dir, self.enabled = Path(run_dir), rank == 0
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.wandb_run = None
        show = sys.stderr.isatty() if progress is None else progress
        self.progress = self.enabled and bool(show)
        if self.enabled and wandb_cfg is not None:
            self.wandb_run = self._init_wandb(wandb_cfg, config, wandb_id)

    def _init_wandb(self, wandb_cfg: dict[str, Any], config: dict[str, Any] | None, wandb_id: str | None) -> Any:
        import wandb

        mode = wandb_cfg.get("mode") or os.environ.get("WANDB_MODE") or "offline"
        return wandb.init(
            mode=mode,
            project=wandb_cfg.get("project"),
            entity=wandb_cfg.get("entity"),
            name=wandb_cfg.get("name"),
            dir=str(self.run_dir),
            config=config,
            id=wandb_id,
            resume="allow" if wandb_id else None,
        )

    @property
    def wandb_id(self) -> str | None:
        return None if self.wandb_run is None else self.wandb_run.id

    def info(self, msg: str) -> None:
        """A line on stdout and in ``log.txt``; with bars on, written around them (tqdm.write) so none breaks."""
        if not self.enabled:
            return
        if self.progress:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)
        with open(self.run_dir / "log.txt", "a") as f:
            f.write(msg + "\n")

    def truncate_metrics(self, next_epoch: int) -> None:
        """Drop lines of epochs >= ``next_epoch`` (an epoch logged but not checkpointed before a kill)."""
        if not self.enabled or not self.metrics_path.exists():
            return
        keep = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                if json.loads(line).get("epoch", -1) < next_epoch:
                    keep.append(line)
            except json.JSONDecodeError:  # a torn last line
                continue
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        os.replace(tmp, self.metrics_path)

    def epoch(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())
        if self.wandb_run is not None:
            values = {k: v for k, v in _flatten(record).items() if v is not None}  # null: epoch not validated
            self.wandb_run.log(values, step=record.get("global_step"))

    def step(self, values: dict[str, float], global_step: int) -> None:
        if self.enabled and self.wandb_run is not None:
            self.wandb_run.log(values, step=global_step)

    def bar(self, total: int, desc: str) -> Any:
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, disable=not self.progress, leave=False, dynamic_ncols=True)

    def close(self) -> None:
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            out[prefix + k] = v
    return out


class PositionTracker:
    """Mean |Δposition| per distinct positions tensor between epochs (the thesis' position-speed curves)."""

    def __init__(self, model: nn.Module) -> None:
        names = {id(p): n for n, p in model.named_parameters()}
        positions = dcls_parameters(model)["positions"]
        self.tensors = {names.get(id(p), f"positions_{i}"): p for i, p in enumerate(positions)}
        self.snapshot()

    def snapshot(self) -> None:
        self.prev = {n: p.detach().float().cpu().clone() for n, p in self.tensors.items()}

    def deltas(self) -> dict[str, float]:
        """Mean |Δ| since the last :meth:`snapshot`, then snapshot."""
        out = {n: float((p.detach().float().cpu() - self.prev[n]).abs().mean()) for n, p in self.tensors.items()}
        self.snapshot()
        return out


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)
