"""Downstream fine-tuning of DCLS backbones with the OpenMMLab stack (mmdet 3.x detection, mmseg 1.x segmentation).

Importing this package needs no mm package: the pieces that do (backbones, optimizer-wrapper constructor,
hooks) live in :mod:`dcls_vision.downstream.mm`, which configs load through
``custom_imports = dict(imports=['dcls_vision.downstream.mm'])``. Set-up: ``bash tools/install_mm.sh``.
"""

from .weights import load_backbone_state

__all__ = ["load_backbone_state"]
