# Cascade Mask R-CNN 3x, ConvFormer-S18-dcls (bilinear 17/40). Not a thesis row: the ConvNeXt-T recipe
# (its stage depths 3-3-9-3 are ConvNeXt-T's, so the same 6 layer groups), drop path 0.4.
_base_ = './cascade-mask-rcnn_convnext-t-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

model = dict(
    backbone=dict(type='DclsConvFormer', arch='s18'),  # the rest (bilinear, drop path 0.4) from the base
    neck=dict(in_channels=[64, 128, 320, 512]))
