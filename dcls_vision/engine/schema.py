"""Typed schemas of the training config: every default lives here, once; configs/*/*.yaml only override.

One dataclass per config group file (``configs/<group>/<option>.yaml`` starts with ``defaults: [base_<...>,
_self_]``); :func:`register_configs` puts them in Hydra's ConfigStore and must run before any composition
(``dcls_vision.engine`` calls it at import; train.py calls it before ``@hydra.main``). The types make a
wrong-type override fail at composition (train.py turns it into one ``ConfigError`` line, exit 2); the range
and cross-field rules are in :mod:`dcls_vision.engine.config`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from .optim import POSITION_LR_SCALE


@dataclass
class ModelSpecConfig:
    """``timm.create_model(name, drop_path_rate=..., **kwargs)``; kwargs is open: ``+model.kwargs.dim=16``.

    Shared by train.py (:class:`ModelConfig`) and eval.py (``dcls_vision.robustness.schema``).
    """

    name: str = MISSING
    drop_path_rate: float | None = None  # null = the model's default
    kwargs: dict[str, Any] = field(default_factory=dict)
    # timm baselines: timm's own weights from a local file (.safetensors, .bin, .pth), loaded by timm
    # (pretrained_cfg_overlay file=); a different num_classes drops the head. Nothing is ever downloaded.
    pretrained_file: str | None = None


@dataclass
class ModelConfig(ModelSpecConfig):
    """train.py's model group: the network and, to fine-tune, the weights a NEW run starts from."""

    # a checkpoint of any format (ours, a release, a plain/wrapped state dict, safetensors): fresh optimizer,
    # schedule and epoch; the classifier is skipped (reported) when num_classes differs. A run dir's own
    # last.pth and trainer.resume win over it.
    init_checkpoint: str | None = None
    # the recipe's choice of start, made explicit: false = the recipe starts from pretrained weights (the thesis'
    # ImageNet start of the AudioSet ConvNeXt-T / ConvFormer-S18): init_checkpoint must be given; true = from
    # scratch on purpose (init_checkpoint must then be empty); null = no rule (every other experiment)
    from_scratch: bool | None = None


@dataclass
class DataConfig:
    """Keys every dataset has; the options (configs/data/*.yaml) set their own values."""

    name: str = MISSING  # fashion_mnist | imagefolder | audioset | spikes (dcls_vision.data.builder)
    root: str = MISSING  # relative paths resolve against the directory the program started from
    train_subset: int | None = None  # int N: deterministic class-stratified subset (seed 0)
    val_subset: int | None = None
    num_classes: int | None = None  # null = as found in the dataset (checked against it when set)
    in_chans: int = 3
    img_size: int = 224
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    interpolation: str = "bicubic"
    crop_pct: float | None = None  # eval centre crop; null = 0.875 (data.transforms.DEFAULT_CROP_PCT)
    num_workers: int = 0


@dataclass
class FashionMNISTDataConfig(DataConfig):
    """configs/data/fashion_mnist.yaml: the IDX .gz files of the Debian package ``dataset-fashion-mnist``."""

    name: str = "fashion_mnist"
    source: str = "/usr/share/datasets/fashion-mnist"  # where the four *-ubyte.gz files are


@dataclass
class ImageFolderDataConfig(DataConfig):
    """configs/data/imagenet.yaml: ``<root>/<train_dir>/<class>/*`` and ``<root>/<val_dir>/<class>/*``."""

    name: str = "imagefolder"
    train_dir: str = "train"
    val_dir: str = "val"
    test_img_size: int | None = None  # validation crop size; null = img_size


@dataclass
class AudioSetDataConfig(DataConfig):
    """configs/data/audioset*.yaml: AudioSet-style multi-label clips (dcls_vision/data/audio.py), 10 s at 32 kHz.

    ``mean``/``std`` are of the dB mel; [] = computed once from the training set (cached in data.root).
    """

    name: str = "audioset"
    # folder (segments CSV + clips) | arrays (<split>_data.npy + <split>_targets.npy) | hdf5 (PANNs <split>.h5)
    format: str = "folder"
    embedded: bool = False  # true: generate the espeak-ng word set into data.root on first use
    # <split>_segments.csv, audio/<split>/ (folder), <split>_data.npy (arrays) or <split>.h5 (hdf5: several joined
    # by '+', globs allowed, e.g. balanced_train+unbalanced_train_part*)
    train_split: str = "train"
    val_split: str = "eval"
    labels_csv: str = "class_labels_indices.csv"
    audio_dir: str = "audio"
    in_chans: int = 1
    mean: list[float] = field(default_factory=list)  # [] = computed from the training set (cached in data.root)
    std: list[float] = field(default_factory=list)
    stats_clips: int = 1000  # clips (evenly spaced) used for the training-set mean/std
    roll: bool = True  # training: random circular shift of the waveform
    speed_p: float = 0.5  # training: speed perturbation probability, rate in speed_rates
    speed_rates: list[float] = field(default_factory=lambda: [0.5, 1.5])


