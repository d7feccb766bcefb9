"""Spiking audio for the SNN-delays recipes (thesis ch. 4): the Heidelberg HDF5 reader against hand-computed counts
and its error lines, the embedded spiking-digits generator (determinism, held-out speakers, SHD layout), the
cochlea and the GSC-35 mel front end (shape, the bands left empty by f_max above Nyquist)."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dcls_vision.data import build_datasets
from dcls_vision.data.gsc import GSC_MEL, WORDS, SpeechCommandsMel, empty_bands, features, split_files
from dcls_vision.data.spike_synth import (
    DE_VOICES,
    EN_VOICES,
    VARIANTS,
    cochlea_spikes,
    ensure_spiking_digits,
    erb_filterbank,
    espeak_version,
    speakers,
)
from dcls_vision.data.spikes import SpikeDataError, SpikeH5, bin_spikes, frame_index
from dcls_vision.engine.schema import load_option

ROOT = Path(__file__).resolve().parents[1]

# three ragged samples (times in s, units 0..699) and their counts by hand at 10-ms bins, units // 5
SAMPLES = [
    # ms after the first spike: 0, 7, 7.5, 14, 26 -> bins 0, 0, 0, 1, 2 (3 bins); channels 0, 0, 1, 139, 2
    ([0.005, 0.012, 0.0125, 0.019, 0.031], [0, 4, 5, 699, 12], 3),
    # 0 and 20 ms: ceil(20 / 10) = 2 bins, the spike on the right edge counts in the last bin (spikingjelly)
    ([0.100, 0.120], [10, 14], 7),
    # one spike: one bin (the reference would have zero bins and fail)
    ([0.300], [3], 11),
]
EXPECTED = np.zeros((3, 3, 140), dtype=np.float32)  # (sample, step, channel), padded to the longest: 3 bins
EXPECTED[0, 0, 0], EXPECTED[0, 0, 1], EXPECTED[0, 1, 139], EXPECTED[0, 2, 2] = 2, 1, 1, 1
EXPECTED[1, 0, 2], EXPECTED[1, 1, 2] = 1, 1
EXPECTED[2, 0, 0] = 1


def write_h5(path: Path, samples: list, times_dtype=np.float32) -> Path:
    """A file in the published SHD/SSC layout (ragged vlen spikes/times + spikes/units, labels, extra/)."""
    with h5py.File(path, "w") as f:
        times = f.create_dataset("spikes/times", (len(samples),), dtype=h5py.vlen_dtype(times_dtype))
        units = f.create_dataset("spikes/units", (len(samples),), dtype=h5py.vlen_dtype(np.uint16))
        for i, (t, u, _) in enumerate(samples):
            times[i], units[i] = np.asarray(t, dtype=times_dtype), np.asarray(u, dtype=np.uint16)
        f["labels"] = np.array([s[2] for s in samples], dtype=np.uint16)
        f["extra/speaker"] = np.zeros(len(samples), dtype=np.uint16)
    return path


@pytest.fixture()
def shd_root(tmp_path: Path) -> Path:
    write_h5(tmp_path / "shd_train.h5", SAMPLES)
    write_h5(tmp_path / "shd_test.h5", SAMPLES[1:])
    return tmp_path


def _spikes_cfg(root: Path, **over):
    cfg = load_option(ROOT / "configs" / "data" / "shd.yaml")
    cfg.root = str(root)
    for k, v in over.items():
        cfg[k] = v
    return cfg


def test_reader_bins_groups_and_pads_as_counted_by_hand(shd_root: Path) -> None:
    train, val, classes = build_datasets(_spikes_cfg(shd_root))
    assert (classes, len(train), len(val), train.num_steps, val.num_steps) == (20, 3, 2, 3, 3)
    for i in range(3):
        x, y = train[i]
        assert x.dtype == torch.float32 and y == SAMPLES[i][2]
        assert torch.equal(x, torch.from_numpy(EXPECTED[i])), i
    x, y = next(iter(DataLoader(train, batch_size=3)))  # default collation: one fixed length
    assert x.shape == (3, 3, 140) and y.tolist() == [3, 7, 11]
    assert torch.equal(val[0][0], train[1][0])  # the test file is padded to the same (longest) length
    copy = pickle.loads(pickle.dumps(train))  # as DataLoader workers get it, after the file was opened here
    assert torch.equal(copy[0][0], train[0][0])


def test_reader_crops_to_num_steps_and_keeps_all_700_units_with_group_1(shd_root: Path) -> None:
    train, _, _ = build_datasets(_spikes_cfg(shd_root, num_steps=2))
    assert torch.equal(train[0][0], torch.from_numpy(EXPECTED[0, :2]))  # the 26-ms spike (bin 2) is cut
    sub, _, _ = build_datasets(_spikes_cfg(shd_root, train_subset=2))
    assert len(sub) == 2 and sub.targets == [SAMPLES[i][2] for i in sub.indices] and sub[0][0].shape == (3, 140)
    full = SpikeH5(shd_root / "shd_train.h5", 10.0, 1)
    x = full[0][0]
    assert x.shape == (3, 700) and x.sum() == 5 and x[1, 699] == 1 and x[0, 4] == 1 and x[0, 5] == 1


def test_binning_follows_the_file_dtype_like_the_reference() -> None:
    """float16 times (1000 * t in float16, as numpy does in spikingjelly) and the empty sample."""
    t16 = np.array([0.0, 0.0199, 0.0401], dtype=np.float16)
    index, steps = frame_index(t16, 10.0)
    ref = 1000 * t16
    ref = ref - ref[0]
    assert steps == math.ceil(float(ref[-1] / 10.0)) and index.tolist() == np.minimum(ref // 10, steps - 1).tolist()
    assert bin_spikes(np.zeros(0, np.float32), np.zeros(0, np.uint16), 10.0, 5, 4).shape == (4, 140)


def _expect_error(fn, *parts: str) -> str:
    with pytest.raises(SpikeDataError) as err:
        fn()
    line = str(err.value)
    assert "\n" not in line and all(p in line for p in parts), line
    return line


def test_reader_errors_are_one_line_naming_the_file(shd_root: Path, tmp_path: Path) -> None:
    (shd_root / "shd_test.h5").unlink()
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root)), "shd_test.h5 not found", "shd_train.h5, shd_test.h5")
    (shd_root / "shd_test.h5").write_bytes(b"not hdf5")
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root)), "shd_test.h5 is not a readable HDF5 file")
    with h5py.File(shd_root / "shd_test.h5", "w") as f:
        f["labels"] = np.zeros(2, dtype=np.uint16)
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root)), "shd_test.h5 has no spikes/times, spikes/units")
    write_h5(shd_root / "shd_test.h5", SAMPLES)
    with h5py.File(shd_root / "shd_test.h5", "a") as f:
        del f["labels"]
        f["labels"] = np.zeros(2, dtype=np.uint16)
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root)), "sample counts differ", "labels: 2")
    write_h5(shd_root / "shd_test.h5", [([0.1], [1], 25)])
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root)), "label 25 found; expected 0..19")
    write_h5(shd_root / "shd_test.h5", [([0.1], [1], 2), ([0.1, np.nan], [1, 2], 2)])
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root)), "shd_test.h5: sample 1 has non-finite")
    write_h5(shd_root / "shd_test.h5", [([0.1, 0.2], [1, 700], 2)])
    _, val, _ = build_datasets(_spikes_cfg(shd_root))
    _expect_error(lambda: val[0], "shd_test.h5: sample 0 has unit 700; expected units 0..699")
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root, val_split="valid")), "split 'valid'", "train, test")
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root, channel_group=3)), "data.channel_group=3")
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root, channel_group=10)), "data.in_chans=140", "70 channels")
    _expect_error(lambda: build_datasets(_spikes_cfg(shd_root, format="ssc", embedded=True)), "data.embedded=true")
    _expect_error(lambda: build_datasets(_spikes_cfg(tmp_path / "none", format="ssc")), "ssc_train.h5 not found")


@pytest.mark.parametrize(
    "override,line",
    [
        ("data.format=wav", "data.format='wav' is not supported; allowed: shd, ssc, gsc"),
        ("data.channel_group=3", "data.channel_group=3 must be a divisor of 700"),
        ("data.num_steps=0", "data.num_steps=0 must be >= 1 or null"),
        ("data.dt_ms=0", "data.dt_ms=0.0 must be > 0"),
    ],
)
def test_spike_config_values_are_checked_before_any_data_loads(override: str, line: str) -> None:
    from hydra import compose, initialize_config_dir

    from dcls_vision.engine import validate_config
    from dcls_vision.engine.config import ConfigError

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["data=spiking_digits", override])
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    assert str(err.value).startswith(line), str(err.value)


def test_train_cli_reports_a_missing_spike_file_in_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    cmd = [sys.executable, "train.py", "data=shd", f"data.root={tmp_path}", f"trainer.output_dir={tmp_path / 'run'}"]
    proc = subprocess.run([*cmd, "logger.wandb=false"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("SpikeDataError: data.root=") and "shd_train.h5 not found" in lines[0]


# ---- the embedded spiking-digits set ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One rendition per class and split (20 + 20 samples): the generator of the quickstart set, fewer samples."""
    return ensure_spiking_digits(tmp_path_factory.mktemp("digits") / "set", n_train=1, n_test=1, seed=0)


