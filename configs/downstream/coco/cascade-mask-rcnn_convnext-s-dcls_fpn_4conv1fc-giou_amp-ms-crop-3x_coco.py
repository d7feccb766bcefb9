# Cascade Mask R-CNN 3x, ConvNeXt-S-dcls (bilinear 17/40; thesis: 52.8/45.6 box/mask AP): drop path 0.6,
# layer-wise decay 0.7 over 12 layer groups (ConvNeXt-S recipe); the rest as the T config.
_base_ = './cascade-mask-rcnn_convnext-t-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.6))

optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
