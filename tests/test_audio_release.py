"""Issue 28.6: DCLS-Audio's published AudioSet checkpoints load into our ``*_dcls_audio`` models with equal outputs
(the reference layouts built in audio_release_reference.py from that repository's model code with the ``dcls``
0.1.1 layers), and fine-tuning (``model.init_checkpoint``) starts from them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from audio_release_reference import AudioConvFormer, audio_convnext, checkpoint, perturb, ref_dcls

from dcls_vision.models import ModelLoadError, load_model
from dcls_vision.models.factory import build_model
from dcls_vision.models.finetune_init import init_from_checkpoint
from dcls_vision.ops import Dcls2d

ROOT = Path(__file__).resolve().parents[1]

TINY = {"depths": [1, 1, 2, 1], "dims": [16, 32, 64, 128], "dcls_kernel_count": 10}


def _logits(model: torch.nn.Module, shape=(2, 1, 32, 256)) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model.eval()(x)


def test_convnext_dcls_audio_checkpoint_loads_with_equal_logits(tmp_path: Path) -> None:
    """The image-release reader took this file before (ConvNeXt-dcls layout) and failed on the one-channel stem."""
    ref = audio_convnext(TINY["depths"], TINY["dims"], count=10, num_classes=7).eval()
    checkpoint(ref, tmp_path / "convnext_dcls_audio_tiny.pth", epoch=59)
    loaded = load_model(tmp_path / "convnext_dcls_audio_tiny.pth")
    assert (loaded.name, loaded.model_cfg["kwargs"], loaded.provenance.format) == (
        "convnext_tiny_dcls_audio",
        TINY,
        "audio-release",
    )
    assert (loaded.num_classes, loaded.in_chans, loaded.data.mean) == (7, 1, (-18.2696,))
    expected, got = _logits(ref), _logits(loaded.model)
    assert expected.abs().max() > 0.5 and (expected - got).abs().max() <= 1e-4
    stage = loaded.model.stages[2].blocks
    assert stage[0].conv_dw.positions is stage[1].conv_dw.positions  # one shared tensor per stage, as the file's


def test_convnext_v0_audio_checkpoint_reads_as_bilinear_17(tmp_path: Path) -> None:
    """``convnext_dcls_audio_tiny17``: dcls "v0" 17/34, no SIG: our bilinear interpolation, P[0] on rows."""
    ref = audio_convnext(TINY["depths"], TINY["dims"], count=10, num_classes=7, version="v0").eval()
    checkpoint(ref, tmp_path / "tiny17.pth")
    loaded = load_model(tmp_path / "tiny17.pth")
    assert loaded.model_cfg["kwargs"] == {**TINY, "dcls_interpolation": "bilinear", "dcls_dilated_kernel_size": 17}
    expected, got = _logits(ref), _logits(loaded.model)
    assert expected.abs().max() > 0.5 and (expected - got).abs().max() <= 1e-4


def test_dense_convnext_audio_and_t_size_names(tmp_path: Path) -> None:
    ref = audio_convnext(TINY["depths"], TINY["dims"], count=10, num_classes=7)
    dense = {k: v for k, v in ref.state_dict().items() if not k.endswith((".P", ".SIG"))}
    for k in [k for k in dense if k.endswith("dwconv.weight")]:
        dense[k] = torch.randn(dense[k].shape[0], 1, 7, 7)  # a dense ConvNeXt-T audio layout: 7x7 depthwise
    torch.save({"model": dense}, tmp_path / "dense.pth")
    loaded = load_model(tmp_path / "dense.pth")
    assert loaded.name == "convnext_tiny_audio" and loaded.model_cfg["kwargs"] == {
        "depths": [1, 1, 2, 1],
        "dims": [16, 32, 64, 128],
    }
    t = timm.create_model("convnext_tiny_dcls_audio", num_classes=527).state_dict()  # T size: no kwargs at all
    from dcls_vision.models.audio_release import convert_audio_release

    ref_t = audio_convnext((3, 3, 9, 3), (96, 192, 384, 768), num_classes=527)
    conv = convert_audio_release({"model": ref_t.state_dict()})
    assert conv.model == {"name": "convnext_tiny_dcls_audio", "kwargs": {}} and set(conv.state) == set(t)


@pytest.mark.slow  # ~60 s on 2 loaded cores: the dcls 0.1.1 reference builds 18 Gauss kernels per forward
def test_convformer_dcls_audio_checkpoint_loads_with_equal_logits(tmp_path: Path) -> None:
    ref = AudioConvFormer(num_classes=7).eval()
    checkpoint(ref, tmp_path / "convformer_dcls_audio_s18.pth")
    loaded = load_model(tmp_path / "convformer_dcls_audio_s18.pth")
    assert (loaded.name, loaded.model_cfg["kwargs"]) == ("convformer_s18_dcls_audio", {})
    expected, got = _logits(ref), _logits(loaded.model)
    assert expected.abs().max() > 0.3 and (expected - got).abs().max() <= 1e-4


# timm's fastvit checkpoint_filter_fn reads Apple's ml-fastvit layout (DCLS-Audio models/fastvit.py): its inverse
_TO_ML_FASTVIT = [
    ("conv_kxk", "rbr_conv"),
    ("conv_scale", "rbr_scale"),
    ("identity", "rbr_skip"),
    ("final_conv", "conv_exp"),
    ("large_conv", "lkb_origin"),
    ("mlp", "convffn"),
    ("se.fc1", "se.reduce"),
    ("se.fc2", "se.expand"),
    ("layer_scale_1.gamma", "layer_scale_1"),
    ("layer_scale_2.gamma", "layer_scale_2"),
    ("layer_scale.gamma", "layer_scale"),
]
_NETWORK = {0: 0, 1: 2, 2: 4, 3: 7}  # stage -> network index of its blocks (downsample 1/3/5, RepCPE 6)


def _ml_fastvit_key(key: str) -> str:
    key = re.sub(r"^stem\.", "patch_embed.", key)
    key = re.sub(r"^head\.fc\.", "head.", key)
    key = re.sub(r"^stages\.(\d)\.downsample\.", lambda m: f"network.{2 * int(m[1]) - 1}.", key)
    key = key.replace("stages.3.pos_emb.pos_enc.", "network.6.pe.")
    key = re.sub(r"^stages\.(\d)\.blocks\.", lambda m: f"network.{_NETWORK[int(m[1])]}.", key)
    for ours, theirs in _TO_ML_FASTVIT:
        key = key.replace(ours, theirs)
    return key


def _with_reference_layers(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Swap every Dcls2d of ``model`` for a dcls 0.1.1 gauss layer (P[0] along W: our positions flipped), shared
    per stage as before; returns the state dict in ml-fastvit layout with P/SIG."""
    shared: dict[int, tuple[torch.nn.Parameter, torch.nn.Parameter]] = {}
    for name, conv in [(n, m) for n, m in model.named_modules() if isinstance(m, Dcls2d)]:
        if id(conv.positions) not in shared:
            shared[id(conv.positions)] = (
                torch.nn.Parameter(conv.positions.detach().flip(0)),
                torch.nn.Parameter(conv.sigma.detach().flip(0)),
            )
        ref = ref_dcls(conv.weight.shape[0], conv.weight.shape[-1], 23, conv.bias is not None)
        ref.P, ref.SIG = shared[id(conv.positions)]
        with torch.no_grad():
            ref.weight.copy_(conv.weight)
            if conv.bias is not None:
                ref.bias.copy_(conv.bias)
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, ref)
    return {_ml_fastvit_key(k): v for k, v in model.state_dict().items()}