def test_embedded_set_is_shd_layout_read_by_the_shd_reader(digits: Path) -> None:
    cfg = load_option(ROOT / "configs" / "data" / "spiking_digits.yaml")
    cfg.root, cfg.embedded = str(digits), False  # the files as they are: the real-data path
    train, val, classes = build_datasets(cfg)
    assert (classes, len(train), len(val), train.num_steps) == (20, 20, 20, 80)
    assert sorted(train.targets) == list(range(20)) and sorted(val.targets) == list(range(20))
    x, _ = train[0]
    assert x.shape == (80, 140) and x.sum() > 1000 and (x >= 0).all()
    with h5py.File(digits / "shd_train.h5") as f:
        for t, u in zip(f["spikes/times"], f["spikes/units"]):
            assert t.dtype == np.float32 and u.dtype == np.uint16 and u.max() < 700
            assert np.all(np.diff(t) >= 0) and t.max() < 0.8  # time-sorted as SHD, cut at 0.8 s
        assert [k.decode() for k in f["extra/keys"][[0, 9, 10, 19]]] == ["zero", "nine", "null", "neun"]


def test_embedded_test_speakers_are_held_out(digits: Path) -> None:
    names, held = speakers(0)
    n_en = len(EN_VOICES) * len(VARIANTS)
    assert len(names) == n_en + len(DE_VOICES) * len(VARIANTS) and len(set(names)) == len(names)
    assert held[:n_en].sum() == 20 and held[n_en:].sum() == 3  # a quarter of each language's pairs (ceil)
    used = {}
    for split in ("train", "test"):
        with h5py.File(digits / f"shd_{split}.h5") as f:
            spk, labels = f["extra/speaker"][:], f["labels"][:]
            assert f["extra/meta_info/test_speaker"][:].tolist() == held.tolist()
            assert all(held[s] == (split == "test") for s in spk)
            assert all((s >= n_en) == (lab >= 10) for s, lab in zip(spk, labels))  # German digits, German voice
            used[split] = set(spk.tolist())
    assert used["train"] and used["test"] and not used["train"] & used["test"]
    assert not (held == speakers(1)[1]).all()  # the split is drawn from the seed


