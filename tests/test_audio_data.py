"""AudioSet as users hold it (issue 29.1/29.2): the PANNs packed HDF5 files streamed clip by clip, unbalanced +
balanced joined into one split, and the data problems said at start in one line each."""

from __future__ import annotations

import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from scipy.io import wavfile

from dcls_vision.data.audio import AudioDataError, AudioDataWarning, AudioSetFolder
from dcls_vision.data.audio_builder import build_audioset
from dcls_vision.data.audio_features import CLIP_SAMPLES
from dcls_vision.data.audio_hdf5 import AudioSetHDF5, split_files
from dcls_vision.data.audio_synth import ensure_embedded_audioset
from dcls_vision.engine import register_configs

h5py = pytest.importorskip("h5py")  # in requirements.txt
ROOT = Path(__file__).resolve().parents[1]
CLASSES = 5


def _write_panns(path: Path, names: list[str], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A PANNs packed file as PANNs' pack_waveforms_to_hdf5 writes it: audio_name S20, waveform int16, target bool."""
    rng = np.random.default_rng(seed)
    waves = rng.integers(-20000, 20000, size=(len(names), 16000), dtype=np.int16)  # 0.5 s: the reader pads
    targets = rng.random((len(names), CLASSES)) < 0.4
    with h5py.File(path, "w") as f:
        f.create_dataset("audio_name", data=np.array([n.encode() for n in names], dtype="S20"))
        f.create_dataset("waveform", data=waves)
        f.create_dataset("target", data=targets)
    return waves, targets


@pytest.fixture
def panns(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray]]]:
    root = tmp_path / "waveforms"
    root.mkdir()
    content = {
        "balanced_train": _write_panns(root / "balanced_train.h5", [f"Ybal{i}.wav" for i in range(4)], 0),
        "unbalanced_train_part00": _write_panns(root / "unbalanced_train_part00.h5", ["Yu0.wav", "Yu1.wav"], 1),
        "unbalanced_train_part01": _write_panns(root / "unbalanced_train_part01.h5", ["Yu2.wav"], 2),
        "eval": _write_panns(root / "eval.h5", ["Yev0.wav", "Yev1.wav", "Yev2.wav"], 3),
    }
    return root, content


def _audioset_cfg(root: Path, *overrides: str):
    register_configs()  # idempotent; the schemas the composition validates against
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["data=audioset", f"data.root={root}", "data.num_classes=null", *overrides])
    return cfg.data, cfg.aug


def test_hdf5_split_joins_balanced_and_unbalanced_files_and_streams_clips(panns) -> None:
    root, content = panns
    ds = AudioSetHDF5(split_files(root, "balanced_train+unbalanced_train_part*", "data.train_split"))
    assert [f.name for f in ds.files] == [
        "balanced_train.h5",
        "unbalanced_train_part00.h5",
        "unbalanced_train_part01.h5",
    ]
    assert len(ds) == 7 and ds.num_classes == CLASSES and ds._handles == {}  # nothing opened or loaded at start
    order = [("balanced_train", i) for i in range(4)] + [("unbalanced_train_part00", i) for i in range(2)]
    order.append(("unbalanced_train_part01", 0))
    for k, (name, j) in enumerate(order):
        wave, target = ds[k]
        waves, targets = content[name]
        assert wave.shape == (CLIP_SAMPLES,) and torch.equal(wave[16000:], torch.zeros(CLIP_SAMPLES - 16000))
        assert torch.equal(wave[:16000], torch.from_numpy(waves[j].astype(np.float32) / 32768.0))  # int16 / 2**15
        assert target.tolist() == targets[j].astype(np.float32).tolist()
    assert (
        ds.name(4) == "Yu0.wav"
        and ds.targets.shape == (7, CLASSES)
        and ds.targets[6].tolist() == content["unbalanced_train_part01"][1][0].astype(np.uint8).tolist()
    )
    clone = pickle.loads(pickle.dumps(ds))  # what a DataLoader worker receives: no open handle travels
    assert clone._handles == {} and torch.equal(clone[5][0], ds[5][0])
    loader = torch.utils.data.DataLoader(ds, batch_size=7, num_workers=2)
    assert torch.equal(next(iter(loader))[0], torch.stack([ds[i][0] for i in range(7)]))


