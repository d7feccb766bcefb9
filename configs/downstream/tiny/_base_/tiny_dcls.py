# Shared by the tiny test configs: a 16-32-64-128 ConvNeXt-dcls (9/10, depths 1-1-2-1) referenced as
# `_base_.tiny_backbone`, and a 4-iteration schedule with DclsOptimWrapperConstructor (AdamW 1e-3, wd 0.05,
# positions at 5x LR; the configs choose the LR decay).
tiny_backbone = dict(
    type='DclsBackbone',
    model_name='convnext_tiny_dcls',
    model_kwargs=dict(dims=[16, 32, 64, 128], depths=[1, 1, 2, 1], dcls_dilated_kernel_size=9, dcls_kernel_count=10),
    drop_path_rate=0.1,
    checkpoint=None,
    checkpoint_key='model')

train_cfg = dict(type='IterBasedTrainLoop', max_iters=4, val_interval=4)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    constructor='DclsOptimWrapperConstructor',
    paramwise_cfg=dict(pos_lr_scale=5.0),  # num_layers from the backbone's depths
    optimizer=dict(type='AdamW', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05))
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]  # warm-up
