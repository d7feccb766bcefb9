# UperNet 160k ADE20K 512x512, ConvNeXt-S-dcls (bilinear 17/40): drop path 0.3, stage-wise decay 0.9 with
# ConvNeXt-S's 12 groups; the rest as the T config.
_base_ = './upernet_convnext-t-dcls_8xb2-amp-160k_ade20k-512x512.py'

model = dict(backbone=dict(arch='small', drop_path_rate=0.3))

optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
