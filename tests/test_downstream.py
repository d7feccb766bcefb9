"""Downstream fine-tuning with real mmengine Runners on real-format data made offline (CPU).

A tiny DCLS ConvNeXt is pre-trained for one epoch by our trainer on an ImageNet-style folder of bundled photos;
its ``last.pth`` initialises the backbone of a Cascade Mask R-CNN trained a few iterations on a COCO-format set
and evaluated with COCO bbox/segm AP; a Gauss-DCLS UperNet does the same on an ADE20K-layout set (mIoU).
Probe hooks inside those runs check the DCLS rules (positions/σ at 5× the LR of their layer, weight decay 0,
clamping after every iteration) and that the backbone holds the trainer's weights when training starts.
"""
# ruff: noqa: E402  (the mm-dependent imports follow the skip guard)

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
TINY_DET = ROOT / "configs/downstream/tiny/cascade-mask-rcnn_tiny-dcls_shapes.py"
TINY_SEG = ROOT / "configs/downstream/tiny/upernet_tiny-dcls-gauss_ade-shapes.py"
TINY_KWARGS = {
    "dims": [16, 32, 64, 128],
    "depths": [1, 1, 2, 1],
    "dcls_dilated_kernel_size": 9,
    "dcls_kernel_count": 10,
}

try:
    import mmcv.ops  # noqa: F401  (the compiled ops: mmdet/mmseg models need them)
    import mmdet  # noqa: F401
    import mmseg  # noqa: F401

    MM_ERROR = None
except ImportError as err:  # pragma: no cover - machines without the mm extra
    MM_ERROR = f"OpenMMLab extra not installed ({err}); run `bash tools/install_mm.sh`"
    if os.environ.get("CI"):
        raise ImportError(f"CI must run the downstream tests: {MM_ERROR}") from err
    pytest.skip(MM_ERROR, allow_module_level=True)

from mmengine.hooks import Hook

from dcls_vision.downstream import datasets, layer_decay
from dcls_vision.downstream.backbone import DclsBackbone, DclsConvFormer, DclsConvNeXt
from dcls_vision.engine import train as train_classifier
from dcls_vision.engine.checkpoint import load_checkpoint
from dcls_vision.ops import dcls_layers, dcls_parameters


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """A real run of our trainer: tiny ConvNeXt-dcls (the tiny configs' backbone), 1 epoch, with EMA."""
    base = tmp_path_factory.mktemp("pretrain")
    folder = datasets.make_image_folder(base / "folder", num_per_class=16, num_val_per_class=4, size=64)
    overrides = [
        "experiment=quickstart",
        "data=imagenet",
        f"data.root={folder['root']}",
        "data.num_classes=4",
        "data.img_size=64",
        "data.num_workers=0",
        "aug=none",
        "model=convnext_tiny_dcls",
        "model.drop_path_rate=0.0",
        *[f"+model.kwargs.{k}={v}" for k, v in TINY_KWARGS.items()],
        "trainer.batch_size=16",
        "trainer.epochs=1",
        "trainer.ema.enabled=true",
        "trainer.ema.decay=0.5",
        "trainer.channels_last=false",
        "logger.wandb=false",
        "logger.progress=false",
        f"trainer.output_dir={base / 'run'}",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        train_classifier(compose("config", overrides=overrides))
    return base / "run"


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory) -> Path:
    return datasets.make_coco(tmp_path_factory.mktemp("coco"), num_train=6, num_val=4, size=160)["root"]


@pytest.fixture(scope="module")
def ade_root(tmp_path_factory) -> Path:
    return datasets.make_ade(tmp_path_factory.mktemp("ade"), num_train=6, num_val=3, size=128)["root"]


class Probe(Hook):
    """Records, inside a real run, what the DCLS rules are about (see the module docstring)."""

    def __init__(self, priority: str, push_positions: bool = False, reference: dict | None = None) -> None:
        self.priority = priority
        self.push_positions, self.reference = push_positions, reference
        self.groups: list[list[dict]] = []
        self.overshoot: list[float] = []
        self.metrics: dict = {}
        self.loaded_ok: bool | None = None

    @staticmethod
    def _model(runner):
        return runner.model.module if hasattr(runner.model, "module") else runner.model

    def before_train(self, runner) -> None:
        model = self._model(runner)
        if self.reference is not None:  # the backbone holds the trainer's weights when training starts
            body = model.backbone.body.state_dict()
            self.loaded_ok = all(torch.equal(body[k], v) for k, v in self.reference.items())
        if self.push_positions:  # every element on the upper edge: a step sends some of them outside
            with torch.no_grad():
                for layer in dcls_layers(model):
                    for axis, (_, hi) in enumerate(layer.position_limits()):
                        layer.positions[axis].fill_(hi)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        model = self._model(runner)
        worst = 0.0
        for layer in dcls_layers(model):
            for axis, (lo, hi) in enumerate(layer.position_limits()):
                p = layer.positions[axis]
                worst = max(worst, float((p.detach() - hi).max()), float((lo - p.detach()).max()))
        self.overshoot.append(worst)
        ids = {id(p): kind for kind, ps in dcls_parameters(model).items() for p in ps}
        self.groups.append(
            [
                {
                    "name": g["group_name"],
                    "lr": g["lr"],
                    "wd": g["weight_decay"],
                    "kinds": {ids.get(id(p), "other") for p in g["params"]},
                    "n": len(g["params"]),
                }
                for g in runner.optim_wrapper.optimizer.param_groups
            ]
        )
        self.repulsive = runner.message_hub.log_scalars.get("train/loss_repulsive")

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics = dict(metrics or {})


