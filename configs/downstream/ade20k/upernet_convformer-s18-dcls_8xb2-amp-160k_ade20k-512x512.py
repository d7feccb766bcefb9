# UperNet 160k ADE20K 512x512, ConvFormer-S18-dcls (bilinear 17/40). Not a thesis row: the ConvNeXt-T
# recipe (same 3-3-9-3 stage depths, so the same 6 groups), drop path 0.4.
_base_ = './upernet_convnext-t-dcls_8xb2-amp-160k_ade20k-512x512.py'

model = dict(
    backbone=dict(type='DclsConvFormer', arch='s18'),  # the rest (bilinear, drop path 0.4) from the base
    decode_head=dict(in_channels=[64, 128, 320, 512]),
    auxiliary_head=dict(in_channels=320))
