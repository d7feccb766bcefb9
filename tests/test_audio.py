"""Audio tagging (thesis ch. 5): the embedded espeak-ng set and its reader, mAP vs scikit-learn, the (2,16)-stem
models (parameter counts, shapes, DCLS optimizer rules) and a short multi-label training run end to end."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from hydra import compose, initialize_config_dir

from dcls_vision.data.audio import AudioSetFolder
from dcls_vision.data.audio_features import CLIP_SAMPLES, LogMel, num_frames
from dcls_vision.data.audio_synth import STORE_RATE, WORDS, ensure_embedded_audioset
from dcls_vision.engine import create_optimizer, train
from dcls_vision.engine.evaluate import multilabel_metrics
from dcls_vision.ops import dcls_parameters

ROOT = Path(__file__).resolve().parents[1]
N_WORDS, N_TRAIN, N_EVAL = 4, 8, 6


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small embedded set (4 words, 8 + 6 clips): the same generator as the quickstart, fewer clips."""
    return ensure_embedded_audioset(tmp_path_factory.mktemp("audio") / "set", N_TRAIN, N_EVAL, seed=0, n_words=N_WORDS)


def test_embedded_reader_labels_lengths_and_spectrogram(embedded: Path) -> None:
    ds = AudioSetFolder(
        embedded / "train_segments.csv", embedded / "audio" / "train", embedded / "class_labels_indices.csv"
    )
    assert len(ds) == N_TRAIN and ds.missing == 0 and ds.classes == list(WORDS[:N_WORDS])
    rows = [r for r in csv.reader((embedded / "train_segments.csv").open(), skipinitialspace=True) if r[0][0] != "#"]
    for i, (ytid, _, end, labels) in enumerate(rows):
        wave, target = ds[i]
        expected = np.zeros(N_WORDS)
        expected[[WORDS.index(m.split("/")[-1]) for m in labels.split(",")]] = 1
        assert ds.files[i].stem == ytid and target.tolist() == expected.tolist() and 1 <= target.sum() <= 3
        assert wave.shape == (CLIP_SAMPLES,) and wave.dtype == torch.float32 and float(end) == 10.0
        assert STORE_RATE == 32000 and wave.abs().max() > 0.1
    spec = LogMel(mean=-20.0, std=30.0)(torch.stack([ds[0][0], ds[1][0]]))
    assert spec.shape == (2, 1, 128, 1001) and num_frames(CLIP_SAMPLES, 320) == 1001 and torch.isfinite(spec).all()


def test_embedded_clips_have_no_digital_silence(embedded: Path) -> None:
    """The quickstart nets learned nothing on set version 1: 6-10 s clips zero-padded to 10 s and 16 kHz files
    read at 32 kHz (empty above 8 kHz) put ~18 % of the dB mel at the -100 dB floor of the log, which dominated
    the normalisation (std 42 dB for a ~20 dB signal spread) and the nets' max pooling. Every frame and every mel
    band of every clip must carry signal (noise at least), as a real recording does."""
    ds = AudioSetFolder(
        embedded / "eval_segments.csv", embedded / "audio" / "eval", embedded / "class_labels_indices.csv"
    )
    db = LogMel(0.0, 1.0).db_mel(torch.stack([ds[i][0] for i in range(len(ds))]))
    assert db.shape == (len(ds), 128, 1001)
    assert db.min() > -90  # the floor is -100 dB (10 log10 of the 1e-10 clamp); noise sits far above it
    band_means = db.mean(dim=(0, 2))
    assert band_means.max() - band_means.min() < 30  # no empty band (v1: 50-60 dB lower above 8 kHz)
    # a second call with the same settings reuses the set (no regeneration: file times unchanged)
    mtime = (embedded / "train_segments.csv").stat().st_mtime_ns
    ensure_embedded_audioset(embedded, N_TRAIN, N_EVAL, seed=0, n_words=N_WORDS)
    assert (embedded / "train_segments.csv").stat().st_mtime_ns == mtime


