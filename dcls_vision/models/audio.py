"""Audio-tagging variants (thesis ch. 5, DCLS-Audio repository): the image models on a (128 mel x 1001 frame) input.

Every model keeps its timm (or DCLS zoo) body and swaps its stem for one common convolution of kernel (2, 16)
and stride (2, 16) on the single-channel dB mel spectrogram, giving (64, 62) maps; 527 AudioSet classes by default.
As the reference code: ConvNeXt-T keeps its stem LayerNorm and the conv has a bias; ConvFormer-S18 keeps its stem
norm and the conv has no bias; FastViT-SA24's whole MobileOne stem becomes the bias-free conv. Parameter counts
with a 1000-way head match the DCLS-Audio table (ConvNeXt-T 28.6M, ConvFormer-S18 26.8M, FastViT-SA24 21.5M; the
table counts a 1000-way head); with the 527-way AudioSet head they are 28.2M / 25.8M / 21.1M, each DCLS variant at
or below its baseline. FastViT-SA24-dcls replaces, as the reference's ``replace_depthwise_dcls`` (DCLS-Audio
models/fastvit.py:977-1009, every 7x7 depthwise conv), the ConvMlp convs *and* the RepCPE positional 7x7 conv of
stage 3, which shares that stage's positions/sigma (21,016,655 parameters at 527 classes); its layer-scale starts at
1e-6 (main.py:72-76 passes ``layer_scale_init_value=1e-6`` to every model; timm's FastViT default is 1e-5; ConvNeXt's
is already 1e-6 and ConvFormer-S18 has none). ``dcls_quickstart_audio`` / ``_baseline`` are the small CPU nets of
the embedded audio set.
"""

from __future__ import annotations

from typing import Any

import timm
from timm.layers import trunc_normal_
from timm.models import register_model
from torch import Tensor, nn

from .hub import load_pretrained_source
from .quickstart import QuickstartNet
from .zoo import create_dcls_model

AUDIO_STEM = (2, 16)  # kernel = stride (mel, time)
AUDIO_INPUT = (1, 128, 1001)  # 10 s at 32 kHz, hop 320, 128 mel bands
AUDIOSET_CLASSES = 527
# dB mel mean/std of the AudioSet balanced training set (DCLS-Audio datasets.py)
AUDIOSET_MEAN, AUDIOSET_STD = (-18.2696,), (30.5735,)
FASTVIT_LAYER_SCALE = 1e-6  # DCLS-Audio main.py:72-76 (--layer_scale_init_value default), passed at main.py:414

# name -> (family, DCLS zoo variant or None for the dense timm base, timm base)
AUDIO_MODELS: dict[str, tuple[str, str | None, str]] = {
    "convnext_tiny_audio": ("convnext", None, "convnext_tiny"),
    "convnext_tiny_dcls_audio": ("convnext", "convnext_tiny_dcls_gauss", "convnext_tiny"),
    "convformer_s18_audio": ("metaformer", None, "convformer_s18"),
    "convformer_s18_dcls_audio": ("metaformer", "convformer_s18_dcls_gauss", "convformer_s18"),
    "fastvit_sa24_audio": ("fastvit", None, "fastvit_sa24"),
    "fastvit_sa24_dcls_audio": ("fastvit", "fastvit_sa24_dcls", "fastvit_sa24"),
}


def audio_stem(out_chans: int, bias: bool) -> nn.Conv2d:
    """The common (2, 16) / stride (2, 16) stem convolution on one input channel (trunc-normal 0.02 init)."""
    conv = nn.Conv2d(1, out_chans, kernel_size=AUDIO_STEM, stride=AUDIO_STEM, bias=bias)
    trunc_normal_(conv.weight, std=0.02)
    if bias:
        nn.init.zeros_(conv.bias)
    return conv


def swap_stem(model: nn.Module, family: str) -> str:
    """Replace the stem of a timm ``family`` model by :func:`audio_stem`; returns the new first conv's name."""
    if family == "convnext":
        model.stem[0] = audio_stem(model.stem[0].out_channels, bias=True)
        return "stem.0"
    if family == "metaformer":
        model.stem.conv = audio_stem(model.stem.conv.out_channels, bias=False)
        return "stem.conv"
    if family == "fastvit":
        model.stem = audio_stem(_fastvit_stem_width(model), bias=False)
        return "stem"
    raise ValueError(f"family={family!r} has no audio stem; allowed: convnext, metaformer, fastvit")


def _fastvit_stem_width(model: nn.Module) -> int:
    """Output channels of FastViT's MobileOne stem (its last block's conv output)."""
    convs = [m for m in model.stem.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _audio_cfg(first_conv: str, num_classes: int) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": num_classes,
        "input_size": AUDIO_INPUT,
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": AUDIOSET_MEAN,
        "std": AUDIOSET_STD,
        "first_conv": first_conv,
        "classifier": "head.fc",
    }