def _run(config: Path, work_dir: Path, data_root: Path, *extra: str, reference: dict | None = None):
    """Train with the real entry point's runner plus two probes (before and after the clamp hook)."""
    from dcls_vision.downstream.train import build_runner

    runner = build_runner([str(config), "--work-dir", str(work_dir), "--data-root", str(data_root), *extra])
    early, late = Probe("HIGHEST", push_positions=True, reference=reference), Probe("LOWEST")
    runner.register_hook(early)
    runner.register_hook(late)
    runner.train()
    return runner, early, late


def _check_dcls_groups(snapshots: list[list[dict]], kinds: set[str]) -> None:
    """Positions/σ: weight decay 0 and exactly pos_lr_scale (5) × the LR of their layer's decayed weights."""
    assert len(snapshots) >= 2 and snapshots[0] != snapshots[-1]  # warm-up changes the LRs: checked every iter
    for groups in snapshots:
        by_name = {g["name"]: g for g in groups}
        seen = set()
        for g in groups:
            special = g["kinds"] & {"positions", "sigma"}
            if not special:
                continue
            assert g["kinds"] == special and len(special) == 1  # no ordinary weight shares a group with them
            kind = special.pop()
            seen.add(kind)
            assert g["wd"] == 0.0 and g["name"].endswith(f"_{kind}")
            layer = g["name"][: -len(kind) - 1]
            assert g["lr"] == pytest.approx(5.0 * by_name[f"{layer}_decay"]["lr"], rel=1e-12)
        assert seen == kinds
        for g in groups:
            if g["name"].endswith("_decay") and not g["name"].endswith("no_decay"):
                assert g["wd"] == 0.05 and g["kinds"] == {"other"}


# -------------------------------------------------------------------------------------- offline data
def test_coco_set_is_valid_coco(coco_root):
    """The generated files are real COCO: pycocotools/mmdet read them, and the ground truth scores AP 1."""
    from mmdet.evaluation import CocoMetric
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    ann_file = coco_root / "annotations/instances_val2017.json"
    coco = COCO(str(ann_file))
    assert sorted(c["name"] for c in coco.loadCats(coco.getCatIds())) == sorted(datasets.SHAPES)
    metric = CocoMetric(ann_file=str(ann_file), metric=["bbox", "segm"])
    metric.dataset_meta = {"classes": datasets.SHAPES}
    samples = []
    for img_id in coco.getImgIds():
        info, anns = coco.imgs[img_id], coco.imgToAnns[img_id]
        assert anns and (coco_root / "val2017" / info["file_name"]).is_file()
        masks = torch.stack([torch.from_numpy(mask_utils.decode(a["segmentation"])).bool() for a in anns])
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
        assert all(abs(a["area"] - float(m.sum())) < 1e-6 for a, m in zip(anns, masks))
        samples.append(
            {
                "img_id": img_id,
                "ori_shape": (info["height"], info["width"]),
                "pred_instances": {
                    "bboxes": boxes,
                    "scores": torch.ones(len(anns)),
                    "masks": masks,
                    "labels": torch.tensor([a["category_id"] - 1 for a in anns]),
                },
            }
        )
    metric.process({}, samples)
    results = metric.evaluate(len(samples))
    assert results["coco/bbox_mAP"] == pytest.approx(1.0) and results["coco/segm_mAP"] == pytest.approx(1.0)


