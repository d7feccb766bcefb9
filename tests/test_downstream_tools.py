"""Downstream tools on the offline sets (CPU): multi-scale + flip testing, whole-model FLOPs, demo, throughput.

One tiny Gauss-DCLS UperNet is fine-tuned 4 iterations (seed 0) on the offline ADE20K-layout set; its checkpoint
is tested single-scale and with ``--tta``, and drawn by the demo. The FLOPs of the tiny configs are checked
against counts written out by hand from their layer shapes.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
TINY_DET = ROOT / "configs/downstream/tiny/cascade-mask-rcnn_tiny-dcls_shapes.py"
TINY_SEG = ROOT / "configs/downstream/tiny/upernet_tiny-dcls-gauss_ade-shapes.py"

try:
    import mmcv.ops  # noqa: F401  (the compiled ops: mmdet/mmseg models need them)
    import mmdet  # noqa: F401
    import mmseg  # noqa: F401
except ImportError as err:  # pragma: no cover - machines without the mm extra
    if os.environ.get("CI"):
        raise
    pytest.skip(f"OpenMMLab extra not installed ({err})", allow_module_level=True)

from mmengine.hooks import Hook  # noqa: E402

from dcls_vision.downstream import datasets  # noqa: E402
from dcls_vision.downstream.cli import CliError  # noqa: E402
from dcls_vision.utils.errors import UserError  # noqa: E402


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    return datasets.make_ade(tmp_path_factory.mktemp("ade"), num_train=6, num_val=3, size=128)["root"]


@pytest.fixture(scope="module")
def seg_checkpoint(ade_root, tmp_path_factory) -> Path:
    """4 iterations of the tiny UperNet with the real train entry point (seed 0)."""
    from dcls_vision.downstream.train import build_runner

    work = tmp_path_factory.mktemp("seg")
    argv = [str(TINY_SEG), "--work-dir", str(work), "--data-root", str(ade_root)]
    build_runner([*argv, "--cfg-options", "randomness.seed=0"]).train()
    return work / "iter_4.pth"


class Views(Hook):
    """How many augmented views each test batch carries (a plain batch: one tensor per image)."""

    def __init__(self) -> None:
        self.views: list[int] = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        inputs = data_batch["inputs"]
        self.views.append(len(inputs) if isinstance(inputs[0], (list, tuple)) else 1)


# ------------------------------------------------------------------------------------------------- TTA
def test_tta_segmentation_runs_multiscale_flip_and_is_not_worse(seg_checkpoint, ade_root, tmp_path):
    from mmseg.models import SegTTAModel

    from dcls_vision.downstream import test as test_entry

    argv = [str(TINY_SEG), str(seg_checkpoint), "--data-root", str(ade_root)]
    single, _ = test_entry.build_runner([*argv, "--work-dir", str(tmp_path / "ss")])
    tta, _ = test_entry.build_runner([*argv, "--work-dir", str(tmp_path / "ms"), "--tta"])
    assert not isinstance(single.model, SegTTAModel) and isinstance(tta.model, SegTTAModel)
    step = tta.cfg.test_dataloader.dataset.pipeline[-1]
    assert step.type == "TestTimeAug"  # the test Resize (256, 128) times 0.5 ... 1.75, then no flip / flip
    assert [t.scale for t in step.transforms[0]] == [
        (128, 64),
        (192, 96),
        (256, 128),
        (320, 160),
        (384, 192),
        (448, 224),
    ]
    assert [t.prob for t in step.transforms[1]] == [0.0, 1.0]
    hooks = Views(), Views()
    single.register_hook(hooks[0])
    tta.register_hook(hooks[1])
    ss, ms = single.test(), tta.test()
    assert hooks[0].views == [1, 1, 1] and hooks[1].views == [12, 12, 12]  # 6 scales x 2 flips per image
    ckpt = torch.load(seg_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in tta.model.module.state_dict().items():  # the checkpoint is in the wrapped model
        assert torch.equal(value, ckpt[key]), key
    print("mIoU single-scale", ss["mIoU"], "multi-scale + flip", ms["mIoU"])
    assert ms["mIoU"] != ss["mIoU"] and ms["mIoU"] >= ss["mIoU"]


def test_tta_detection_box_only_and_mask_heads_refused(tmp_path):
    from mmengine.config import Config

    from dcls_vision.downstream import test as test_entry
    from dcls_vision.downstream.tta import apply_tta

    ckpt = tmp_path / "c.pth"
    ckpt.write_bytes(b"")
    with pytest.raises(CliError, match="--tta is not supported for CascadeRCNN with a mask head"):
        test_entry.main([str(TINY_DET), str(ckpt), "--work-dir", str(tmp_path / "w"), "--tta"])
    cfg = Config.fromfile(str(TINY_DET))
    cfg.model.roi_head.mask_head = None
    cfg.model.roi_head.mask_roi_extractor = None
    assert apply_tta(cfg) == "DetTTAModel" and cfg.model.module.type == "CascadeRCNN"
    step = cfg.test_dataloader.dataset.pipeline[-1]
    assert [t.scale for t in step.transforms[0]][2] == (160, 160) and "flip" in step.transforms[-1][0].meta_keys


# ----------------------------------------------------------------------------------------------- FLOPs
def _hand_backbone_macs(h: int, w: int) -> int:
    """The tiny ConvNeXt-dcls (16-32-64-128, depths 1-1-2-1, DCLS exported as dense 9x9 depthwise)."""
    dims, depths = (16, 32, 64, 128), (1, 1, 2, 1)
    hw = (h // 4) * (w // 4)
    macs = 3 * 16 * 4 * 4 * hw  # stem 4x4 stride 4
    for stage, (c, d) in enumerate(zip(dims, depths, strict=True)):
        if stage:
            hw //= 4
            macs += dims[stage - 1] * c * 2 * 2 * hw  # downsample 2x2 stride 2
        macs += d * (c * 9 * 9 * hw + 2 * 4 * c * c * hw)  # depthwise 9x9, then C->4C->C
    return macs


def _hand_uperhead_macs(h: int, w: int) -> int:
    """UPerHead, in 16-32-64-128, 32 channels, pool scales 1, 2, 3, 6, 4 classes (the tiny config)."""
    hws = [(h // s) * (w // s) for s in (4, 8, 16, 32)]
    ppm = 128 * 32 * sum(s * s for s in (1, 2, 3, 6))  # 1x1 convs on the pooled maps
    bottleneck = (128 + 4 * 32) * 32 * 9 * hws[3]
    laterals = sum(c * 32 * n for c, n in zip((16, 32, 64), hws[:3], strict=True))
    fpn = 32 * 32 * 9 * sum(hws[:3])
    fuse = 4 * 32 * 32 * 9 * hws[0]
    return ppm + bottleneck + laterals + fpn + fuse + 32 * 4 * hws[0]


def test_flops_of_tiny_configs_match_a_hand_count(capsys, tmp_path):
    tool = _tool("downstream_flops")
    out = tmp_path / "flops.jsonl"
    rows = tool.main([str(TINY_SEG), str(TINY_DET), "--size", "256", "128", "--out", str(out)])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert lines == rows and [json.loads(line) for line in out.read_text().splitlines()] == rows
    seg, det = rows
    backbone = _hand_backbone_macs(128, 256)
    assert seg["input_shape"] == [1, 3, 128, 256] and seg["size_wh"] == [256, 128]
    assert seg["parts_gmacs"]["backbone"] * 2e9 == pytest.approx(2 * backbone, abs=0.5)
    assert seg["parts_gmacs"]["decode_head"] * 2e9 == pytest.approx(2 * _hand_uperhead_macs(128, 256), abs=0.5)
    assert seg["parts_gmacs"]["auxiliary_head"] == 0.0  # training-only
    assert seg["gmacs"] * 1e9 == pytest.approx(backbone + _hand_uperhead_macs(128, 256), abs=0.5)
    assert seg["dcls_layers"] == 5 and seg["construction"]["gflops_per_pass"] > 0  # counted apart
    assert seg["params"]["total"] == sum(p.numel() for p in _seg_model().parameters())  # auxiliary head included
    # Cascade: 3 stages, box head on 1000 proposals (2 FC 1568->64->64, cls 64->4, reg 64->4), mask head on 100
    # (4 convs 3x3 32->32 at 14x14, deconv 2x2 to 28x28, 1x1 -> 3 classes)
    box = 1000 * (32 * 7 * 7 * 64 + 64 * 64 + 64 * 4 + 64 * 4)
    mask = 100 * (4 * 32 * 32 * 9 * 14 * 14 + 32 * 32 * 2 * 2 * 14 * 14 + 32 * 3 * 28 * 28)
    assert det["parts_gmacs"]["backbone"] * 1e9 == pytest.approx(backbone, abs=0.5)
    assert det["parts_gmacs"]["roi_head"] * 1e9 == pytest.approx(3 * (box + mask), abs=0.5)


def _seg_model():
    from dcls_vision.downstream.complexity import load_model

    return load_model(TINY_SEG)[0]


# ------------------------------------------------------------------------------------------------ demo
def _changed_fraction(png: Path, image: Path) -> float:
    import mmcv

    drawn, original = mmcv.imread(str(png)), mmcv.imread(str(image))
    assert drawn.shape == original.shape
    return float((np.abs(drawn.astype(int) - original.astype(int)).sum(-1) > 0).mean())


def test_demo_draws_segmentation_overlay(seg_checkpoint, ade_root, tmp_path):
    from dcls_vision.downstream import demo

    images = sorted((ade_root / "images" / "validation").glob("*.jpg"))[:2]
    written = demo.main([str(TINY_SEG), str(seg_checkpoint), *map(str, images), "--out", str(tmp_path / "out")])
    assert written == [tmp_path / "out" / f"{p.stem}.png" for p in images]
    for png, image in zip(written, images, strict=True):
        assert _changed_fraction(png, image) > 0.5  # the class map blended over every pixel


def test_demo_draws_detections(tmp_path):
    """Boxes and masks of a (randomly initialised) Cascade Mask R-CNN saved as a checkpoint of the train format."""
    from dcls_vision.downstream import demo
    from dcls_vision.downstream.complexity import load_model

    root = datasets.make_coco(tmp_path / "coco", num_train=1, num_val=2, size=160)["root"]
    torch.manual_seed(0)
    model, cfg = load_model(TINY_DET)
    ckpt = tmp_path / "det.pth"
    classes = cfg.test_dataloader.dataset.metainfo["classes"]
    torch.save({"state_dict": model.state_dict(), "meta": {"dataset_meta": {"classes": classes}}}, ckpt)
    images = sorted((root / "val2017").glob("*.jpg"))
    out = tmp_path / "out"
    written = demo.main([str(TINY_DET), str(ckpt), *map(str, images), "--out", str(out), "--score-thr", "0"])
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in written) and len(written) == 2
    for png, image in zip(written, images, strict=True):
        assert _changed_fraction(png, image) > 0.01
    with pytest.raises(CliError, match="is not an image file"):
        demo.main([str(TINY_DET), str(ckpt), str(ckpt), "--out", str(out)])


# ------------------------------------------------------------------------------------------ throughput
def test_throughput_tool_times_predict(capsys):
    tool = _tool("downstream_throughput")
    (row,) = tool.main([str(TINY_SEG), "--size", "64", "64", "--warmup", "0", "--repeats", "1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == row
    assert row["device"] == "cpu" and row["size_wh"] == [64, 64] and row["images_per_s"] > 0
    assert row["test_mode"] == "whole" and row["model"] == "EncoderDecoder"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device 'cuda' is not available here; allowed: cpu"):
            tool.main([str(TINY_SEG), "--device", "cuda"])