def create_audio_model(name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """Build audio model ``name`` (timm kwargs; ``dcls_*`` kwargs for DCLS variants), stem swapped, 527 classes."""
    family, variant, base = AUDIO_MODELS[name]
    source = kwargs.pop("pretrained_cfg", None)  # a Hub source (local-dir: / hf-hub:) when pretrained=True
    for key in ("pretrained_cfg_overlay", "cache_dir", "pretrained_model_args"):
        kwargs.pop(key, None)
    kwargs.setdefault("num_classes", AUDIOSET_CLASSES)
    in_chans = kwargs.pop("in_chans", 1)
    if in_chans != 1:
        raise ValueError(f"{name}: in_chans={in_chans} is not supported; allowed: 1 (a mono mel spectrogram)")
    if family == "fastvit":
        kwargs.setdefault("layer_scale_init_value", FASTVIT_LAYER_SCALE)
        if variant:
            kwargs.setdefault("dcls_exclude", ())  # the RepCPE conv too, as the reference
    model = create_dcls_model(variant, **kwargs) if variant else timm.create_model(base, pretrained=False, **kwargs)
    first = swap_stem(model, family)
    model.pretrained_cfg = model.default_cfg = _audio_cfg(first, int(kwargs["num_classes"]))
    if pretrained:  # ImageNet initialisation goes through model.init_checkpoint=<path> instead
        load_pretrained_source(model, name, source)
    return model


@register_model
def convnext_tiny_audio(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ConvNeXt-T on mel spectrograms, (2,16) stem (28.6M with 527 classes)."""
    return create_audio_model("convnext_tiny_audio", pretrained, **kwargs)


@register_model
def convnext_tiny_dcls_audio(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ConvNeXt-T, depthwise 7x7 -> DCLS Gauss 23/26, (2,16) stem (28.6M)."""
    return create_audio_model("convnext_tiny_dcls_audio", pretrained, **kwargs)


@register_model
def convformer_s18_audio(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ConvFormer-S18 on mel spectrograms, (2,16) stem (26.8M)."""
    return create_audio_model("convformer_s18_audio", pretrained, **kwargs)


@register_model
def convformer_s18_dcls_audio(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ConvFormer-S18, depthwise 7x7 -> DCLS Gauss 23/26, (2,16) stem (26.8M)."""
    return create_audio_model("convformer_s18_dcls_audio", pretrained, **kwargs)


@register_model
def fastvit_sa24_audio(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """FastViT-SA24 on mel spectrograms, (2,16) stem instead of the MobileOne stem (21.5M)."""
    return create_audio_model("fastvit_sa24_audio", pretrained, **kwargs)


@register_model
def fastvit_sa24_dcls_audio(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """FastViT-SA24, ConvMlp and RepCPE depthwise 7x7 -> DCLS Gauss 23/26, (2,16) stem (21.5M)."""
    return create_audio_model("fastvit_sa24_dcls_audio", pretrained, **kwargs)


class QuickstartAudioNet(QuickstartNet):
    """The quickstart net on a mel spectrogram: (2,16) stem without its LayerNorm, a head that keeps frequency.

    Why (issue 18, the first version did not learn: val AUC ~50 % while a logistic regression on per-band time
    statistics reached ~35 % mAP): a per-position LayerNorm over the stem's few channels erases the loudness of
    each patch (speech vs noise, the main cue), and a global max over frequency makes a 16-channel net blind to
    *where* in the spectrum a pattern is. Here the features are max-pooled over time only (a word fills ~3 of
    the 62 steps), LayerNorm-ed per mel row and the head reads all ``dim x 64`` of them.
    """

    def __init__(self, freq_rows: int = AUDIO_INPUT[1] // AUDIO_STEM[0], **kwargs: Any) -> None:
        super().__init__(**{**kwargs, "global_pool": "max", "in_chans": 1})
        dim = self.stem[0].out_channels
        self.stem = nn.Sequential(audio_stem(dim, bias=True))
        self.freq_rows, self.global_pool = freq_rows, "time_max"
        self.num_features = self.head_hidden_size = dim * freq_rows
        self.reset_classifier(self.num_classes)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool not in (None, "time_max"):
            raise ValueError(f"global_pool={global_pool!r} is not supported here; allowed: 'time_max'")
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.norm(x.amax(-1).transpose(1, 2)).flatten(1)  # (N, C, F, T) -> (N, F*C), LN over C per row
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)


def _quickstart_audio(name: str, pretrained: bool, dcls: bool, kwargs: dict[str, Any]) -> QuickstartNet:
    """The quickstart net with the audio stem: (1, 128, 1001) -> (dim, 64, 62) -> time max -> head."""
    source = kwargs.pop("pretrained_cfg", None)  # a Hub source (local-dir: / hf-hub:) when pretrained=True
    for key in ("pretrained_cfg_overlay", "cache_dir", "pretrained_model_args"):  # passed by timm.create_model
        kwargs.pop(key, None)
    kwargs.pop("in_chans", None)
    model = QuickstartAudioNet(**{"dcls": dcls, **kwargs})
    model.pretrained_cfg = model.default_cfg = _audio_cfg("stem.0", model.num_classes) | {"classifier": "head"}
    if pretrained:
        load_pretrained_source(model, name, source)
    return model


@register_model
def dcls_quickstart_audio(pretrained: bool = False, **kwargs: Any) -> QuickstartNet:
    """Small DCLS-gauss net for the embedded audio set (CPU minutes)."""
    return _quickstart_audio("dcls_quickstart_audio", pretrained, True, kwargs)


@register_model
def dcls_quickstart_audio_baseline(pretrained: bool = False, **kwargs: Any) -> QuickstartNet:
    """The same net with dense depthwise convs, parameter count matched."""
    return _quickstart_audio("dcls_quickstart_audio_baseline", pretrained, False, kwargs)
