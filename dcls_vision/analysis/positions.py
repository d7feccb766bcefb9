"""Learned-position statistics: per-tensor histograms along each axis, 2-D histograms, kernel images, the
position "speed" curves of a run (mean |Δposition| per epoch, which the trainer logs in metrics.jsonl), and for
spiking networks the synaptic delays in time steps before and after training (thesis Fig. 6.6).

Positions are offsets from the kernel centre; ``positions[a]`` moves along input axis ``a`` (0 = H, 1 = W).
Histogram bins are one grid cell wide (``bins_per_cell`` splits them) and span the clamp limits, so every
element is counted: each axis' counts sum to the number of elements of that tensor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dcls_vision.engine.optim import POSITION_LR_SCALE
from dcls_vision.models.dclsify import stage_of
from dcls_vision.ops import DclsLayer, dcls_layers

from .errors import AnalysisError
from .runs import METRICS, read_records


@dataclass
class PositionGroup:
    """One distinct positions tensor and the DCLS layers that use it (a stage, with stage-wise sharing)."""

    name: str  # parameter name of its first user, e.g. stages.0.blocks.0.conv_dw.positions
    label: str  # stage prefix (stages.0) or the layer name
    layers: list[str]
    layer: DclsLayer  # first user: limits, sizes, interpolation
    positions: torch.Tensor

    def limits(self) -> list[tuple[int, int]]:
        return self.layer.position_limits()


def position_groups(model: nn.Module) -> list[PositionGroup]:
    """Distinct positions tensors of ``model`` in module order, with the layers sharing each."""
    names = {id(m): n for n, m in model.named_modules()}
    groups: dict[int, PositionGroup] = {}
    for layer in dcls_layers(model):
        layer_name = names[id(layer)]
        key = id(layer.positions)
        if key not in groups:
            groups[key] = PositionGroup(
                f"{layer_name}.positions",
                stage_of(layer_name) or layer_name,
                [],
                layer,
                layer.positions.detach().float().cpu(),
            )
        groups[key].layers.append(layer_name)
    if not groups:
        raise AnalysisError(
            f"{type(model).__name__} has no DCLS layer, so no positions to analyse; allowed: a DCLS "
            "model (e.g. convnext_tiny_dcls, dcls_quickstart) or a checkpoint of one"
        )
    return list(groups.values())


def _edges(lo: int, hi: int, bins_per_cell: int) -> torch.Tensor:
    return torch.linspace(lo - 0.5, hi + 0.5, (hi - lo + 1) * bins_per_cell + 1)


def histograms(group: PositionGroup, bins_per_cell: int = 1) -> dict[str, Any]:
    """Per-axis histograms, the 2-D histogram (2-D layers) and summary statistics of one positions tensor."""
    pos = group.positions
    axes = []
    for a, (lo, hi) in enumerate(group.limits()):
        values = pos[a].flatten()
        edges = _edges(lo, hi, bins_per_cell)
        counts = torch.histogram(values.clamp(lo - 0.5, hi + 0.5), edges).hist
        axes.append(
            {
                "axis": a,
                "limits": [lo, hi],
                "edges": edges.tolist(),
                "counts": counts.long().tolist(),
                "mean": float(values.mean()),
                "std": float(values.std()),
                "mean_abs": float(values.abs().mean()),
                "at_limit": float(((values <= lo) | (values >= hi)).float().mean()),
            }
        )
    out: dict[str, Any] = {
        "name": group.name,
        "label": group.label,
        "layers": group.layers,
        "shape": list(pos.shape),
        "elements": pos[0].numel(),
        "dilated_kernel_size": list(group.layer.dilated_kernel_size),
        "interpolation": group.layer.interpolation,
        "axes": axes,
    }
    if pos.shape[0] == 2:
        (lo0, hi0), (lo1, hi1) = group.limits()
        pts = torch.stack(
            [pos[0].flatten().clamp(lo0 - 0.5, hi0 + 0.5), pos[1].flatten().clamp(lo1 - 0.5, hi1 + 0.5)], 1
        )
        hist = torch.histogramdd(pts, bins=[_edges(lo0, hi0, bins_per_cell), _edges(lo1, hi1, bins_per_cell)]).hist
        out["hist2d"] = hist.long().tolist()
    return out


@torch.no_grad()
def kernel_images(group: PositionGroup, channels: list[int]) -> list[dict[str, Any]]:
    """The first sharing layer's constructed kernel for output ``channels`` (first input channel; 1-D: all)."""
    layer = group.layer
    out_channels = layer.weight.shape[0]
    bad = [c for c in channels if not 0 <= c < out_channels]
    if bad:
        raise AnalysisError(f"--channels {bad} out of range for {group.layers[0]}; allowed: 0..{out_channels - 1}")
    kernel = layer.build_kernel().float().cpu()
    images = []
    for c in channels:
        k = kernel[c, 0] if kernel.dim() > 3 else kernel[c]  # 1-D layers: every input (rows) x taps
        while k.dim() > 2:  # 3-D kernels: the middle slice of the leading axes
            k = k[k.shape[0] // 2]
        nz = (k.abs() > 1e-6 * k.abs().max()).nonzero()
        images.append(
            {
                "layer": group.layers[0],
                "channel": c,
                "image": k,
                "sum": float(k.sum()),
                "support": [int(nz[:, 0].min()), int(nz[:, 0].max()), int(nz[:, 1].min()), int(nz[:, 1].max())]
                if len(nz) and k.dim() == 2
                else None,
            }
        )
    return images


def delay_histograms(model: nn.Module, bins_per_step: int = 10) -> list[dict[str, Any]]:
    """Per layer of synapses with delays (``snn_delays``): the histogram of its delays in time steps over
    ``[0, max_delay - 1]``, ``bins_per_step`` bins per step, and the share within 0.1 step of an integer (learned
    delays pile up on integers as σ shrinks: thesis Fig. 6.6; uniform delays give 0.2)."""
    names = {id(m): n for n, m in model.named_modules()}
    out = []
    for module in model.modules():
        if not hasattr(module, "delay_steps") or getattr(module, "delays", None) not in ("learned", "fixed"):
            continue
        delays = module.delay_steps().float().flatten().cpu()
        edges = torch.linspace(-0.5, module.max_delay - 0.5, module.max_delay * bins_per_step + 1)
        counts = torch.histogram(delays.clamp(-0.5, module.max_delay - 0.5), edges).hist
        out.append(
            {
                "name": names[id(module)],
                "max_delay": module.max_delay,
                "edges": edges.tolist(),
                "counts": counts.long().tolist(),
                "mean": float(delays.mean()),
                "near_integer": float(((delays - delays.round()).abs() < 0.1).float().mean()),
            }
        )
    if not out:
        raise AnalysisError(
            f"{type(model).__name__} has no synapses with delays; allowed: an snn_delays model with delays "
            "learned or fixed (e.g. a checkpoint of experiment=snn_quickstart)"
        )
    return out


def initial_model(config: Any, num_classes: int, in_chans: int) -> nn.Module:
    """The network a run started from: its config's model built after seeding with its ``trainer.seed``, as the
    trainer does (:meth:`~dcls_vision.engine.trainer.Trainer._build_model`)."""
    from dcls_vision.engine.train_setup import seed_everything
    from dcls_vision.models.factory import build_model

    seed_everything(int(config.trainer.seed))
    return build_model(config, num_classes, in_chans).eval()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The epoch records of a run's metrics.jsonl (a torn last line is skipped)."""
    if not (Path(run_dir) / METRICS).is_file():
        raise AnalysisError(f"--run-dir {str(run_dir)!r} has no metrics.jsonl; allowed: a trainer run directory")
    return read_records(Path(run_dir))


def speed_curves(run_dir: str | Path) -> dict[str, Any]:
    """Per epoch: the LR and the mean |Δposition| of each positions tensor (from the trainer's metrics.jsonl)."""
    records = read_metrics(run_dir)
    if not records:
        raise AnalysisError(
            f"--run-dir {str(run_dir)!r}: metrics.jsonl holds no epoch yet; allowed: a run that "
            "finished at least one epoch"
        )
    names: list[str] = []
    for r in records:
        names += [n for n in (r.get("pos_delta") or {}) if n not in names]
    if not names:
        raise AnalysisError(
            f"--run-dir {str(run_dir)!r}: metrics.jsonl has no pos_delta; allowed: a run of a DCLS model"
        )
    pos_lr_scale = None
    config = Path(run_dir) / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        pos_lr_scale = OmegaConf.load(config).get("optim", {}).get("pos_lr_scale", POSITION_LR_SCALE)
    return {
        "epochs": [int(r["epoch"]) + 1 for r in records],
        "lr": [r.get("lr") for r in records],
        "pos_lr_scale": pos_lr_scale,
        "speed": {n: [(r.get("pos_delta") or {}).get(n) for r in records] for n in names},
        "labels": {n: stage_of(n) or n.removesuffix(".positions") for n in names},
        "note": "speed = mean |Δposition| (grid cells) over each epoch; lr = base LR at the epoch's end "
        "(positions use lr x pos_lr_scale)",
    }