def test_embedded_set_is_deterministic_records_espeak_and_is_made_once(digits: Path, tmp_path: Path) -> None:
    info = json.loads((digits / "embedded.json").read_text())
    assert info["espeak_ng"] == espeak_version() and info["espeak_ng"].startswith("eSpeak NG")
    stamp = (digits / "shd_train.h5").stat().st_mtime_ns
    assert ensure_spiking_digits(digits, n_train=1, n_test=1, seed=0) == digits  # same settings: not remade
    assert (digits / "shd_train.h5").stat().st_mtime_ns == stamp
    again = ensure_spiking_digits(tmp_path / "again", n_train=1, n_test=1, seed=0)
    for split in ("train", "test"):
        with h5py.File(digits / f"shd_{split}.h5") as a, h5py.File(again / f"shd_{split}.h5") as b:
            assert a.attrs["espeak_ng"] == info["espeak_ng"]
            assert np.array_equal(a["labels"][:], b["labels"][:])
            for key in ("spikes/times", "spikes/units"):
                assert all(np.array_equal(x, y) for x, y in zip(a[key], b[key])), key
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "shd_train.h5").write_bytes(b"the user's own file")
    _expect_error(lambda: ensure_spiking_digits(tmp_path / "mine", 1, 1, 0), "is not an embedded spiking-digits set")
    assert (tmp_path / "mine" / "shd_train.h5").read_bytes() == b"the user's own file"


