# UperNet, 160k iterations on ADE20K, 512x512 crops, ConvNeXt-T-dcls backbone (bilinear 17/34): the ConvNeXt
# recipe the thesis used (Table 2.3: single-scale mIoU 47.1). 8 GPUs x 2 images, AdamW 1e-4 (wd 0.05),
# stage-wise LR decay 0.9 (6 groups), drop path 0.4, 1500 warm-up iterations then poly decay.
# Positions keep 5x LR and weight decay 0; DclsClampHook clamps them after every iteration.
#   python -m dcls_vision.downstream.train THIS --data-root /datasets/ADEChallengeData2016/ \
#       --backbone-checkpoint outputs/convnext_tiny_dcls/<run>/last.pth
_base_ = ['mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py', '../_base_/dcls_backbones.py']

custom_imports = dict(imports=['dcls_vision.downstream.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, **_base_.convnext_t_dcls),
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))

optim_wrapper = dict(
    constructor='DclsOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6, pos_lr_scale=5.0))

custom_hooks = _base_.dcls_hooks
