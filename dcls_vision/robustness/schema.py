"""Typed schema of configs/eval.yaml (eval.py): every default lives here, once; the YAML only overrides.

:func:`register_eval_config` stores it in Hydra's ConfigStore as ``base_eval``; ``dcls_vision.robustness``
calls it at import and eval.py before ``@hydra.main``. Range rules: :mod:`dcls_vision.robustness.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcls_vision.engine.schema import ModelSpecConfig

from .benchmarks import BENCHMARKS, IMAGENET_C, IMAGENET_C_BAR, SEVERITIES


@dataclass
class EvalModelConfig(ModelSpecConfig):
    """The network when the weights file stores no run config (a plain/wrapped state dict, safetensors, or
    timm's weights via pretrained_file); with one of our checkpoints name may stay null (the run's)."""

    name: str | None = None  # a timm name: convnext_tiny, resnet50, convnext_tiny_dcls, ...


@dataclass
class EvalDataConfig:
    """Preprocessing overrides; null = the checkpoint's run config, else the model's timm pretrained config."""

    img_size: int | None = None
    crop_pct: float | None = None
    interpolation: str | None = None
    mean: list[float] | None = None
    std: list[float] | None = None


@dataclass
class BenchmarkConfig:
    """One benchmark folder: ``<root>/<wnid>/*``; crop_pct null = the checkpoint's data.crop_pct (else 0.875)."""

    root: str | None = None
    crop_pct: float | None = None


@dataclass
class ValConfig(BenchmarkConfig):
    """Clean top-1/top-5; root null = the val split of the checkpoint's data config."""


@dataclass
class CorruptedConfig(BenchmarkConfig):
    """``<root>/<corruption>/<severity>/<wnid>/*``; the stored 224 px images are only centre-cropped (crop_pct 1).

    corruptions/severities: a list (or a comma-separated string); C-bar severities may be 1..5 or the
    corruption's parameter ("0.80") as folder name.
    """

    crop_pct: float | None = 1.0  # Hendrycks & Dietterich's protocol
    corruptions: Any = field(default_factory=lambda: list(IMAGENET_C))
    severities: Any = field(default_factory=lambda: list(SEVERITIES))


@dataclass
class EvalConfig:
    """``python eval.py checkpoint=<run>/best.pth [key=value ...]``: the model, its class order and its
    preprocessing come from the config stored in the checkpoint; for weights without one (``model.name=``, or
    ``model.pretrained_file=``) from the model's timm pretrained config; ``data.*`` overrides either."""

    # our train.py's .pth (last/best/best_ema/epoch_XXXX), any CHECKPOINT_FORMATS file (a release, a plain or
    # {"model": ...} state dict, .safetensors: these need model.name) — or null with model.pretrained_file
    checkpoint: str | None = None
    model: EvalModelConfig = field(default_factory=EvalModelConfig)
    data: EvalDataConfig = field(default_factory=EvalDataConfig)
    use_ema: bool = False  # true: the EMA weights of last.pth (best_ema.pth holds EMA weights either way)
    benchmarks: Any = field(default_factory=lambda: list(BENCHMARKS))  # subset, run order
    name: str | None = None  # table row label; null = the run's experiment_name (+ " (EMA)")
    classes: str | None = None  # one class folder name per line in output order; null = from the checkpoint
    device: str = "auto"  # auto | cpu | cuda | cuda:N (torchrun: one process per GPU)
    batch_size: int | None = None  # per process; null = the checkpoint's trainer.val_batch_size / batch_size
    num_workers: int | None = None  # null = the checkpoint's data.num_workers
    amp: str | None = None  # none | bf16 | fp16; null = the checkpoint's trainer.amp
    channels_last: bool | None = None  # null = the checkpoint's trainer.channels_last
    progress: bool | None = None  # tqdm bars: null = when stderr is a TTY (rank 0 only)
    # results.json, results.csv, table.md, log.txt, written after every split: the same command resumes here
    # (default: the newest unfinished run of it)
    output_dir: str = "outputs/eval/${now:%Y-%m-%d_%H-%M-%S}"
    val: ValConfig = field(default_factory=ValConfig)
    c: CorruptedConfig = field(default_factory=CorruptedConfig)
    cbar: CorruptedConfig = field(default_factory=lambda: CorruptedConfig(corruptions=list(IMAGENET_C_BAR)))
    a: BenchmarkConfig = field(default_factory=BenchmarkConfig)  # top-1 over its 200 classes
    r: BenchmarkConfig = field(default_factory=BenchmarkConfig)  # top-1 over its 200 classes
    sketch: BenchmarkConfig = field(default_factory=BenchmarkConfig)  # top-1 over the 1000 classes


def register_eval_config() -> None:
    """Store :class:`EvalConfig` as ``base_eval`` in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_eval", node=EvalConfig)
