"""Fail-fast validation of a composed training config: one line naming the key, the value and what is allowed."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dcls_vision.data.builder import NAMES as DATA_NAMES
from dcls_vision.data.spike_builder import FORMATS as SPIKE_FORMATS
from dcls_vision.data.transforms import INTERPOLATIONS, TRAIN_INTERPOLATIONS
from dcls_vision.models.hub import hub_source_exists, is_hub_source
from dcls_vision.utils.errors import UserError

from .optim import LR_SCALE_RULES, SCHEDULERS
from .resume_config import RESUME_SCHEDULES

AMP_DTYPES = {
    "none": None,
    "false": None,
    "fp32": None,
    "float32": None,
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "fp16": "float16",
    "float16": "float16",
}
LOSSES = ("ce", "bce")
CLIP_MODES = ("norm", "value", "agc")
WANDB_MODES = ("online", "offline", "disabled", "shared")
DIST_BN = ("reduce", "broadcast", "")
SNN_MODELS = ("snn_delays",)  # trained as SNN-delays: no EMA, AMP, mixup/cutmix, label smoothing


class ConfigError(UserError):
    """A config value that cannot work; the message is one line: ``key=value problem; allowed: ...``."""


def amp_dtype(value: Any) -> str | None:
    """Normalise ``trainer.amp`` (None/False/'none' → None, 'bf16' → 'bfloat16', 'fp16' → 'float16')."""
    key = "none" if value in (None, False) else str(value).lower()
    return AMP_DTYPES[key]


def _get(cfg: DictConfig, key: str) -> Any:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    if OmegaConf.is_dict(parent) and leaf in parent.keys() and OmegaConf.is_missing(parent, leaf):
        raise ConfigError(f"{key}=??? is required (set it on the command line: {key}=...)")
    return OmegaConf.select(cfg, key)


def _num(cfg: DictConfig, key: str, ok: Callable[[float], bool], rule: str) -> Any:
    """Range check; the schema (dcls_vision/engine/schema.py) already made the value a number (or null)."""
    value = _get(cfg, key)
    if value is not None and not ok(value):
        raise ConfigError(f"{key}={value!r} must be {rule}")
    return value


def _choice(cfg: DictConfig, key: str, allowed: Iterable[str]) -> Any:
    value = _get(cfg, key)
    allowed = list(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not supported; allowed: {', '.join(map(str, allowed))}")
    return value


def _check_model(cfg: DictConfig) -> None:
    import timm

    import dcls_vision.models  # noqa: F401  (registers the DCLS models with timm)

    name = _get(cfg, "model.name")
    if not isinstance(name, str) or name not in timm.list_models():
        dcls = [m for m in timm.list_models() if "dcls" in m or "quickstart" in m]
        raise ConfigError(
            f"model.name={name!r} is not a registered timm model; allowed: any timm model, "
            f"e.g. {', '.join(dcls[:12]) or 'resnet50, convnext_tiny'}"
        )
    _num(cfg, "model.drop_path_rate", lambda v: 0 <= v < 1, "in [0, 1) or null")
    pretrained, init = _get(cfg, "model.pretrained_file"), _get(cfg, "model.init_checkpoint")
    if pretrained and init:
        raise ConfigError(
            f"model.pretrained_file={pretrained!r} and model.init_checkpoint={init!r} are both set; allowed: one "
            "source of initial weights"
        )
    if pretrained and not Path(str(pretrained)).is_file():  # checked before any data loads
        raise ConfigError(
            f"model.pretrained_file={pretrained!r} is not a file; allowed: a local .safetensors/.bin/.pth file of "
            f"timm weights for {name} (nothing is downloaded), or null"
        )
    exists = hub_source_exists(init) if is_hub_source(init) else Path(str(init)).exists()
    if init and not exists:
        raise ConfigError(
            f"model.init_checkpoint={init!r} does not exist; allowed: a checkpoint file (any format) or run dir, "
            "a timm Hub folder local-dir:FOLDER (config.json + model.safetensors) or hf-hub:ORG/NAME, or null"
        )
    _check_start(cfg, bool(init or pretrained))


def _check_start(cfg: DictConfig, has_weights: bool) -> None:
    """``model.from_scratch``: a recipe that starts from pretrained weights never trains from scratch silently."""
    scratch, experiment = _get(cfg, "model.from_scratch"), _get(cfg, "experiment_name")
    if scratch is False and not has_weights and not _get(cfg, "trainer.resume"):
        raise ConfigError(
            f"model.init_checkpoint=None but experiment {experiment!r} starts from pretrained (ImageNet-1k) weights "
            f"(configs/experiment/{experiment}.yaml says which); allowed: model.init_checkpoint=PATH, or "
            "model.from_scratch=true to train from scratch"
        )
    if scratch is True and has_weights:
        raise ConfigError(
            "model.from_scratch=true but initial weights are given (model.init_checkpoint / pretrained_file); "
            "allowed: one of them"
        )


def _check_data(cfg: DictConfig) -> None:
    _choice(cfg, "data.name", DATA_NAMES)
    root = _get(cfg, "data.root")
    if root is None:
        raise ConfigError("data.root=None is required; allowed: a directory path")
    if _get(cfg, "data.name") == "imagefolder":
        for sub in ("train_dir", "val_dir"):
            split = _get(cfg, f"data.{sub}")
            path = Path(root) / split if split is not None else Path(root)
            if not path.is_dir():
                raise ConfigError(
                    f"data.root={root!r} (data.{sub}={split!r}): {path} is not a directory; "
                    "allowed: an existing ImageFolder root"
                )
    if _get(cfg, "data.name") == "audioset":
        _choice(cfg, "data.format", ("folder", "arrays", "hdf5"))
        if _get(cfg, "trainer.loss") != "bce":
            raise ConfigError(
                f"trainer.loss={_get(cfg, 'trainer.loss')!r} with data.name=audioset (multi-label); allowed: bce"
            )
    if _get(cfg, "data.name") == "spikes":
        _choice(cfg, "data.format", SPIKE_FORMATS)
        _num(cfg, "data.dt_ms", lambda v: v > 0, "> 0")
        _num(cfg, "data.num_steps", lambda v: v >= 1, ">= 1 or null")
        _num(cfg, "data.channel_group", lambda v: v >= 1 and 700 % v == 0, "a divisor of 700 (5: 140 channels)")
    source = OmegaConf.select(cfg, "data.source", default=None)
    if source and not Path(os.path.expanduser(str(source))).exists():
        raise ConfigError(f"data.source={source!r} does not exist; allowed: an existing path")
    for key in ("data.train_subset", "data.val_subset"):
        _num(cfg, key, lambda v: v >= 1, ">= 1 or null")
    for key in ("data.img_size", "data.test_img_size", "data.in_chans"):
        _num(cfg, key, lambda v: v >= 1, ">= 1")
    _num(cfg, "data.num_workers", lambda v: v >= 0, ">= 0")
    _choice(cfg, "data.interpolation", INTERPOLATIONS)


def _check_optim(cfg: DictConfig) -> None:
    from timm.optim import list_optimizers

    name = _get(cfg, "optim.name")
    opts = list_optimizers()
    base = str(name).lower().split("_")[-1] if isinstance(name, str) else name
    if base not in opts:
        raise ConfigError(
            f"optim.name={name!r} is not a timm optimizer; allowed: adamw, lamb, sgd, momentum, "
            f"... (timm.optim.list_optimizers())"
        )
    _num(cfg, "optim.lr", lambda v: v > 0, "> 0")
    _num(cfg, "optim.weight_decay", lambda v: v >= 0, ">= 0")
    _num(cfg, "optim.pos_lr_scale", lambda v: v > 0, "> 0")
    _num(cfg, "optim.layer_decay", lambda v: 0 < v <= 1, "in (0, 1] or null")
    _num(cfg, "optim.lr_base_batch", lambda v: v >= 1, ">= 1 or null")
    if _get(cfg, "optim.lr_scale_rule") is not None:
        _choice(cfg, "optim.lr_scale_rule", LR_SCALE_RULES)
    if _get(cfg, "optim.positions") is not None:
        pname = _get(cfg, "optim.positions.name")
        if str(pname).lower().split("_")[-1] not in opts:
            raise ConfigError(f"optim.positions.name={pname!r} is not a timm optimizer; allowed: adam, adamw, sgd, ...")
        _num(cfg, "optim.positions.lr", lambda v: v > 0, "> 0")
        _num(cfg, "optim.positions.weight_decay", lambda v: v >= 0, ">= 0")
        _num(cfg, "optim.positions.min_lr", lambda v: v >= 0, ">= 0")
        _choice(cfg, "optim.positions.sched", SCHEDULERS)


def _check_sched(cfg: DictConfig) -> None:
    _choice(cfg, "sched.name", SCHEDULERS)
    epochs = _get(cfg, "trainer.epochs")
    _num(cfg, "sched.warmup_epochs", lambda v: 0 <= v <= epochs, f"in [0, trainer.epochs={epochs}]")
    _num(cfg, "sched.min_lr", lambda v: v >= 0, ">= 0")
    _num(cfg, "sched.warmup_lr", lambda v: v >= 0, ">= 0")
    _num(cfg, "sched.cooldown_epochs", lambda v: v >= 0, ">= 0")
    prefix = _get(cfg, "sched.warmup_prefix")
    if prefix and _get(cfg, "sched.name") != "cosine":
        raise ConfigError(f"sched.warmup_prefix=true with sched.name={_get(cfg, 'sched.name')!r}; allowed: cosine")
    if _get(cfg, "sched.name") == "onecycle":
        for key in ("sched.warmup_epochs", "sched.cooldown_epochs"):
            _num(cfg, key, lambda v: v == 0, "0 with sched.name=onecycle (its warm-up: sched.kwargs.pct_start)")
    decay = epochs - _get(cfg, "sched.cooldown_epochs") - (_get(cfg, "sched.warmup_epochs") if prefix else 0)
    if decay < 1:
        raise ConfigError(
            f"sched.cooldown_epochs={_get(cfg, 'sched.cooldown_epochs')} leaves {decay} decay epochs of "
            f"trainer.epochs={epochs}; allowed: epochs - cooldown_epochs (- warmup_epochs with warmup_prefix) >= 1"
        )


def _check_aug(cfg: DictConfig) -> None:
    for key in ("aug.mixup", "aug.cutmix"):
        _num(cfg, key, lambda v: v >= 0, ">= 0 (0 disables)")
    for key in ("aug.mixup_prob", "aug.switch_prob", "aug.reprob", "aug.hflip"):
        _num(cfg, key, lambda v: 0 <= v <= 1, "in [0, 1]")
    _num(cfg, "aug.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)")
    _num(cfg, "aug.pad_crop", lambda v: v >= 0, ">= 0 (0 disables)")
    interp = _get(cfg, "aug.train_interpolation")
    if interp is not None and interp not in TRAIN_INTERPOLATIONS:
        raise ConfigError(
            f"aug.train_interpolation={interp!r} is not supported; "
            f"allowed: {', '.join(TRAIN_INTERPOLATIONS)}, null (= data.interpolation)"
        )


def _check_trainer(cfg: DictConfig) -> None:
    import torch

    _num(cfg, "trainer.epochs", lambda v: v >= 1, ">= 1")
    _num(cfg, "trainer.batch_size", lambda v: v >= 1, ">= 1")
    _num(cfg, "trainer.val_batch_size", lambda v: v >= 1, ">= 1 or null")
    _num(cfg, "trainer.accum", lambda v: v >= 1, ">= 1")
    _num(cfg, "trainer.keep_last", lambda v: v >= 0, ">= 0")
    _num(cfg, "trainer.val_interval", lambda v: v >= 1, ">= 1")
    _num(cfg, "trainer.ckpt_interval_steps", lambda v: v >= 0, ">= 0 (0 = off)")
    _num(cfg, "trainer.max_epochs_per_run", lambda v: v >= 1, ">= 1 or null")
    _num(cfg, "trainer.clip_grad", lambda v: v > 0, "> 0 or null (off)")
    _num(cfg, "trainer.seed", lambda v: v >= 0, ">= 0")
    _num(cfg, "trainer.dist_timeout_s", lambda v: v >= 1, ">= 1 (seconds)")
    _num(cfg, "trainer.repulsive.weight", lambda v: v >= 0, ">= 0 (0 disables)")
    _num(cfg, "trainer.repulsive.start_epoch", lambda v: v >= 0, ">= 0")
    _choice(cfg, "trainer.clip_mode", CLIP_MODES)
    _choice(cfg, "trainer.loss", LOSSES)
    _choice(cfg, "trainer.resume_schedule", RESUME_SCHEDULES)
    dist_bn = _get(cfg, "trainer.dist_bn")
    if dist_bn not in DIST_BN:
        raise ConfigError(f"trainer.dist_bn={dist_bn!r} is not supported; allowed: reduce, broadcast, '' (off)")
    amp = _get(cfg, "trainer.amp")
    key = "none" if amp in (None, False) else str(amp).lower()
    if key not in AMP_DTYPES:
        raise ConfigError(f"trainer.amp={amp!r} is not supported; allowed: none, bf16, fp16")
    if _get(cfg, "trainer.ema.enabled"):
        _num(cfg, "trainer.ema.decay", lambda v: 0 < v < 1, "in (0, 1)")
    device = str(_get(cfg, "trainer.device"))
    try:
        dev = torch.device("cpu" if device == "auto" else device)
    except RuntimeError:
        raise ConfigError(f"trainer.device={device!r} is not a device; allowed: auto, cpu, cuda, cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={device!r} but CUDA is not available; allowed: auto, cpu")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"trainer.device={device!r} is not supported; allowed: auto, cpu, cuda, cuda:N")
    resume = _get(cfg, "trainer.resume")
    if resume and not Path(str(resume)).is_file():
        raise ConfigError(f"trainer.resume={resume!r} is not a file; allowed: a checkpoint path or null")
    if _get(cfg, "trainer.output_dir") in (None, ""):
        raise ConfigError("trainer.output_dir=None is required; allowed: a directory path")


def _check_snn(cfg: DictConfig) -> None:
    """σ schedule values in range; an SNN model trains without EMA, AMP, mixup/cutmix or label smoothing."""
    if _get(cfg, "trainer.sigma_schedule.enabled"):
        _num(cfg, "trainer.sigma_schedule.start", lambda v: v > 0, "> 0 or null (= dilated_kernel_size // 2)")
        _num(cfg, "trainer.sigma_schedule.end", lambda v: v > 0, "> 0")
        _num(cfg, "trainer.sigma_schedule.until", lambda v: 0 <= v <= 1, "in [0, 1] (a fraction of trainer.epochs)")
    name = _get(cfg, "model.name")
    if name not in SNN_MODELS:
        return
    on = {
        "trainer.ema.enabled": bool(_get(cfg, "trainer.ema.enabled")),
        "trainer.amp": amp_dtype(_get(cfg, "trainer.amp")) is not None,
        "aug.mixup": (_get(cfg, "aug.mixup") or 0) > 0,
        "aug.cutmix": (_get(cfg, "aug.cutmix") or 0) > 0,
        "aug.label_smoothing": (_get(cfg, "aug.label_smoothing") or 0) > 0,
    }
    for key, value in on.items():
        if value:
            raise ConfigError(
                f"{key}={_get(cfg, key)!r} with model.name={name}; allowed: off (SNN runs train without EMA, AMP, "
                "mixup/cutmix and label smoothing, as SNN-delays)"
            )


def _check_logger(cfg: DictConfig) -> None:
    mode = _get(cfg, "logger.wandb_mode")
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(f"logger.wandb_mode={mode!r} is not supported; allowed: {', '.join(WANDB_MODES)}, null")
    _num(cfg, "logger.log_interval", lambda v: v >= 1, ">= 1")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first value that cannot work, before anything expensive runs."""
    for section in ("model", "data", "optim", "sched", "aug", "trainer", "logger"):
        if OmegaConf.select(cfg, section) is None:
            raise ConfigError(f"{section}=None: the config has no '{section}' section; allowed: a {section}/ group")
    _check_trainer(cfg)
    _check_optim(cfg)
    _check_sched(cfg)
    _check_aug(cfg)
    _check_logger(cfg)
    _check_snn(cfg)
    _check_data(cfg)
    _check_model(cfg)