def test_hdf5_through_the_builder_and_its_errors(panns) -> None:
    root, _ = panns
    split = "data.train_split=balanced_train+unbalanced_train_part*"
    data, aug = _audioset_cfg(root, "data.format=hdf5", split, "data.mean=[]", "data.std=[]")
    train, val, classes = build_audioset(data, aug)
    assert (len(train), len(val), classes) == (7, 3, CLASSES)
    assert (root / "norm_stats_hdf5_balanced_train_unbalanced_train_part_.json").is_file()  # a plain file name
    with pytest.raises(AudioDataError, match=r"data.val_split='test': no file .*test.h5; allowed: PANNs .*eval.h5"):
        build_audioset(*_audioset_cfg(root, "data.format=hdf5", "data.train_split=eval", "data.val_split=test"))
    with h5py.File(root / "broken.h5", "w") as f:
        f.create_dataset("waveform", data=np.zeros((1, 10), dtype=np.int16))
    with pytest.raises(AudioDataError, match=r"broken.h5: no audio_name, target dataset; expected the PANNs layout"):
        AudioSetHDF5([root / "broken.h5"])


def test_folder_format_on_panns_files_names_the_split_option_layouts_and_the_fix(panns) -> None:
    """Issue 29.2: the error was only 'train_segments.csv not found'."""
    root, _ = panns
    with pytest.raises(AudioDataError) as err:
        build_audioset(*_audioset_cfg(root))
    line = str(err.value)
    assert line.startswith("data.train_split='train' (data.format=folder): ") and "\n" not in line
    assert "allowed: data.format=folder" in line and "hdf5 (PANNs" in line
    assert "holds balanced_train.h5, eval.h5" in line and "set data.format=hdf5" in line


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_embedded_audioset(tmp_path_factory.mktemp("audio") / "set", 6, 4, seed=1, n_words=3)


def _copy(small_set: Path, tmp_path: Path) -> Path:
    root = tmp_path / "set"
    shutil.copytree(small_set, root)
    return root


def _folder(root: Path, split: str = "train") -> AudioSetFolder:
    return AudioSetFolder(root / f"{split}_segments.csv", root / "audio" / split, root / "class_labels_indices.csv")


def test_missing_clips_are_counted_and_the_first_named(small_set: Path, tmp_path: Path) -> None:
    root = _copy(small_set, tmp_path)
    for ytid in ("tr000000002", "tr000000004"):
        (root / "audio" / "train" / f"{ytid}.wav").unlink()
    with pytest.warns(
        AudioDataWarning, match=r"2 of 6 clips are not in .* left out \(first: tr000000002, tr000000004\)"
    ):
        ds = _folder(root)
    assert len(ds) == 4 and ds.missing == 2


def test_flac_without_soundfile_fails_at_start(small_set: Path, tmp_path: Path, monkeypatch) -> None:
    soundfile = pytest.importorskip("soundfile")
    root = _copy(small_set, tmp_path)
    wav = root / "audio" / "train" / "tr000000001.wav"
    sr, data = wavfile.read(wav)
    soundfile.write(wav.with_suffix(".flac"), data, sr)
    wav.unlink()
    assert _folder(root)[1][0].abs().max() > 0.1  # read with soundfile
    monkeypatch.setitem(sys.modules, "soundfile", None)  # as if not installed: the import fails
    with pytest.raises(AudioDataError, match=r"1 clips are .flac, which need the soundfile package"):
        _folder(root)  # at construction, not at the first __getitem__


def test_clips_below_32khz_are_counted_in_one_warning(small_set: Path, tmp_path: Path) -> None:
    root = _copy(small_set, tmp_path)
    for ytid in ("tr000000000", "tr000000003"):
        path = root / "audio" / "train" / f"{ytid}.wav"
        _, data = wavfile.read(path)
        wavfile.write(path, 16000, data[::2])
    with pytest.warns(AudioDataWarning, match=r"2 of 6 clips checked .* below 32000 Hz \(lowest 16000 Hz\)") as record:
        _folder(root)
    assert len([w for w in record if issubclass(w.category, AudioDataWarning)]) == 1  # once, with the count


def test_precomputed_mel_arrays_say_which_augmentations_are_skipped(tmp_path: Path) -> None:
    for split in ("train", "eval"):
        np.save(tmp_path / f"{split}_data.npy", np.full((2, 128, 1001), -18.0, dtype=np.float32))
        np.save(tmp_path / f"{split}_targets.npy", np.eye(3, dtype=np.uint8)[[0, 2]])
    data, aug = _audioset_cfg(tmp_path, "data.format=arrays", "aug=audio")
    with pytest.warns(
        AudioDataWarning, match=r"waveform roll \(data.roll=True\), speed perturbation .* random erasing"
    ):
        build_audioset(data, aug)
    np.save(tmp_path / "train_data.npy", np.zeros((2, 32000), dtype=np.int16))  # waveforms: nothing to say
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", AudioDataWarning)
        build_audioset(data, aug)
