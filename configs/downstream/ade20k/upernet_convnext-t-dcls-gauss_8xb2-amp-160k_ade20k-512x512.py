# As the ConvNeXt-T-dcls UperNet config, with the Gauss interpolation (23/26, learned sigma also at 5x LR, wd 0).
_base_ = './upernet_convnext-t-dcls_8xb2-amp-160k_ade20k-512x512.py'

model = dict(backbone=dict(interpolation='gauss'))