def test_embedded_eval_voices_are_held_out_and_espeak_version_recorded(embedded: Path) -> None:
    """Issue 29.8: v3 drew train and eval renditions from the same voice+variant pairs (22 of 120 eval renditions
    reused the pair that spoke that word in training). Every voice heard in an eval clip must be absent from every
    training clip, and the set records the espeak-ng version that rendered it."""
    import shutil
    import subprocess

    from dcls_vision.data.audio_synth import read_metadata

    meta = read_metadata(embedded)
    version = subprocess.run([shutil.which("espeak-ng"), "--version"], capture_output=True, text=True).stdout
    assert meta["espeak_ng"] and meta["espeak_ng"] in version
    heard = {}
    for split in ("train", "eval"):
        rows = [r for r in csv.reader((embedded / f"{split}_segments.csv").open(), skipinitialspace=True)]
        labels = {r[0]: [WORDS.index(m.split("/")[-1]) for m in r[3].split(",")] for r in rows if r[0][0] != "#"}
        assert sorted(meta["renditions"][split]) == sorted(labels)
        heard[split] = {
            meta["voices"][w][r]
            for ytid, words in labels.items()
            for w, r in zip(words, meta["renditions"][split][ytid])
        }
    assert heard["train"] and heard["eval"] and not heard["train"] & heard["eval"]


def test_map_equals_sklearn_macro_average_precision() -> None:
    from sklearn.metrics import average_precision_score, roc_auc_score

    rng = np.random.default_rng(0)
    y = (rng.random((300, 20)) < 0.15).astype(int)
    y[:, 7] = 0  # a class without positives: sklearn counts AP 0
    scores = np.round(rng.random((300, 20)), 2) + 0.4 * y  # rounded: many tied scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_map = average_precision_score(y, scores, average="macro")
    ours = multilabel_metrics(y > 0, scores)
    assert ours["mAP"] == pytest.approx(100.0 * ref_map, abs=1e-10)
    keep = [c for c in range(20) if c != 7]
    assert ours["AUC"] == pytest.approx(100.0 * roc_auc_score(y[:, keep], scores[:, keep], average=None).mean())
    assert 0 < ours["d_prime"] < 5


# parameters with a 1000-way head, as the DCLS-Audio table reports them (28.6M / 26.8M / 21.5M)
TABLE = {"convnext_tiny": 28.6, "convformer_s18": 26.8, "fastvit_sa24": 21.5}


@pytest.mark.parametrize("base", sorted(TABLE))
def test_audio_models_parameter_counts_and_stem(base: str) -> None:
    dense = timm.create_model(f"{base}_audio", num_classes=1000)
    dcls = timm.create_model(f"{base}_dcls_audio", num_classes=1000)
    n_dense, n_dcls = (sum(p.numel() for p in m.parameters()) for m in (dense, dcls))
    assert round(n_dense / 1e6, 1) == TABLE[base] == round(n_dcls / 1e6, 1)
    assert n_dcls <= n_dense  # "equal or fewer parameters"
    assert dcls_parameters(dcls)["positions"] and not dcls_parameters(dense)["positions"]
    stem = [m for m in dcls.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert stem.in_channels == 1 and stem.kernel_size == (2, 16) and stem.stride == (2, 16)
    assert stem(torch.zeros(1, 1, 128, 1001)).shape[-2:] == (64, 62)
    assert dcls.pretrained_cfg["input_size"] == (1, 128, 1001)


def test_audio_model_output_and_dcls_optimizer_rules() -> None:
    model = timm.create_model("convnext_tiny_dcls_audio")
    assert model.num_classes == 527
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 128, 1001)).shape == (2, 527)
    optimizer = create_optimizer(model, "adamw", lr=4e-3, weight_decay=0.05)
    by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    dcls = dcls_parameters(model)
    assert len(dcls["positions"]) == 4 and len(dcls["sigma"]) == 4  # one shared tensor per stage
    for p in dcls["positions"] + dcls["sigma"]:
        assert by_id[id(p)]["lr_scale"] == 5.0 and by_id[id(p)]["weight_decay"] == 0.0
    assert by_id[id(model.stem[0].weight)]["weight_decay"] == 0.05