def test_embedded_set_needs_espeak_only_to_be_made(digits: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on it
    assert ensure_spiking_digits(digits, n_train=1, n_test=1, seed=0) == digits  # a made set is used as it is
    made = lambda: ensure_spiking_digits(tmp_path / "new", n_train=1, n_test=1, seed=0)  # noqa: E731
    assert _expect_error(made, "the embedded spiking-digits set needs espeak-ng; install it").startswith("the ")


def test_cochlea_puts_a_tone_on_its_erb_channel() -> None:
    """A 1 kHz tone drives the channels centred near 1 kHz hardest; channels far from it fire at the 1 Hz floor."""
    fb = erb_filterbank()
    assert fb.shape == (700, 257) and (fb.sum(axis=1) > 0.999).all()
    freqs = np.fft.rfftfreq(512, 1 / 16000)
    centres = freqs[fb.argmax(axis=1)]
    assert centres[0] < 80 and centres[-1] > 7700 and np.all(np.diff(centres) >= 0)  # ERB-spaced, 50..7800 Hz
    t = np.arange(8000) / 16000
    times, units = cochlea_spikes(0.5 * np.sin(2 * np.pi * 1000 * t), np.random.default_rng(0))
    counts = np.bincount(units, minlength=700)
    assert abs(centres[counts.argmax()] - 1000) < 100 and counts.max() > 50 * np.median(counts)
    assert times.max() <= 0.5 and np.all(np.diff(times) >= 0)
    assert np.median(counts[centres > 5000]) <= 2  # > 45 dB below the peak: the 1 Hz floor (0.5 spikes in 0.5 s)


# ---- GSC-35 front end ---------------------------------------------------------------------------------------


def test_gsc_mel_shape_and_the_bands_empty_above_nyquist() -> None:
    htk = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(htk(50), htk(14000), 142) / 2595) - 1)
    expected_empty = int((edges[:140] >= 4000).sum())  # a band starting at/above 8 kHz / 2 covers no FFT bin
    assert expected_empty == empty_bands() == 53
    t = np.arange(12000) / 16000  # 0.75 s: padded to 1 s as the reference
    noise = 1e-3 * np.random.default_rng(0).standard_normal(t.size)
    x = features((0.3 * np.sin(2 * np.pi * 1000 * t) + noise).astype(np.float32))
    assert x.shape == (101, 140) and x.dtype == torch.float32  # 8000 / 80 + 1 frames, time-major
    assert (x[:, -expected_empty:] == -100).all() and (x[:70, : 140 - expected_empty] > -100).all()
    centres = edges[1:-1]
    assert abs(centres[int(x[:70].mean(0).argmax())] - 1000) < 100 and GSC_MEL.sample_rate == 8000


def test_gsc_splits_follow_the_lists_and_label_by_word(tmp_path: Path) -> None:
    from scipy.io import wavfile

    files = ["yes/a_nohash_0.wav", "yes/b_nohash_0.wav", "zero/c_nohash_0.wav", "bed/d_nohash_1.wav"]
    for name in [*files, "_background_noise_/x_nohash_0.wav"]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        wavfile.write(tmp_path / name, 16000, (np.random.default_rng(0).standard_normal(16000) * 3000).astype("<i2"))
    (tmp_path / "validation_list.txt").write_text("yes/b_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("zero/c_nohash_0.wav\n")
    assert split_files(tmp_path, "training") == ["bed/d_nohash_1.wav", "yes/a_nohash_0.wav"]
    cfg = load_option(ROOT / "configs" / "data" / "gsc.yaml")
    cfg.root = str(tmp_path)
    train, val, classes = build_datasets(cfg)
    assert classes == 35 and train.targets == [WORDS.index("bed"), WORDS.index("yes")]
    x, y = val[0]
    assert x.shape == (101, 140) and y == WORDS.index("yes")
    _expect_error(lambda: SpeechCommandsMel(tmp_path / "yes", "training"), "no validation_list.txt")
    _expect_error(lambda: SpeechCommandsMel(tmp_path, "valid"), "split 'valid'", "training, validation, testing")
