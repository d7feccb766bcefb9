# As the ConvNeXt-T-dcls config, with the Gauss interpolation (23/26, learned sigma also at 5x LR, wd 0).
_base_ = './cascade-mask-rcnn_convnext-t-dcls_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py'

model = dict(backbone=dict(interpolation='gauss'))