def test_fastvit_dcls_audio_checkpoint_loads_with_equal_logits(tmp_path: Path) -> None:
    """FastViT-SA24-dcls in ml-fastvit layout (the RepCPE conv a DCLS layer sharing stage 3's P/SIG). The dense
    keys are written by inverting timm's own ml-fastvit filter; the DCLS layers are the dcls 0.1.1 ones."""
    torch.manual_seed(3)
    model = timm.create_model("fastvit_sa24_dcls_audio", num_classes=7)
    perturb(model)
    with torch.no_grad():
        for conv in {id(m.positions): m for m in model.modules() if isinstance(m, Dcls2d)}.values():
            conv.positions.copy_((torch.randn_like(conv.positions) * 5).clamp(-11, 11))
            conv.sigma.copy_(torch.rand_like(conv.sigma) + 0.3)
    state = _with_reference_layers(model)
    assert "network.6.pe.P" in state and "patch_embed.weight" in state and "stages.0.blocks.0.mlp" not in str(state)
    torch.save({"model": state}, tmp_path / "fastvit_dcls_audio_sa24.pth")
    loaded = load_model(tmp_path / "fastvit_dcls_audio_sa24.pth")
    assert (loaded.name, loaded.model_cfg["kwargs"]) == ("fastvit_sa24_dcls_audio", {})
    shape = (2, 1, 64, 512)
    expected, got = _logits(model, shape), _logits(loaded.model, shape)
    assert expected.abs().max() > 0.1 and (expected - got).abs().max() <= 1e-4 * max(1.0, float(expected.abs().max()))


