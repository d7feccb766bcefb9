"""Downstream tools on the offline sets (CPU): multi-scale + flip testing, whole-model FLOPs, demo, throughput.

One tiny Gauss-DCLS UperNet is fine-tuned 4 iterations (seed 0) on the offline ADE20K-layout set; its checkpoint
is tested single-scale and with ``--tta``, and drawn by the demo. The FLOPs of the tiny configs are checked
against counts written out by hand from their layer shapes.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
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


# ------------------------------------------------------------------------------------------------- TTA
ADE_T = ROOT / "configs/downstream/ade20k/upernet_convnext-t-dcls_8xb2-amp-160k_ade20k-512x512.py"
RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _rescaled(h: int, w: int, limits: tuple[float, float]) -> tuple[int, int]:
    """(H, W) of mmcv's keep-ratio rescale into (long, short) limits: the factor that fits both, rounded."""
    f = min(max(limits) / max(h, w), min(limits) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def _expected_view(h: int, w: int, scale: tuple[int, int], r: float, protocol: str, min_short: int) -> tuple:
    """A view's (H, W): ConvNeXt's Resize(keep_ratio) into ratio x scale, or the fork's short side
    max(min_short, ratio x short) with no long-side cap (BEiT's SETR_Resize(setr_multi_scale=True))."""
    sw, sh = int(scale[0] * r), int(scale[1] * r)
    if protocol == "convnext":
        return _rescaled(h, w, (sw, sh))
    short = max(min_short, min(sw, sh))
    return _rescaled(h, w, (short * max(h, w) / min(h, w), short))


def test_tta_protocols_of_the_two_published_ade20k_columns():
    """The full ADE20K config: `convnext` (default) = whole-image views, Resize(keep_ratio) to ratio x 2048x512;
    `convnext-dcls` = its slide test_cfg kept, short side max(512, 512 r); each view's size on a 4:3 and a wide
    image."""
    from mmengine.config import Config
    from mmengine.registry import TRANSFORMS

    from dcls_vision.downstream import mm  # noqa: F401  (DclsShortSideResize)
    from dcls_vision.downstream.tta import apply_tta

    slide = dict(mode="slide", crop_size=(512, 512), stride=(341, 341))
    cfgs = {}
    for protocol in ("convnext", "convnext-dcls"):
        cfg = Config.fromfile(str(ADE_T))
        assert cfg.model.test_cfg == slide  # the single-scale test (the thesis' mIoU) slides
        assert apply_tta(cfg, protocol) == "SegTTAModel" and cfg.model.type == "SegTTAModel"
        cfgs[protocol] = cfg
    assert cfgs["convnext"].model.module.test_cfg == dict(mode="whole")
    assert cfgs["convnext-dcls"].model.module.test_cfg == slide
    for protocol, cfg in cfgs.items():
        step = cfg.test_dataloader.dataset.pipeline[-1]
        views, flips = step.transforms[0], step.transforms[1]
        assert [v.scale for v in views] == [(int(2048 * r), int(512 * r)) for r in RATIOS]
        assert [f.prob for f in flips] == [0.0, 1.0]
        for h, w in ((480, 640), (400, 2000)):
            img = np.zeros((h, w, 3), np.uint8)
            got = [TRANSFORMS.build(dict(v))(dict(img=img, img_shape=(h, w)))["img"].shape[:2] for v in views]
            assert got == [_expected_view(h, w, (2048, 512), r, protocol, 512) for r in RATIOS], (protocol, h, w)
    # the figures that tell the protocols apart, written out
    small, wide = np.zeros((480, 640, 3), np.uint8), np.zeros((400, 2000, 3), np.uint8)
    convnext, fork = (cfgs[p].test_dataloader.dataset.pipeline[-1].transforms[0] for p in cfgs)
    shape = lambda v, img: TRANSFORMS.build(dict(v))(dict(img=img))["img"].shape[:2]  # noqa: E731
    assert shape(convnext[0], small) == (256, 341) and shape(fork[0], small) == (512, 683)  # ratio 0.5
    assert shape(convnext[2], wide) == (410, 2048) and shape(fork[2], wide) == (512, 2560)  # ratio 1: no long cap


class ViewSpy:
    """Wraps a SegTTAModel's module: the size, flip and logits of every view it predicts, and its slide calls."""

    def __init__(self, module) -> None:
        self.views: list[tuple[tuple[int, int], bool, torch.Tensor]] = []
        self.slides = 0
        self.test_step, self.slide = module.test_step, module.slide_inference
        module.test_step, module.slide_inference = self._test_step, self._slide

    def _test_step(self, data):
        out = self.test_step(data)
        meta = data["data_samples"][0]
        self.views.append((tuple(data["inputs"][0].shape[-2:]), bool(meta.flip), out[0].seg_logits.data.clone()))
        return out

    def _slide(self, *args, **kwargs):
        self.slides += 1
        return self.slide(*args, **kwargs)


class Predictions(Hook):
    def __init__(self) -> None:
        self.preds: list[torch.Tensor] = []

    def after_test_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.preds += [o.pred_sem_seg.data[0] for o in outputs]


@pytest.mark.parametrize("protocol", ["convnext", "convnext-dcls"])
def test_tta_views_resize_and_softmax_average_on_a_real_checkpoint(seg_checkpoint, ade_root, tmp_path, protocol):
    """The tiny UperNet's checkpoint on the offline ADE set, its test set to slide 128x128 windows (as the full
    configs slide 512x512): per image 12 views, sized as the protocol says, inferred whole (`convnext`) or by
    sliding windows (`convnext-dcls`), and the prediction is the argmax of their softmax averaged at the image size."""
    from mmseg.models import SegTTAModel

    from dcls_vision.downstream import test as test_entry

    argv = [str(TINY_SEG), str(seg_checkpoint), "--data-root", str(ade_root), "--work-dir", str(tmp_path / "w")]
    argv += ["--cfg-options", "model.test_cfg.mode=slide", "model.test_cfg.crop_size=(128,128)"]
    argv += ["model.test_cfg.stride=(85,85)"]
    single, _ = test_entry.build_runner(argv)
    assert not isinstance(single.model, SegTTAModel)
    runner, _ = test_entry.build_runner([*argv, "--tta", protocol] if protocol != "convnext" else [*argv, "--tta"])
    assert isinstance(runner.model, SegTTAModel)
    spy, preds = ViewSpy(runner.model.module), Predictions()
    runner.register_hook(preds)
    runner.test()
    assert runner.model.module.test_cfg.mode == ("whole" if protocol == "convnext" else "slide")
    assert (spy.slides == 0) == (protocol == "convnext") and len(preds.preds) == 3 and len(spy.views) == 36
    for i, pred in enumerate(preds.preds):
        views = spy.views[12 * i : 12 * (i + 1)]
        h, w = pred.shape
        expected = [_expected_view(h, w, (256, 128), r, protocol, 128) for r in RATIOS for _ in (0, 1)]
        assert [v[0] for v in views] == expected and [v[1] for v in views] == [False, True] * 6
        mean = torch.stack([v[2].softmax(0) for v in views]).mean(0)  # every view's logits at the image size
        assert torch.equal(pred, mean.argmax(0))
    ckpt = torch.load(seg_checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    for key, value in runner.model.module.state_dict().items():  # the checkpoint is in the wrapped model
        assert torch.equal(value, ckpt[key]), key


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


def test_demo_bad_inputs_are_one_line_and_the_classes_are_the_models(seg_checkpoint, ade_root, tmp_path):
    """Class names from the checkpoint's meta, else from the config's test set (not mmseg's Cityscapes guess for a
    4-class model); a corrupt image, our trainer's last.pth, a checkpoint missing the head and an --out that is a
    file each stop with one line, exit 2, before anything is drawn."""
    import subprocess
    import sys

    from dcls_vision.downstream import demo

    image = sorted((ade_root / "images" / "validation").glob("*.jpg"))[0]
    out = tmp_path / "out"
    ckpt = torch.load(seg_checkpoint, map_location="cpu", weights_only=True)
    bare = tmp_path / "bare.pth"
    torch.save({"state_dict": ckpt["state_dict"]}, bare)  # no meta: mmseg would name the 4 classes after Cityscapes
    for path in (seg_checkpoint, bare):
        model, _, _ = demo._model(demo.parse_args([str(TINY_SEG), str(path), str(image), "--out", str(out)]))
        assert tuple(model.dataset_meta["classes"]) == ("scene", "rectangle", "ellipse", "triangle")
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(image.read_bytes()[:300])  # a JPEG cut short: the suffix is right, the data is not
    last = tmp_path / "last.pth"  # what `python train.py` writes: a backbone, not a fine-tuned segmentor
    torch.save({"model": {"stem.0.weight": torch.zeros(1)}, "config": {"model": {"name": "x"}}, "epoch": 1}, last)
    headless = tmp_path / "headless.pth"
    torch.save(
        {"state_dict": {k: v for k, v in ckpt["state_dict"].items() if not k.startswith("decode_head.")}}, headless
    )
    a_file = tmp_path / "a_file"
    a_file.write_text("not a directory")
    for ckpt_path, img, out_dir, needle in (
        (seg_checkpoint, corrupt, out, f"image {str(corrupt)!r} cannot be decoded"),
        (last, image, out, "has no 'state_dict' (found keys ['config', 'epoch', 'model']) (a backbone of python train"),
        (headless, image, out, "does not fit the config's model"),
        (seg_checkpoint, image, a_file, f"--out {str(a_file)!r} is an existing file"),
    ):
        with pytest.raises(CliError, match=re.escape(needle)):
            demo.main([str(TINY_SEG), str(ckpt_path), str(img), "--out", str(out_dir)])
    assert not list(out.glob("*.png"))
    proc = subprocess.run(
        [sys.executable, "-m", "dcls_vision.downstream.demo", str(TINY_SEG), str(seg_checkpoint), str(corrupt)]
        + ["--out", str(out)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-2000:]
    assert "cannot be decoded" in proc.stderr


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
    # an existing --out directory is written into again; a checkpoint without the RoI heads is refused (mmdet's
    # loader would warn and draw boxes of randomly initialised heads)
    assert demo.main([str(TINY_DET), str(ckpt), str(images[0]), "--out", str(out)]) == [written[0]]
    partial = tmp_path / "partial.pth"
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("roi_head.")}
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": classes}}}, partial)
    with pytest.raises(CliError, match="does not fit the config's model"):
        demo.main([str(TINY_DET), str(partial), str(images[0]), "--out", str(out)])


@pytest.mark.slow
def test_readme_flops_figures_are_current(tmp_path):
    """The FLOPs table of docs/downstream.md is a readme_figures entry run here: its commands, verbatim from the
    page, recount every model and any figure that differs from the page's fails (a counter or config change updates
    the table with `python tools/readme_figures.py --only downstream_flops --write`)."""
    import subprocess
    import sys

    entry = _tool("readme_figures").ENTRIES["downstream_flops"]
    cmd = [sys.executable, str(ROOT / "tools" / "readme_figures.py"), "--only", "downstream_flops", "--check"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [*cmd, "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=3000
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert f"0 of {len(entry.values)} figure(s) differ from the docs" in proc.stdout


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
