"""Robustness evaluation (thesis Table 2.5): ImageNet val, -C, -C-bar, -A, -R and -Sketch for one checkpoint.

``python eval.py checkpoint=<run>/best.pth c.root=... a.root=...`` (Hydra, configs/eval.yaml) or
``run_eval(cfg)``; corrupted folders are made with ``tools/make_corrupted.py``.
"""

from .benchmarks import (
    ALEXNET_CLEAN_ERROR,
    ALEXNET_ERRORS,
    BENCHMARKS,
    IMAGENET_C,
    IMAGENET_C_BAR,
    IMAGENET_C_EXTRA,
    Benchmark,
)
from .classes import checkpoint_classes, subset_logit_indices, subset_synsets
from .config import EvalConfigError, validate_eval_config
from .metrics import corruption_summary, relative_mce
from .model import LoadedModel, SubsetLogits, load_model
from .report import render_markdown, write_reports
from .runner import run_eval
from .schema import register_eval_config
from .transforms import eval_transform

register_eval_config()  # the eval.yaml schema, before any Hydra composition

__all__ = [
    "ALEXNET_CLEAN_ERROR",
    "ALEXNET_ERRORS",
    "BENCHMARKS",
    "IMAGENET_C",
    "IMAGENET_C_BAR",
    "IMAGENET_C_EXTRA",
    "Benchmark",
    "EvalConfigError",
    "LoadedModel",
    "SubsetLogits",
    "checkpoint_classes",
    "corruption_summary",
    "eval_transform",
    "load_model",
    "register_eval_config",
    "relative_mce",
    "render_markdown",
    "run_eval",
    "subset_logit_indices",
    "subset_synsets",
    "validate_eval_config",
    "write_reports",
]