@dataclass
class SpikesDataConfig(DataConfig):
    """configs/data/{spiking_digits,shd,ssc,gsc}.yaml: spiking audio for SNNs (dcls_vision/data/spikes.py, gsc.py).

    Samples are ``(x, y)``, x float32 (num_steps, in_chans) time-major; in_chans = 700 // channel_group (shd, ssc)
    or 140 mel bands (gsc).
    """

    name: str = "spikes"
    format: str = "shd"  # shd (shd_{train,test}.h5) | ssc (ssc_{train,valid,test}.h5) | gsc (speech_commands_v0.02)
    embedded: bool = False  # true (format shd): generate the espeak-ng spiking-digits set into data.root on first use
    train_split: str = "train"
    val_split: str = "test"  # shd has no validation file: the reference validates on test (main.py:27-29)
    dt_ms: float = 10.0  # time bin (best_config_*.py:20 time_step)
    channel_group: int = 5  # 700 units summed in groups of 5 -> 140 (best_config_*.py:21 n_bins)
    num_steps: int | None = None  # bins per sample; null = the longest sample of the two splits (nothing cropped)
    in_chans: int = 140
    mean: list[float] = field(default_factory=list)  # unused: spike counts / dB mel go to the model as they are
    std: list[float] = field(default_factory=list)


@dataclass
class PositionOptimConfig:
    """optim.positions: the DCLS positions' own optimizer and schedule (engine/grouped.py); SNN-delays' recipe."""

    name: str = "adam"  # SNN-delays model.py:46 optim.Adam(positions, lr=lr_pos, weight_decay=0)
    lr: float = 0.1  # best_config_SHD.py:69 lr_pos = 100 * lr_w
    weight_decay: float = 0.0
    betas: list[float] | None = None  # null = optimizer default
    eps: float | None = None
    sched: str = "cosine"  # best_config_SHD.py:73 'cosine_a': CosineAnnealingLR(T_max=epochs) down to min_lr
    min_lr: float = 0.0
    step_on_epochs: bool = True  # model.py:265 schedulers step once per epoch
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    """timm optimizer; lr is for the recipe's global batch ``lr_base_batch``, rescaled by ``lr_scale_rule``."""

    name: str = MISSING  # adamw | lamb | sgd | momentum | any timm.optim.list_optimizers()
    lr: float = MISSING
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: list[float] | None = None  # null = optimizer default
    eps: float | None = None
    pos_lr_scale: float = POSITION_LR_SCALE  # DCLS positions/sigma: lr x this, weight decay 0 (also under layer_decay)
    layer_decay: float | None = None  # e.g. 0.7: lr x layer_decay^(depth - layer)
    # global batch (processes x batch_size x accum) that lr is for; another global batch rescales lr (one log
    # line says so); null = lr used as given
    lr_base_batch: int | None = None
    # linear | sqrt (lr x ratio or x sqrt(ratio)); null = timm train.py's rule: sqrt for Adam-family/LAMB, else linear
    lr_scale_rule: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    # null: positions/sigma train in this optimizer at lr x pos_lr_scale, same schedule; set: their own optimizer
    # and scheduler (PositionOptimConfig), as the SNN-delays recipe
    positions: PositionOptimConfig | None = None