def test_ade_set_reads_as_ade(ade_root):
    """mmseg reads the ADE layout with reduce_zero_label (0 -> 255 ignored) and the ground truth scores mIoU 100."""
    from mmengine.registry import init_default_scope
    from mmseg.datasets import BaseSegDataset
    from mmseg.evaluation import IoUMetric

    init_default_scope("mmseg")
    ds = BaseSegDataset(
        data_root=str(ade_root),
        data_prefix={"img_path": "images/validation", "seg_map_path": "annotations/validation"},
        img_suffix=".jpg",
        seg_map_suffix=".png",
        reduce_zero_label=True,
        metainfo={"classes": datasets.ADE_CLASSES, "palette": list(datasets.ADE_PALETTE)},
        pipeline=[{"type": "LoadAnnotations", "reduce_zero_label": True}],
    )
    assert len(ds) == 3
    metric = IoUMetric(iou_metrics=["mIoU"])
    metric.dataset_meta = ds.metainfo
    for i in range(len(ds)):
        seg = torch.from_numpy(ds[i]["gt_seg_map"]).long()
        assert set(seg.unique().tolist()) <= {0, 1, 2, 3, 255} and (seg == 255).any()  # border band ignored
        metric.process({}, [{"pred_sem_seg": {"data": seg[None]}, "gt_sem_seg": {"data": seg[None]}}])
    assert metric.evaluate(len(ds))["mIoU"] == pytest.approx(100.0)


def test_dataset_cli(tmp_path, capsys):
    datasets.main(["ade", str(tmp_path / "ade"), "--num-train", "2", "--num-val", "1", "--size", "64"])
    paths = json.loads(capsys.readouterr().out)
    assert len(list(Path(paths["train_ann"]).glob("ADE_train_*.png"))) == 2
    with pytest.raises(SystemExit) as exit_info:
        datasets.main(["coco", str(tmp_path / "coco"), "--size", "8"])
    assert exit_info.value.code == 2
    assert "size=8 is invalid; allowed: an int or (height, width) of ints >= 32" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- backbones
def test_backbones_registered_and_multiscale():
    import mmdet.registry
    import mmseg.registry

    from dcls_vision.downstream import mm

    assert mm.REGISTERED_IN == ["mmdet", "mmseg"]
    for registry in (mmdet.registry.MODELS, mmseg.registry.MODELS):
        for cls in (DclsBackbone, DclsConvNeXt, DclsConvFormer):
            assert registry.get(cls.__name__) is cls
    assert mmdet.registry.HOOKS.get("DclsClampHook") is mm.DclsClampHook  # via mmengine's root registry
    constructors = mmseg.registry.OPTIM_WRAPPER_CONSTRUCTORS
    assert constructors.get("DclsOptimWrapperConstructor") is mm.DclsOptimWrapperConstructor

    x = torch.randn(1, 3, 64, 96)
    tiny = mmdet.registry.MODELS.build({"type": "DclsConvNeXt", "arch": "tiny", "drop_path_rate": 0.4})
    assert [tuple(f.shape) for f in tiny(x)] == [(1, 96, 16, 24), (1, 192, 8, 12), (1, 384, 4, 6), (1, 768, 2, 3)]
    assert tiny.strides == [4, 8, 16, 32] and tiny.default_num_layers() == 6
    assert tiny.body.stages[3].blocks[2].drop_path.drop_prob == pytest.approx(0.4)  # timm's linear rule, last block
    assert {layer.interpolation for layer in dcls_layers(tiny)} == {"bilinear"}
    former = mmseg.registry.MODELS.build({"type": "DclsConvFormer", "interpolation": "gauss", "out_indices": [1, 3]})
    assert [f.shape[1] for f in former(x)] == [128, 512] and former.out_channels == [128, 512]
    assert {(layer.interpolation, layer.kernel_count) for layer in dcls_layers(former)} == {("gauss", 26)}
    assert len(dcls_parameters(tiny)["positions"]) == 4  # stage-wise sharing survives the wrapper


