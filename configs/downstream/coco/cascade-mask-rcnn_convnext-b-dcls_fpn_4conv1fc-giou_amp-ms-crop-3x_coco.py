# Cascade Mask R-CNN 3x, ConvNeXt-B-dcls (bilinear 17/40; thesis: 53.0/46.0 box/mask AP): drop path 0.7,
# layer-wise decay 0.8 over 12 layer groups (the ConvNeXt-B and ConvNeXt-B-dcls recipes; T and S use 0.7);
# the rest as the T config.
_base_ = './cascade-mask-rcnn_convnext-t-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

model = dict(backbone=dict(arch='base', drop_path_rate=0.7), neck=dict(in_channels=[128, 256, 512, 1024]))

optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, num_layers=12))