@dataclass
class SchedConfig:
    """timm create_scheduler_v2, updated every optimizer step unless step_on_epochs; warm-up in epochs.

    trainer.epochs is the whole run: the decay spans epochs - cooldown_epochs (- warmup_epochs with warmup_prefix).
    """

    # cosine | tanh | step | multistep | poly | constant | wsd | rsqrt | onecycle (torch OneCycleLR peaking at
    # optim.lr; its kwargs pct_start, div_factor, final_div_factor, cycle_momentum) | none
    name: str = MISSING
    warmup_epochs: int = 0
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    cooldown_epochs: int = 0  # last epochs at min_lr (timm train.py's --cooldown-epochs, counted in trainer.epochs)
    step_on_epochs: bool = False
    # true (cosine only): ConvNeXt/DCLS utils.cosine_scheduler: warm-up reaching lr at its last step, then the
    # cosine over the remaining epochs; false: timm's default, cosine over all epochs with the warm-up on top
    warmup_prefix: bool = False
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class AugConfig:
    """Train transforms (dcls_vision.data) and mixup / label smoothing (trainer); the default is no augmentation."""

    auto_augment: str | None = None  # e.g. rand-m9-mstd0.5-inc1
    reprob: float = 0.0  # random erasing probability
    remode: str = "pixel"
    hflip: float = 0.0
    scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    color_jitter: float = 0.0  # ignored by timm when auto_augment is set
    pad_crop: int = 0  # small images: random shift by up to N px (zero padding)
    mixup: float = 0.0  # alpha; 0 disables
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    switch_prob: float = 0.5
    mixup_mode: str = "batch"
    label_smoothing: float = 0.0
    # ImageNet-style data: resize interpolation of the train crop (timm's --train-interpolation; 'random' picks
    # bilinear or bicubic per image); null = data.interpolation (which the eval transform uses)
    train_interpolation: str | None = None


@dataclass
class EmaConfig:
    enabled: bool = False
    decay: float = 0.9999
    warmup: bool = False
    device: str | None = None  # null = same device as the model


@dataclass
class RepulsiveConfig:
    """loss += weight * R^2 from 0-based epoch start_epoch on. Off by default; bilinear DCLS experiments set weight 1.

    21 = the DCLS reference codes' ``if epoch > 20`` (0-based epochs): first applied in the 22nd epoch.
    """

    weight: float = 0.0
    start_epoch: int = 21


@dataclass
class SigmaScheduleConfig:
    """trainer.sigma_schedule: frozen DCLS σ set at each epoch's start, a closed form of the epoch (resumes exactly).

    σ(e) = start · (end/start)^(min(e, E)/E), E = int(until · trainer.epochs); E = 0: σ = end throughout. SNN-delays
    snn_delays.py:183-199 (``decrease_sig``, 'exp') with best_config_SHD.py:96-97 (sigInit = max_delay // 2,
    final_epoch = epochs // 4); the stored 0.23 is 0.5 effective with σ0 = 0.27 (ops/interpolation.py).
    """

    enabled: bool = False
    start: float | None = None  # null = each DCLS layer's dilated_kernel_size[0] // 2
    end: float = 0.23
    until: float = 0.25  # fraction of trainer.epochs