_TYPE_WORDS = (
    ("to Integer", "an integer"),
    ("to Float", "a number"),
    ("valid bool", "true or false"),
    ("ListConfig, list or tuple", "a list, e.g. [a,b]"),
    ("DictConfig", "a mapping, e.g. {a: 1}"),
    ("to String", "a string"),
    ("Enum", "one of the enum's names"),
)


def composition_error_line(err: BaseException) -> str | None:
    """One line ``key=value problem; allowed: ...`` for a schema type error or unknown key, else None.

    Hydra raises these while composing (a ``trainer.epochs=abc`` override, a typo'd key); the OmegaConf error
    that caused it carries the key, the value and the schema type (dcls_vision/engine/schema.py).
    """
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

    while err is not None and not isinstance(err, (ValidationError, ConfigAttributeError, ConfigKeyError)):
        err = err.__cause__
    if err is None or not getattr(err, "full_key", None):
        return None
    key, msg = err.full_key, str(getattr(err, "msg", err)).splitlines()[0]
    if isinstance(err, ValidationError):
        allowed = next((word for pattern, word in _TYPE_WORDS if pattern in msg), msg)
        return f"{key}={err.value!r} has the wrong type; allowed: {allowed}"
    owner = getattr(err, "object_type", None)
    if dataclasses.is_dataclass(owner):
        keys = ", ".join(f.name for f in dataclasses.fields(owner))
        return f"{key} is not a config key; allowed: {keys} (dcls_vision/engine/schema.py {owner.__name__})"
    return f"{key} is not in the config; allowed: +{key}=... to add a key to this open mapping"


