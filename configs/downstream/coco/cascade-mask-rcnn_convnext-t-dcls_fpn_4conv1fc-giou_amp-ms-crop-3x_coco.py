# Cascade Mask R-CNN 3x (36 epochs) on COCO with a ConvNeXt-T-dcls backbone (bilinear 17/34): the ConvNeXt
# recipe the thesis used (Table 2.4: box/mask AP 51.2/44.5). 8 GPUs x 2 images; multi-scale + crop
# augmentation, 4conv1fc GIoU heads, AdamW 2e-4 (wd 0.05), layer-wise LR decay 0.7 over 6 layer groups,
# drop path 0.4. Positions keep 5x LR and weight decay 0 (DclsOptimWrapperConstructor); DclsClampHook clamps
# them after every iteration; DclsSafeCheckpointHook keeps checkpoints loadable with weights_only=True.
#   python -m dcls_vision.downstream.train THIS --data-root /datasets/coco/ \
#       --backbone-checkpoint outputs/convnext_tiny_dcls/<run>/last.pth
_base_ = ['mmdet::convnext/cascade-mask-rcnn_convnext-t-p4-w7_fpn_4conv1fc-giou_amp-ms-crop-3x_coco.py',
          '../_base_/dcls_backbones.py']

custom_imports = dict(imports=['dcls_vision.downstream.mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(_delete_=True, **_base_.convnext_t_dcls),
    neck=dict(in_channels=[96, 192, 384, 768]))

optim_wrapper = dict(
    type='AmpOptimWrapper',
    constructor='DclsOptimWrapperConstructor',
    paramwise_cfg=dict(decay_rate=0.7, decay_type='layer_wise', num_layers=6, pos_lr_scale=5.0),
    optimizer=dict(type='AdamW', lr=0.0002, betas=(0.9, 0.999), weight_decay=0.05))

custom_hooks = _base_.dcls_hooks