@dataclass
class TrainerConfig:
    """Runtime. The global batch is batch_size (per process) x number of processes x accum."""

    epochs: int = 300
    batch_size: int = 128  # per process (per GPU)
    val_batch_size: int | None = None  # null = batch_size
    # gradient accumulation micro-batches per optimizer step (an epoch's leftover micro-batches make a last,
    # shorter update; loss / its own count)
    accum: int = 1
    amp: str | None = "none"  # none | bf16 | fp16 (fp16 uses torch.amp.GradScaler)
    channels_last: bool = True
    clip_grad: float | None = None  # null = off
    clip_mode: str = "norm"  # norm | value | agc
    loss: str = "ce"  # ce | bce (timm BinaryCrossEntropy)
    bce_target_thresh: float | None = None
    head_bias_prior: bool = False  # multi-label: classifier bias = logit of each label's training frequency
    ema: EmaConfig = field(default_factory=EmaConfig)
    repulsive: RepulsiveConfig = field(default_factory=RepulsiveConfig)
    sync_bn: bool = False  # >1 process: BatchNorm -> torch SyncBatchNorm (CUDA only); then dist_bn is off
    # >1 process: BN running stats before eval/save: reduce (average over ranks) | broadcast (rank 0's)
    # | '' (off: each rank keeps its own); timm's distribute_bn
    dist_bn: str = "reduce"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dist_timeout_s: int = 1800  # a collective waiting longer for a peer (dead/frozen node) fails the job
    output_dir: str = "outputs/${experiment_name}/${now:%Y-%m-%d_%H-%M-%S}"
    keep_last: int = 2  # epoch_XXXX.pth files kept (0 = none); last/best/best_ema always kept
    # a checkpoint that seeds a NEW run dir; once <output_dir>/last.pth exists (auto_resume) that wins,
    # so a requeued/re-run job continues its own run
    resume: str | None = None
    auto_resume: bool = True
    # on resume, the LR schedule: checkpoint = the checkpoint's, continued exactly | config = rebuilt from this
    # config at the resumed step (timm --resume with a new --epochs); the log names the keys that differ
    resume_schedule: str = "checkpoint"
    ckpt_interval_steps: int = 0  # also save last.pth every N optimizer steps mid-epoch (0 = off)
    max_epochs_per_run: int | None = None  # stop after N epochs in this invocation; resume continues
    # evaluate the starting weights (model.init_checkpoint, or the run dir's checkpoint) on the val split and stop:
    # no training, no checkpoint written (e.g. a published AudioSet model's mAP on the user's eval set)
    eval_only: bool = False
    # validate every N epochs (and always after the last one); short many-epoch runs spend most time in eval otherwise
    val_interval: int = 1
    compile: bool = False  # torch.compile the training forward/backward (timm's --torchcompile; inductor)
    cudnn_benchmark: bool = True  # torch.backends.cudnn.benchmark (as timm's train.py)
    tf32: bool = True  # TF32 matmuls/convolutions on Ampere+ GPUs (torch.backends.{cuda.matmul,cudnn}.allow_tf32)
    sigma_schedule: SigmaScheduleConfig = field(default_factory=SigmaScheduleConfig)
    # CPU: flush denormal floats to zero while training (torch.set_flush_denormal); decaying LIF potentials
    # otherwise make a CPU SNN run ~5x slower
    flush_denormal: bool = False


@dataclass
class LoggerConfig:
    """Console, metrics.jsonl and W&B."""

    wandb: bool = True  # false disables W&B
    wandb_mode: str | None = None  # online | offline | disabled; null = $WANDB_MODE, else offline
    project: str = "dcls-vision"
    entity: str | None = None
    name: str = "${experiment_name}"
    log_interval: int = 50  # optimizer steps between progress lines (stdout, log.txt) and W&B train/* points
    progress: bool | None = None  # tqdm bars: null = when stderr is a TTY (rank 0 only)


@dataclass
class Config:
    """configs/config.yaml: the groups, each filled by its option file."""

    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    optim: OptimConfig = MISSING
    sched: SchedConfig = MISSING
    aug: AugConfig = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    experiment_name: str = "${model.name}"


# (group, name, schema): configs/<group>/<option>.yaml starts with ``defaults: [<name>, _self_]``
SCHEMAS: tuple[tuple[str | None, str, type], ...] = (
    (None, "base_config", Config),
    ("model", "base_model", ModelConfig),
    ("data", "base_fashion_mnist", FashionMNISTDataConfig),
    ("data", "base_imagefolder", ImageFolderDataConfig),
    ("data", "base_audioset", AudioSetDataConfig),
    ("data", "base_spikes", SpikesDataConfig),
    ("optim", "base_optim", OptimConfig),
    ("sched", "base_sched", SchedConfig),
    ("aug", "base_aug", AugConfig),
    ("trainer", "base_trainer", TrainerConfig),
    ("logger", "base_logger", LoggerConfig),
)


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent); call before ``compose``/``@hydra.main``."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, name, node in SCHEMAS:
        cs.store(group=group, name=name, node=node)


def load_option(path: str | Path) -> DictConfig:
    """One group option file (e.g. configs/data/fashion_mnist.yaml) merged onto its schema, as Hydra composes it.

    For code that reads a single option without composing the whole config (tests, robustness/fashion_folder.py).
    """
    raw = OmegaConf.load(path)
    bases = [d for d in OmegaConf.to_container(raw.pop("defaults", [])) if d != "_self_"]
    schemas = {name: node for _, name, node in SCHEMAS}
    if len(bases) != 1 or bases[0] not in schemas:
        raise ValueError(f"{path}: defaults={bases!r}; allowed: [<one of {', '.join(schemas)}>, _self_]")
    return OmegaConf.merge(OmegaConf.structured(schemas[bases[0]]), raw)