def test_audio_quickstart_trains_end_to_end(embedded: Path, tmp_path: Path) -> None:
    overrides = [
        "experiment=audio_quickstart",
        f"data.root={embedded}",
        "data.embedded=false",
        f"data.num_classes={N_WORDS}",
        "model.kwargs.dim=8",
        "model.kwargs.depth=1",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "aug.mixup=0.8",
        "aug.label_smoothing=0.1",
        "aug.reprob=0.5",
        "aug.remode=const",
        "logger.wandb=false",
        "logger.progress=false",
        f"trainer.output_dir={tmp_path / 'run'}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    result = train(cfg)
    assert 0 < result["mAP"] <= 100 and 0 <= result["AUC"] <= 100 and result["best_mAP"] == result["mAP"]
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["val_mAP"] == result["mAP"] and "val_top1" not in record and record["train_loss"] > 0
    assert (tmp_path / "run" / "best.pth").is_file()
    stats = json.loads((embedded / "norm_stats_folder_train.json").read_text())  # training-set normalisation
    assert stats["clips"] == N_TRAIN and stats["std"] > 0


@pytest.mark.slow
def test_audio_quickstart_learns_well_above_the_label_prior(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Issue 29.9: the end-to-end test above asserts only 0 < mAP <= 100. On the embedded set (all 30 words, eval
    voices held out; 160 train / 60 eval clips) the quickstart recipe with a small net (dim 8, depth 1) must reach
    twice the mAP of a constant score (the label prior, 6.6 % here) in 4 epochs (40 updates). Measured: mAP 16.9 %,
    AUC 53.6 % (12.4 % after the first epoch), ~30-50 s of training plus ~40 s to generate the set on 2 loaded cores."""
    root = ensure_embedded_audioset(tmp_path_factory.mktemp("learn") / "set", 160, 60, seed=0)
    ds = AudioSetFolder(root / "eval_segments.csv", root / "audio" / "eval", root / "class_labels_indices.csv")
    prior = 100.0 * float(ds.targets.mean())
    overrides = [
        "experiment=audio_quickstart",
        f"data.root={root}",
        "data.embedded=false",
        "model.kwargs.dim=8",
        "model.kwargs.depth=1",
        "trainer.epochs=4",
        "logger.wandb=false",
        "logger.progress=false",
        f"trainer.output_dir={tmp_path_factory.mktemp('learn_run')}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    result = train(cfg)
    assert 5 < prior < 9  # 1-3 of 30 words per clip
    assert result["mAP"] > 2 * prior and result["AUC"] > 50, (result, prior)


def test_init_checkpoint_copies_matching_tensors_through_the_factory(tmp_path: Path) -> None:
    """An image checkpoint initialises the audio net: body copied, new (2,16) stem and 30-way head left fresh."""
    from dcls_vision.models.checkpoint_formats import ModelLoadError
    from dcls_vision.models.factory import build_model
    from dcls_vision.models.finetune_init import init_from_checkpoint

    image = timm.create_model("dcls_quickstart", num_classes=10)
    torch.save(image.state_dict(), tmp_path / "image.pth")
    torch.manual_seed(0)
    audio = build_model({"name": "dcls_quickstart_audio"}, 30, 1)
    fresh = {k: v.clone() for k, v in audio.state_dict().items()}
    line = init_from_checkpoint(audio, tmp_path / "image.pth")
    assert "skipped the classifier" in line and "skipped the stem" in line and "stem.0.weight" in line
    src, dst = image.state_dict(), audio.state_dict()
    body = [k for k in dst if k.startswith("stages.")]
    assert body and all(torch.equal(dst[k], src[k]) for k in body)  # positions/sigma included
    assert dst["stem.0.weight"].shape == (32, 1, 2, 16) and dst["head.weight"].shape == (30, 32 * 64)
    assert all(torch.equal(dst[k], fresh[k]) for k in dst if k.startswith(("stem.", "head.")))  # left fresh
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="init_checkpoint=.*does not fit"):
        init_from_checkpoint(build_model({"name": "dcls_quickstart_audio"}, 30, 1), tmp_path / "other.pth")


@pytest.mark.parametrize("freq", [440.0, 1000.0, 6000.0])
def test_logmel_puts_a_tone_in_its_htk_mel_band(freq: float) -> None:
    """128 HTK-mel bands in 50 Hz-14 kHz (torchaudio MelScale defaults): a pure tone peaks in the band centred on it."""
    t = torch.arange(CLIP_SAMPLES) / 32000.0
    db = LogMel(mean=0.0, std=1.0).db_mel((0.5 * torch.sin(2 * np.pi * freq * t))[None])
    assert db.shape == (1, 128, 1001)
    mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
    centres = 700.0 * (10 ** (np.linspace(mel(50.0), mel(14000.0), 130)[1:-1] / 2595.0) - 1.0)
    assert int(db[0, :, 500].argmax()) == int(np.abs(centres - freq).argmin())
    assert float(db[0, :, 500].max()) > float(db[0, :, 500].median()) + 30  # a sharp peak, in dB


def test_arrays_layout_waveforms_and_precomputed_mel(tmp_path: Path) -> None:
    from dcls_vision.data.audio import AudioDataError, AudioSetArrays

    targets = np.eye(3, dtype=np.uint8)[[0, 2]]
    np.save(tmp_path / "train_data.npy", (np.ones((2, 16000)) * 16384).astype(np.int16))  # 0.5 s of int16
    np.save(tmp_path / "train_targets.npy", targets)
    ds = AudioSetArrays(tmp_path, "train")
    wave, target = ds[1]
    assert wave.shape == (CLIP_SAMPLES,) and wave[:16000].eq(0.5).all() and wave[16000:].eq(0).all()
    assert target.tolist() == [0.0, 0.0, 1.0]
    np.save(tmp_path / "eval_data.npy", np.full((2, 128, 1001), -18.0, dtype=np.float32))  # dB mel
    np.save(tmp_path / "eval_targets.npy", targets)
    mel = AudioSetArrays(tmp_path, "eval")[0][0]
    assert LogMel(mean=-20.0, std=4.0)(mel[None]).flatten().unique().tolist() == [0.5]  # only normalised
    with pytest.raises(AudioDataError, match="test_data.npy not found"):
        AudioSetArrays(tmp_path, "test")


def test_audio_quickstart_nets_keep_loudness_and_frequency() -> None:
    """No LayerNorm after the (2,16) stem (it erased each patch's loudness) and a head over every mel row (a global
    max over frequency left the small net blind to where a pattern is): the first quickstart nets learned nothing."""
    for name in ("dcls_quickstart_audio", "dcls_quickstart_audio_baseline"):
        model = timm.create_model(name, num_classes=5, dim=8, depth=1).eval()
        assert [type(m) for m in model.stem] == [torch.nn.Conv2d] and model.head.in_features == 8 * 64
        x = torch.randn(2, 1, 128, 1001)
        with torch.no_grad():
            feats = model.forward_features(x)
            assert feats.shape == (2, 8, 64, 62) and model(x).shape == (2, 5)
            # the same pattern moved to other mel rows gives other logits
            assert not torch.allclose(model(x), model(torch.roll(x, 32, dims=2)), atol=1e-4)
    dcls, dense = (
        timm.create_model(n, num_classes=30) for n in ("dcls_quickstart_audio", "dcls_quickstart_audio_baseline")
    )
    n_dcls, n_dense = (sum(p.numel() for p in m.parameters()) for m in (dcls, dense))
    assert n_dcls <= n_dense < 1.01 * n_dcls  # iso-parameter, as the image quickstart pair


def test_fastvit_dcls_audio_replaces_the_repcpe_conv_and_starts_layer_scale_at_1e6() -> None:
    """Issue 29.5/29.6: DCLS-Audio's replace_depthwise_dcls (models/fastvit.py:977-1009) swaps every 7x7 depthwise
    conv, the RepCPE positional conv of stage 3 included (it then carries that stage's shared positions/sigma):
    21,016,655 parameters at 527 classes (ours kept it dense: 21,028,431). main.py:72-76 starts layer scale at 1e-6."""
    from dcls_vision.ops import Dcls2d

    model = timm.create_model("fastvit_sa24_dcls_audio")
    assert sum(p.numel() for p in model.parameters()) == 21_016_655
    pos = model.stages[3].pos_emb.pos_enc
    ffn = model.stages[3].blocks[0].mlp.conv.conv
    assert (
        isinstance(pos, Dcls2d)
        and isinstance(ffn, Dcls2d)
        and pos.positions is ffn.positions
        and pos.sigma is ffn.sigma
    )
    for name in ("fastvit_sa24_audio", "fastvit_sa24_dcls_audio"):
        scales = [p for n, p in timm.create_model(name).named_parameters() if "layer_scale" in n]
        assert scales and all(torch.allclose(p, torch.full_like(p, 1e-6)) for p in scales)
    image = timm.create_model("fastvit_sa24_dcls")  # the image variant keeps its dense RepCPE and timm's 1e-5
    assert not isinstance(image.stages[3].pos_emb.pos_enc, Dcls2d)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 128, 1001)).shape == (1, 527)


def test_speed_perturbation_stretches_to_len_times_rate_by_nearest_index() -> None:
    """Issue 29.4: DCLS-Audio augmentations.py:270-279 resamples to len x rate (rate 0.5 halves the clip, 1.5
    makes it 1.5x longer) by nearest index; ours stretched to len / rate with linear interpolation."""
    from dcls_vision.data.audio_features import WaveAugment, stretch_nearest

    wave = torch.arange(1, 1001, dtype=torch.float32)
    fast = stretch_nearest(wave, 0.5)
    assert fast.shape == (500,) and fast[:4].tolist() == [1.0, 3.0, 5.0, 7.0]  # every other sample
    slow = stretch_nearest(wave, 1.5)
    assert slow.shape == (1500,) and set(slow.tolist()) <= set(wave.tolist())  # nearest: no new values
    assert slow[:7].tolist() == [1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0]  # round(k / 1.5) + 1
    torch.manual_seed(0)
    out = WaveAugment(roll=False, speed_rates=(0.5, 0.5), speed_p=1.0)(wave[None].repeat(4, 1))
    assert out.shape == (4, 1000) and (out != 0).sum(dim=1).tolist() == [500] * 4  # half clip, zero padded
    for row in out:  # the stretched clip lies contiguous at a random offset
        nz = row.nonzero().flatten()
        assert torch.equal(row[nz[0] : nz[-1] + 1], fast)


def test_multilabel_mixup_pairs_by_random_permutation_as_the_reference() -> None:
    """Issue 29.6: DCLS-Audio utils.py:163-170 mixes each sample with its partner under torch.randperm and one
    lam ~ Beta(a, a) (not folded to >= 0.5); timm's Mixup, used before, always pairs sample i with n-1-i."""
    from dcls_vision.data import multilabel_mixup

    n, smoothing = 6, 0.1
    mix = multilabel_mixup(0.8, smoothing, num_classes=n)
    flip, partners, lams = list(range(n - 1, -1, -1)), [], []
    for seed in range(20):
        torch.manual_seed(seed)
        x, y = mix(torch.eye(n), torch.eye(n))
        assert torch.allclose(x.sum(1), torch.ones(n))
        lam = float(x.diagonal().min())  # row i = lam e_i + (1 - lam) e_partner(i); e_i alone if paired with itself
        partner = [
            i if float(row[i]) == 1.0 else int((row * (1 - torch.eye(n)[i])).argmax()) for i, row in enumerate(x)
        ]
        assert sorted(partner) == list(range(n))  # a permutation
        smooth = (1 - smoothing) * torch.eye(n) + smoothing / n
        assert torch.allclose(y, lam * smooth + (1 - lam) * smooth[partner], atol=1e-6)
        partners.append(partner)
        lams.append(lam)
    assert any(p != flip for p in partners) and min(lams) < 0.5


def test_audioset_recipes_state_their_start_and_the_reference_eps() -> None:
    """Issue 29.3/29.6: ConvNeXt-T and ConvFormer-S18 start from ImageNet weights (thesis): without
    model.init_checkpoint the config check stops with one line (model.from_scratch=true opts out); FastViT says
    from scratch. Optimizer eps 1e-8 (DCLS-Audio main.py:97-102; timm's LAMB default is 1e-6)."""
    from dcls_vision.engine import ConfigError, validate_config
    from dcls_vision.engine.builders import build_optimizer

    def compose_audioset(name: str, *extra: str):
        with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
            return compose("config", overrides=[f"experiment=audioset_{name}", "data.root=/tmp", *extra])

    for name in ("convnext_tiny", "convnext_tiny_dcls", "convformer_s18", "convformer_s18_dcls"):
        with pytest.raises(ConfigError, match=r"init_checkpoint=None .* model.from_scratch=true"):
            validate_config(compose_audioset(name))
        validate_config(compose_audioset(name, "model.from_scratch=true"))
        validate_config(compose_audioset(name, f"model.init_checkpoint={__file__}"))
        with pytest.raises(ConfigError, match="from_scratch=true but initial weights"):
            validate_config(compose_audioset(name, "model.from_scratch=true", f"model.init_checkpoint={__file__}"))
    for name in ("fastvit_sa24", "fastvit_sa24_dcls"):
        cfg = compose_audioset(name)
        assert cfg.model.from_scratch is True
        validate_config(cfg)
    cfg = compose_audioset("convformer_s18_dcls", "model.from_scratch=true", "model.name=dcls_quickstart_audio")
    assert (cfg.optim.name, cfg.optim.eps) == ("lamb", 1e-8)
    model = timm.create_model("dcls_quickstart_audio", num_classes=527, dim=8, depth=1)
    optimizer = build_optimizer(cfg, model, global_batch=4096)
    assert type(optimizer).__name__ == "Lamb" and {g["eps"] for g in optimizer.param_groups} == {1e-8}