_FULL_ERROR_SET_HERE: list[bool] = [False]  # HYDRA_FULL_ERROR set by one_line_composition_errors, not the user


@contextlib.contextmanager
def one_line_composition_errors(label: str = "ConfigError") -> Iterator[None]:
    """Wrap a ``@hydra.main`` call: a composition error becomes one ``label: key=value ...`` line and exit 2.

    Hydra prints such errors over several lines and exits 1; with HYDRA_FULL_ERROR it raises them instead, so it
    is set here, and the task function calls :func:`release_composition_errors` first: errors of the run itself
    keep Hydra's usual report. A user's own HYDRA_FULL_ERROR is left alone (full tracebacks, as asked).
    """
    if "HYDRA_FULL_ERROR" not in os.environ:
        os.environ["HYDRA_FULL_ERROR"] = "1"
        _FULL_ERROR_SET_HERE[0] = True
    try:
        yield
    except Exception as e:
        if not _FULL_ERROR_SET_HERE[0]:  # the user's HYDRA_FULL_ERROR, or raised after composition
            raise
        line = composition_error_line(e)
        if line is not None:
            print(f"{label}: {line}", file=sys.stderr)
            sys.exit(2)
        from hydra.errors import CompactHydraException

        if not isinstance(e, CompactHydraException):
            raise
        print(re.sub(r"\s*\n\s*", " ", f"{e} {e.__cause__ or ''}").strip(), file=sys.stderr)  # Hydra's text
        sys.exit(1)
    finally:
        release_composition_errors()


def release_composition_errors() -> None:
    """Composition is over: Hydra reports later errors its usual way (see :func:`one_line_composition_errors`)."""
    if _FULL_ERROR_SET_HERE[0]:
        os.environ.pop("HYDRA_FULL_ERROR", None)
        _FULL_ERROR_SET_HERE[0] = False
