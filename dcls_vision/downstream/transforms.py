"""Test-time transforms the OpenMMLab stack lacks (registered in mmengine's root ``TRANSFORMS`` by :mod:`.mm`)."""

from __future__ import annotations

from typing import Any

from mmcv.transforms import Resize


class DclsShortSideResize(Resize):
    """Keep the aspect ratio and bring the short side to ``max(min_short, min(scale))``, with no cap on the long side.

    The multi-scale test of the ConvNeXt-dcls fork (K-H-Ismail/ConvNeXt-dcls
    ``semantic_segmentation/configs/convnext_dcls/upernet_convnext_dcls_tiny_512_160k_ade20k_ms.py:72-81``):
    ``MultiScaleFlipAug(img_scale=(2048, 512), img_ratios=...)`` around BEiT's
    ``SETR_Resize(keep_ratio=True, crop_size=(512, 512), setr_multi_scale=True)`` (microsoft/unilm
    ``beit/semantic_segmentation/mmcv_custom/resize_transform.py``, ``_resize_img``): the short side becomes
    ``max(crop_size[0], min(ratio x scale))``, so views below ratio 1 are not smaller than a slide window, and a
    wide image is not shrunk to fit 2048 wide as mmcv's ``Resize(keep_ratio=True)`` would.
    """

    def __init__(self, scale: tuple[int, int], min_short: int, **kwargs: Any) -> None:
        super().__init__(scale=scale, keep_ratio=True, **kwargs)
        self.min_short = int(min_short)

    def transform(self, results: dict) -> dict:
        h, w = results["img"].shape[:2]
        short = max(self.min_short, min(self.scale))
        # imrescale with (long, short) limits takes min(long / max(h, w), short / min(h, w)): both are equal here
        results["scale"] = (short * max(h, w) / min(h, w), short)
        self._resize_img(results)
        self._resize_bboxes(results)
        self._resize_seg(results)
        self._resize_keypoints(results)
        return results

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale}, min_short={self.min_short})"