def test_frozen_stages_stay_frozen():
    bb = DclsBackbone(model_kwargs=TINY_KWARGS, frozen_stages=2, drop_path_rate=0.2)
    bb.train()
    frozen = [bb.body.stem, bb.body.stages[0], bb.body.stages[1]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(p.requires_grad for p in bb.body.stages[2].parameters()) and bb.body.stages[2].training
    for nothing in (-1, 0):  # mmpretrain's ConvNeXt: 0 (its default) freezes nothing, like -1
        free = DclsBackbone(model_kwargs=TINY_KWARGS, frozen_stages=nothing)
        free.train()
        assert all(p.requires_grad for p in free.parameters()) and all(m.training for m in free.modules()), nothing
    one = DclsBackbone(model_kwargs=TINY_KWARGS, frozen_stages=1)  # the stem (downsample 0) and stage 0
    one.train()
    assert [any(p.requires_grad for p in m.parameters()) for m in (one.body.stem, *one.body.stages)] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert all(p.requires_grad for p in one.body.stages[1].downsample.parameters())  # downsample 1 is stage 1's


def test_bad_backbone_arguments():
    with pytest.raises(ValueError, match="model_name='convnext_huge_dcls' is not a timm model; allowed: convnext_tiny"):
        DclsBackbone(model_name="convnext_huge_dcls")
    with pytest.raises(ValueError, match="checkpoint_key='best' is not supported; allowed: model, ema"):
        DclsBackbone(model_kwargs=TINY_KWARGS, checkpoint_key="best")
    with pytest.raises(ValueError, match=r"frozen_stages=7 is invalid; allowed: an int in -1\.\.4"):
        DclsBackbone(model_kwargs=TINY_KWARGS, frozen_stages=7)
    with pytest.raises(ValueError, match="arch='large' is not supported; allowed: tiny, small, base"):
        DclsConvNeXt(arch="large")


# --------------------------------------------------------------------------------- trainer checkpoints
def test_backbone_loads_trainer_checkpoints(pretrained):
    last = load_checkpoint(pretrained / "last.pth")
    for file, key, ref in (
        ("last.pth", "model", last["model"]),
        ("last.pth", "ema", last["ema"]),
        ("best_ema.pth", "model", load_checkpoint(pretrained / "best_ema.pth")["model"]),
    ):
        bb = DclsBackbone(model_kwargs=TINY_KWARGS, checkpoint=str(pretrained / file), checkpoint_key=key)
        bb.init_weights()
        state = bb.body.state_dict()
        assert set(state) == {k for k in ref if not k.startswith("head.")}  # only the classifier is left out
        assert all(torch.equal(state[k], ref[k]) for k in state), (file, key)
    assert not torch.equal(last["model"]["stem.0.weight"], last["ema"]["stem.0.weight"])  # two different sets

    grey = DclsBackbone(model_kwargs=TINY_KWARGS, in_chans=1, checkpoint=str(pretrained / "last.pth"))
    grey.init_weights()  # RGB stem summed into one channel (timm's adapt_input_conv)
    assert torch.allclose(grey.body.stem[0].weight, last["model"]["stem.0.weight"].sum(1, keepdim=True))

    best = DclsBackbone(model_kwargs=TINY_KWARGS, checkpoint=str(pretrained / "best.pth"), checkpoint_key="ema")
    with pytest.raises(
        ValueError, match="checkpoint_key='ema' has no weights in best.pth .* allowed for this file: model"
    ):
        best.init_weights()
    wide = DclsBackbone(
        model_kwargs={**TINY_KWARGS, "dims": [24, 48, 96, 192]}, checkpoint=str(pretrained / "last.pth")
    )
    with pytest.raises(
        ValueError,
        match=r"does not fit .* shape mismatch: stem.0.weight: last.pth\[model\] "
        r"\(16, 3, 4, 4\)",
    ):
        wide.init_weights()
    with pytest.raises(FileNotFoundError, match="checkpoint='/nonexistent/last.pth' does not exist"):
        DclsBackbone(model_kwargs=TINY_KWARGS, checkpoint="/nonexistent/last.pth").init_weights()


def test_checkpoint_loads_into_a_backbone_without_the_last_stages(pretrained, tmp_path):
    """out_indices without the last stage removes it; its checkpoint tensors (only those) are skipped."""
    last = load_checkpoint(pretrained / "last.pth")["model"]
    bb = DclsBackbone(model_kwargs=TINY_KWARGS, out_indices=(0, 1, 2), checkpoint=str(pretrained / "last.pth"))
    bb.init_weights()
    state = bb.body.state_dict()
    assert len(bb.body.stages) == 3 and not any(k.startswith("stages.3.") for k in state)
    assert all(torch.equal(state[k], last[k]) for k in state)
    assert [f.shape[1] for f in bb(torch.randn(1, 3, 64, 64))] == [16, 32, 64]
    extra = {**last, "stages.2.extra.weight": torch.zeros(1), "bogus.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match=r"2 unexpected key\(s\): stages.2.extra.weight, bogus.weight$"):
        DclsBackbone(
            model_kwargs=TINY_KWARGS, out_indices=(0, 1, 2), checkpoint=str(tmp_path / "extra.pth")
        ).init_weights()
    torch.save({k: v for k, v in last.items() if not k.startswith("stages.3.")}, tmp_path / "three.pth")
    with pytest.raises(ValueError, match=r"missing key\(s\): stages\.3\."):  # all four stages want stage 3
        DclsBackbone(model_kwargs=TINY_KWARGS, checkpoint=str(tmp_path / "three.pth")).init_weights()


# ------------------------------------------------------------------------------------ LR decay groups
@pytest.mark.parametrize("arch", ["tiny", "small"])
def test_layer_ids_match_convnext_recipe(arch):
    """Our ids on timm names equal mmseg's ConvNeXt ids on the matching mmpretrain names, for both decay types;
    positions and σ are counted like the weights of their block."""
    from mmseg.engine.optimizers.layer_decay_optimizer_constructor import (
        get_layer_id_for_convnext,
        get_stage_id_for_convnext,
    )

    bb = DclsConvNeXt(arch=arch, interpolation="gauss")  # S/B Gauss: ConvNeXt-T-dcls' 23 / 26 settings
    assert {(layer.interpolation, layer.dilated_kernel_size, layer.kernel_count) for layer in dcls_layers(bb)} == {
        ("gauss", (23, 23), 26)
    }
    n = bb.default_num_layers()
    assert n == {"tiny": 6, "small": 12}[arch]
    checked = 0
    for name, _ in bb.named_parameters():
        if name.startswith("norms."):
            official = f"backbone.norm{name.split('.')[1]}.{name.split('.')[-1]}"
        else:
            rel = name[len("body.") :]
            parts = rel.split(".")
            if parts[0] == "stem":
                official = "backbone.downsample_layers.0." + ".".join(parts[1:])
            elif parts[2] == "downsample":
                official = f"backbone.downsample_layers.{parts[1]}." + ".".join(parts[3:])
            else:
                official = f"backbone.stages.{parts[1]}.{parts[3]}." + ".".join(parts[4:])
        assert bb.layer_id(name, "layer_wise", n) == get_layer_id_for_convnext(official, n), name
        assert bb.layer_id(name, "stage_wise", n) == get_stage_id_for_convnext(official, n + 2), name
        checked += 1
    assert checked > 100
    assert layer_decay.lr_scale(0, 0.7, n) == pytest.approx(0.7 ** (n + 1))  # official: rate ** (N + 2 - id - 1)


def test_optimizer_constructor_rejects_bad_paramwise_cfg():
    from dcls_vision.downstream.optim import DclsOptimWrapperConstructor

    opt = {"type": "OptimWrapper", "optimizer": {"type": "AdamW", "lr": 1e-4, "weight_decay": 0.05}}
    with pytest.raises(
        ValueError,
        match=r"paramwise_cfg key\(s\) \['custom_keys'\] not supported .* "
        r"allowed: decay_rate",
    ):
        DclsOptimWrapperConstructor(opt, {"custom_keys": {}})
    with pytest.raises(ValueError, match="decay_type='block_wise' is not supported; allowed: layer_wise, stage_wise"):
        DclsOptimWrapperConstructor(opt, {"decay_type": "block_wise"})
    with pytest.raises(ValueError, match=r"decay_rate=1.5 is invalid; allowed: a float in \(0, 1\]"):
        DclsOptimWrapperConstructor(opt, {"decay_rate": 1.5})


def test_docs_say_what_the_public_fork_constructor_keeps():
    """ConvNeXt-dcls' LearningRateDecayOptimizerConstructor (mmdet and mmseg) puts ``.P`` tensors in
    ``no_decay_dcls`` groups with weight decay 0, but its ``scale = 5`` is overwritten by the layer's scale: only
    the 5× is lost. The downstream page and the constructor's docstring must say exactly that."""
    from dcls_vision.downstream import optim

    claim = "keeps weight decay 0 for the positions and loses only their 5× LR"
    for where, text in (
        ("optim.py", optim.__doc__),
        ("docs/downstream.md", (ROOT / "docs" / "downstream.md").read_text()),
    ):
        flat = " ".join(text.split())
        assert claim in flat and "loses both" not in flat, where


# ------------------------------------------------------------------------------------- full recipes
# (config, DCLS layer settings (interpolation, dilated kernel, kernel count), drop path, LR decay rate) — thesis §2 /
# DESIGN §4; decay as the official ConvNeXt and ConvNeXt-dcls configs: COCO layer-wise 0.7 for T / S, 0.8 for B;
# ADE20K stage-wise 0.9.
FULL_CONFIGS = {
    "coco/cascade-mask-rcnn_convnext-t-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py": (("bilinear", 17, 34), 0.4, 0.7),
    "coco/cascade-mask-rcnn_convnext-t-dcls-gauss_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py": (
        ("gauss", 23, 26),
        0.4,
        0.7,
    ),
    "coco/cascade-mask-rcnn_convnext-s-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py": (("bilinear", 17, 40), 0.6, 0.7),
    "coco/cascade-mask-rcnn_convnext-b-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py": (("bilinear", 17, 40), 0.7, 0.8),
    "coco/cascade-mask-rcnn_convformer-s18-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py": (
        ("bilinear", 17, 40),
        0.4,
        0.7,
    ),
    "ade20k/upernet_convnext-t-dcls_8xb2-amp-160k_ade20k-512x512.py": (("bilinear", 17, 34), 0.4, 0.9),
    "ade20k/upernet_convnext-t-dcls-gauss_8xb2-amp-160k_ade20k-512x512.py": (("gauss", 23, 26), 0.4, 0.9),
    "ade20k/upernet_convnext-s-dcls_8xb2-amp-160k_ade20k-512x512.py": (("bilinear", 17, 40), 0.3, 0.9),
    "ade20k/upernet_convnext-b-dcls_8xb2-amp-160k_ade20k-512x512.py": (("bilinear", 17, 40), 0.4, 0.9),
    "ade20k/upernet_convformer-s18-dcls_8xb2-amp-160k_ade20k-512x512.py": (("bilinear", 17, 40), 0.4, 0.9),
}


def test_every_full_config_is_listed():
    found = {str(p.relative_to(ROOT / "configs/downstream")) for p in (ROOT / "configs/downstream").glob("[ac]*/*.py")}
    assert found == set(FULL_CONFIGS)


@pytest.mark.parametrize("name", sorted(FULL_CONFIGS))
def test_full_config_builds_with_the_thesis_recipe(name):
    """Each COCO / ADE20K config builds its whole model; the recipe (schedule, AdamW LR, LR decay, DCLS layer
    settings, drop path, neck/head widths) is the thesis'; positions/σ get their 5× groups in the optimizer."""
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import MODELS, init_default_scope
    from timm.layers import DropPath

    from dcls_vision.downstream.cli import ensure_hooks

    (interp, dilated, count), drop_path, decay_rate = FULL_CONFIGS[name]
    cfg = Config.fromfile(str(ROOT / "configs/downstream" / name))
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    bb = model.backbone
    assert {(layer.interpolation, layer.dilated_kernel_size, layer.kernel_count) for layer in dcls_layers(bb)} == {
        (interp, (dilated, dilated), count)
    }
    assert max(m.drop_prob for m in bb.modules() if isinstance(m, DropPath)) == pytest.approx(drop_path)  # last block
    coco = name.startswith("coco/")
    if coco:
        assert cfg.train_cfg.max_epochs == 36 and cfg.model.neck.in_channels == bb.out_channels
        assert cfg.val_evaluator.metric == ["bbox", "segm"]
    else:
        assert cfg.train_cfg.max_iters == 160_000 and cfg.crop_size == (512, 512)
        assert cfg.model.decode_head.in_channels == bb.out_channels
        assert cfg.model.auxiliary_head.in_channels == bb.out_channels[2]
        assert cfg.model.decode_head.num_classes == 150
    wrapper = cfg.optim_wrapper
    assert wrapper.type == "AmpOptimWrapper" and wrapper.optimizer.type == "AdamW"
    assert wrapper.optimizer.lr == (2e-4 if coco else 1e-4) and wrapper.optimizer.weight_decay == 0.05
    paramwise = wrapper.paramwise_cfg
    assert (paramwise.decay_rate, paramwise.decay_type) == (decay_rate, "layer_wise" if coco else "stage_wise")
    assert paramwise.num_layers == bb.default_num_layers() and paramwise.pos_lr_scale == 5.0
    ensure_hooks(cfg)
    assert [h.type for h in cfg.custom_hooks] == ["DclsClampHook", "DclsSafeCheckpointHook"]
    fp32 = {k: v for k, v in cfg.optim_wrapper.items() if k not in ("loss_scale", "dtype")}  # AMP needs CUDA
    optimizer = build_optim_wrapper(model, {**fp32, "type": "OptimWrapper"}).optimizer
    kinds = {"positions", "sigma"} if interp == "gauss" else {"positions"}
    special = [g for g in optimizer.param_groups if g["group_name"].rsplit("_", 1)[-1] in kinds]
    assert {g["group_name"].rsplit("_", 1)[-1] for g in special} == kinds
    by_name = {g["group_name"]: g for g in optimizer.param_groups}
    for g in special:
        layer = g["group_name"].rsplit("_", 1)[0]
        assert g["weight_decay"] == 0.0 and g["lr"] == pytest.approx(5 * by_name[f"{layer}_decay"]["lr"])


# ------------------------------------------------------------------------------------------ real runs
def test_detection_finetune_and_evaluate(pretrained, coco_root, tmp_path):
    """Cascade Mask R-CNN from the trainer's EMA weights: 4 iterations, COCO evaluation; the test entry point
    reproduces the metrics from the saved checkpoint."""
    from dcls_vision.downstream import test as test_entry

    ema = {k: v for k, v in load_checkpoint(pretrained / "last.pth")["ema"].items() if not k.startswith("head.")}
    runner, early, late = _run(
        TINY_DET,
        tmp_path / "det",
        coco_root,
        "--backbone-checkpoint",
        str(pretrained / "last.pth"),
        "--checkpoint-key",
        "ema",
        reference=ema,
    )
    assert early.loaded_ok is True
    _check_dcls_groups(late.groups, {"positions"})
    names = [g["name"] for g in late.groups[0]]
    n = runner.model.backbone.default_num_layers()
    lr_of = {g["name"]: g["lr"] for g in late.groups[-1]}
    assert lr_of["layer_0_decay"] == pytest.approx(lr_of[f"layer_{n + 1}_decay"] * 0.7 ** (n + 1))  # stem
    assert "layer_3_positions" in names  # stage 2's shared tensor: the id of its first block
    assert max(early.overshoot) > 0 and max(late.overshoot) == 0.0  # pushed out by steps, clamped every iter
    assert late.repulsive is not None and late.repulsive.current() > 0  # the repulsive term is in the loss
    for key in ("coco/bbox_mAP", "coco/bbox_mAP_50", "coco/segm_mAP", "coco/segm_mAP_50"):
        assert 0.0 <= late.metrics[key] <= 1.0, key
    ckpt = tmp_path / "det" / "iter_4.pth"
    assert ckpt.is_file()
    metrics = test_entry.main(
        [str(TINY_DET), str(ckpt), "--work-dir", str(tmp_path / "det_test"), "--data-root", str(coco_root)]
    )
    assert metrics["coco/bbox_mAP"] == pytest.approx(late.metrics["coco/bbox_mAP"])
    assert metrics["coco/segm_mAP"] == pytest.approx(late.metrics["coco/segm_mAP"])


def test_segmentation_finetune_and_evaluate(ade_root, tmp_path):
    """UperNet with a Gauss-DCLS backbone: positions and σ at 5× LR, wd 0, stage-wise decay; mIoU."""
    runner, early, late = _run(TINY_SEG, tmp_path / "seg", ade_root)
    _check_dcls_groups(late.groups, {"positions", "sigma"})
    lr_of = {g["name"]: g["lr"] for g in late.groups[-1]}
    n = runner.model.backbone.default_num_layers()
    for stage in range(4):  # stage s -> id s + 1, LR × 0.9 ** (N − s)
        expected = lr_of[f"layer_{n + 1}_decay"] * 0.9 ** (n - stage)
        assert lr_of[f"layer_{stage + 1}_decay"] == pytest.approx(expected)
    assert max(early.overshoot) > 0 and max(late.overshoot) == 0.0
    assert 0.0 <= late.metrics["mIoU"] <= 100.0 and "aAcc" in late.metrics
    assert (tmp_path / "seg" / "iter_4.pth").is_file()


# ----------------------------------------------------------------------------------------- entry points
def test_cli_errors_are_one_line(tmp_path, capsys):
    from dcls_vision.downstream import test as test_entry
    from dcls_vision.downstream import train as train_entry
    from dcls_vision.downstream.cli import run

    cases = [
        (train_entry, ["nope.py"], "error: config 'nope.py' does not exist; allowed: an mmengine config file"),
        (
            train_entry,
            [str(TINY_SEG), "--launcher", "mpi"],
            "error: --launcher 'mpi' is not supported; allowed: auto, none, pytorch, slurm",
        ),
        (
            train_entry,
            [str(TINY_SEG), "--data-root", str(tmp_path / "missing")],
            "is not a directory; allowed: an existing dataset root",
        ),
        (
            train_entry,
            [str(TINY_SEG), "--backbone-checkpoint", "nope.pth"],
            "error: --backbone-checkpoint 'nope.pth' does not exist; allowed: a last.pth / best.pth / best_ema.pth",
        ),
        (
            test_entry,
            [str(TINY_SEG), "nope.pth"],
            "error: checkpoint 'nope.pth' does not exist; allowed: a checkpoint "
            "written by python -m dcls_vision.downstream.train",
        ),
    ]
    for module, args, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            run(module.main, args)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_data_root_and_launcher_resolution(monkeypatch):
    from mmengine.config import Config

    from dcls_vision.downstream.cli import resolve_launcher, set_data_root

    cfg = Config.fromfile(str(TINY_DET))
    set_data_root(cfg, "/data/coco")
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        assert cfg[key].dataset.data_root == "/data/coco/"
    assert cfg.val_evaluator.ann_file == "/data/coco/annotations/instances_val2017.json"
    for var in ("WORLD_SIZE", "RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_launcher("auto") == "none"
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert resolve_launcher("auto") == "none"  # the batch script itself, not a job step
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    assert resolve_launcher("auto") == "slurm"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_launcher("auto") == "pytorch"


def _check_two_process_run(work: Path, log: str) -> None:
    assert "mIoU" in log and (work / "iter_2.pth").is_file()
    runlog = next(work.glob("*/*.log")).read_text()
    assert "Distributed training: True" in runlog and "GPU number: 2" in runlog  # one world of two processes
    scalars = [json.loads(line) for f in work.glob("*/vis_data/scalars.json") for line in f.read_text().splitlines()]
    assert any("mIoU" in s for s in scalars)


TWO_ITERS = ["--cfg-options", "train_cfg.max_iters=2", "train_cfg.val_interval=2"]


@pytest.mark.slow
def test_two_process_segmentation_under_torchrun(ade_root, tmp_path):
    """Two CPU processes (gloo) started by torchrun."""
    work = tmp_path / "work"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "-m",
            "dcls_vision.downstream.train",
            str(TINY_SEG),
            "--work-dir",
            str(work),
            "--data-root",
            str(ade_root),
            *TWO_ITERS,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=400,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    _check_two_process_run(work, proc.stdout + proc.stderr)


@pytest.mark.slow
def test_slurm_launch_of_two_task_segmentation(cluster, ade_root, tmp_path):
    """``python -m dcls_vision.launch downstream``: a real 2-task SLURM job on the loopback cluster (submitit),
    one process group over the step's tasks; the launcher waits and prints the final metrics."""
    work = tmp_path / "work"
    cmd = [
        sys.executable,
        "-m",
        "dcls_vision.launch",
        "downstream",
        str(TINY_SEG.relative_to(ROOT)),
        "--work-dir",
        str(work),
        "--data-root",
        str(ade_root),
        *TWO_ITERS,
        "tasks_per_node=2",
        "cpus_per_task=1",
        "time=10",
        "wait=true",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert re.search(r"^final: .*mIoU=[\d.]+ .*iter=2 work_dir=" + re.escape(str(work)) + "$", proc.stdout, re.M), (
        proc.stdout
    )
    launch = json.loads((work / "launch.json").read_text())
    job_log = Path(launch["stdout"]).read_text() + Path(launch["stderr"]).read_text()
    _check_two_process_run(work, job_log)
    assert launch["slurm"]["tasks_per_node"] == 2 and "#SBATCH --requeue" in Path(launch["sbatch_script"]).read_text()
    command = (work / "command.sh").read_text()
    assert "-m dcls_vision.launch downstream" in command and "tasks_per_node=2" in command


def test_downstream_job_resumes_when_requeued(tmp_path):
    """A requeued job (preemption, time limit) reruns with ``--resume``: the work dir's latest checkpoint."""
    from dcls_vision.launch.downstream import DownstreamJob

    job = DownstreamJob([str(TINY_SEG), "--launcher", "auto", "--work-dir", str(tmp_path), *TWO_ITERS])
    again = job.checkpoint().function
    assert isinstance(again, DownstreamJob) and "--resume" in again.train_argv
    assert again.train_argv[again.train_argv.index("--work-dir") + 1] == str(tmp_path)
    assert (
        again.train_argv[-3:] == TWO_ITERS[-3:]
        and again.train_argv[again.train_argv.index("--resume") + 1] == "--cfg-options"
    )  # bare --resume: auto


def test_slurm_launch_rejects_bad_downstream_arguments(capsys):
    from dcls_vision.launch.cli import main

    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not installed (bash slurm/install.sh)")
    assert main(["downstream", "--work-dir", "x"]) == 2
    assert "LaunchError: downstream needs a config first; allowed:" in capsys.readouterr().err
    assert main(["downstream", str(TINY_SEG), "--backbone-checkpoint", "nope.pth"]) == 2
    assert "LaunchError: --backbone-checkpoint 'nope.pth' does not exist" in capsys.readouterr().err
    assert main(["downstream", "missing.py"]) == 2
    assert "LaunchError: config 'missing.py' does not exist" in capsys.readouterr().err


def test_resume_continues_from_the_latest_checkpoint(ade_root, tmp_path):
    """``--resume``: the second run loads the work dir's latest checkpoint (weights_only=True, through
    DclsSafeCheckpointHook: optimizer, schedulers, message hub) and continues at its iteration."""
    from dcls_vision.downstream.train import build_runner

    work = tmp_path / "seg"
    common = [
        str(TINY_SEG),
        "--work-dir",
        str(work),
        "--data-root",
        str(ade_root),
        "--cfg-options",
        "default_hooks.checkpoint.interval=2",
        "train_cfg.val_interval=100",
    ]
    first = build_runner([*common, "train_cfg.max_iters=2"])
    first.train()
    saved = torch.load(work / "iter_2.pth", map_location="cpu", weights_only=True)  # safe loading works
    assert saved["meta"]["iter"] == 2
    second = build_runner([*common, "train_cfg.max_iters=3", "--resume"])
    starts: list[tuple[int, bool, set[float]]] = []

    class StartIter(Hook):
        def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
            state = runner.model.state_dict()
            steps = {float(v["step"]) for v in runner.optim_wrapper.optimizer.state.values()}
            starts.append((runner.iter, all(torch.equal(state[k], v) for k, v in saved["state_dict"].items()), steps))

    second.register_hook(StartIter())
    second.train()
    assert starts == [(2, True, {2.0})]  # continues at iteration 2 with its weights and AdamW state (2 steps)
    assert second.iter == 3 and (work / "iter_3.pth").is_file()