def test_fine_tuning_starts_from_a_dcls_audio_checkpoint_and_ema_is_explicit(tmp_path: Path) -> None:
    ref = audio_convnext(TINY["depths"], TINY["dims"], count=10, num_classes=7)
    checkpoint(ref, tmp_path / "a.pth")
    model = build_model({"name": "convnext_tiny_dcls_audio", "kwargs": TINY}, 30, 1)  # another label set
    line = init_from_checkpoint(model, tmp_path / "a.pth")
    assert "audio-release format" in line and "skipped the classifier" in line
    loaded = load_model(tmp_path / "a.pth")
    ours, theirs = model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.startswith("head.fc."))
    with pytest.raises(ModelLoadError, match="use_ema=true .* without a 'model_ema' entry"):
        load_model(tmp_path / "a.pth", use_ema=True)
    ema = audio_convnext(TINY["depths"], TINY["dims"], count=10, num_classes=7, seed=4)
    checkpoint(ref, tmp_path / "b.pth", model_ema=ema.state_dict())
    got = load_model(tmp_path / "b.pth", use_ema=True)
    assert got.weights == "ema" and got.provenance.key == "model_ema"
    assert (_logits(ema) - _logits(got.model)).abs().max() <= 1e-4
    plain = load_model(tmp_path / "b.pth")  # a file name that does not say EMA: the model weights, said so
    assert plain.weights == "model" and plain.provenance.key == "model"
    (tmp_path / "b.pth").rename(tmp_path / "checkpoint-best-ema.pth")  # the fork's naming: EMA by default
    named = load_model(tmp_path / "checkpoint-best-ema.pth")
    assert named.weights == "ema" and named.provenance.key == "model_ema"
    assert (_logits(ema) - _logits(named.model)).abs().max() <= 1e-4


def test_unequal_copies_of_a_shared_position_tensor_are_one_line(tmp_path: Path) -> None:
    state = audio_convnext(TINY["depths"], TINY["dims"], count=10, num_classes=7).state_dict()
    state["stages.2.1.dwconv.P"] = state["stages.2.1.dwconv.P"] + 0.5
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError) as err:
        load_model(tmp_path / "bad.pth")
    assert "stages.2.blocks.1.conv_dw.positions differs from stages.2.blocks.0.conv_dw.positions" in str(err.value)
    assert "\n" not in str(err.value)


def test_eval_only_scores_a_dcls_audio_file_on_the_users_eval_set(tmp_path: Path) -> None:
    """Issue 28.6: a DCLS-Audio ConvNeXt file is evaluated as it is (``trainer.eval_only``): its 4-way head kept,
    mAP on the eval split, nothing trained or written; the same file scored twice gives the same figure."""
    from hydra import compose, initialize_config_dir

    from dcls_vision.data.audio_synth import ensure_embedded_audioset
    from dcls_vision.engine import train

    root = ensure_embedded_audioset(tmp_path / "set", 8, 6, seed=0, n_words=4)
    ref = audio_convnext(TINY["depths"], TINY["dims"], count=10, num_classes=4)
    checkpoint(ref, tmp_path / "audio.pth")
    results = []
    for run in ("a", "b"):
        overrides = [
            "model=convnext_tiny_dcls_audio",
            "data=audio_embedded",
            "aug=none",
            "trainer.loss=bce",
            "trainer.batch_size=4",
            f"+model.kwargs={{depths: {TINY['depths']}, dims: {TINY['dims']}, dcls_kernel_count: 10}}",
            f"model.init_checkpoint={tmp_path / 'audio.pth'}",
            "trainer.eval_only=true",
            f"data.root={root}",
            "data.embedded=false",
            "data.num_classes=4",
            "logger.wandb=false",
            "logger.progress=false",
            f"trainer.output_dir={tmp_path / run}",
        ]
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            results.append(train(compose("config", overrides=overrides)))
        assert not list((tmp_path / run).glob("*.pth")), "eval_only wrote a checkpoint"
    assert results[0]["epochs_done"] == 0 and results[0]["best_mAP"] is None
    assert 0 < results[0]["mAP"] <= 100 and results[0]["mAP"] == results[1]["mAP"]
    log = (tmp_path / "a" / "log.txt").read_text()
    assert "audio-release" in log and "trainer.eval_only=true" in log
