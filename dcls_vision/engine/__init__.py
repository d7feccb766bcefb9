"""Training engine: optimizer groups, repulsive loss, EMA, checkpoints, distributed set-up and the train loop.

``optim``, ``repulsive``, ``checkpoint`` and ``distributed`` have no Hydra dependency (the mmdet/mmseg
integration reuses them); ``train(cfg)`` takes a composed Hydra/OmegaConf config.
"""

from .checkpoint import atomic_save, load_checkpoint
from .config import ConfigError, validate_config
from .distributed import init_distributed
from .evaluate import evaluate
from .optim import apply_lr_scale, create_optimizer, create_scheduler, param_groups
from .repulsive import repulsive_loss, repulsive_term
from .schema import register_configs
from .train_step import NonFiniteLossError
from .trainer import Trainer, train

register_configs()  # the config schemas, before any Hydra composition

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "Trainer",
    "apply_lr_scale",
    "atomic_save",
    "create_optimizer",
    "create_scheduler",
    "evaluate",
    "init_distributed",
    "load_checkpoint",
    "param_groups",
    "register_configs",
    "repulsive_loss",
    "repulsive_term",
    "train",
    "validate_config",
]
