# UperNet 160k ADE20K 512x512, ConvNeXt-B-dcls (bilinear 17/40; thesis: mIoU 49.3): drop path 0.4,
# stage-wise decay 0.9 with ConvNeXt-B's 12 groups; the rest as the T config.
_base_ = './upernet_convnext-t-dcls_8xb2-amp-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(arch='base', drop_path_rate=0.4),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))

optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
