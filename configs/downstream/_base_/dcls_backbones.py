# DCLS backbones of the COCO / ADE20K configs, referenced as `_base_.NAME` (a base may not define `model`:
# the mmdet/mmseg bases do). ConvNeXt-T-dcls: bilinear 17/34, drop path 0.4 (the ConvNeXt-T recipe).
convnext_t_dcls = dict(
    type='DclsConvNeXt',
    arch='tiny',
    interpolation='bilinear',
    out_indices=(0, 1, 2, 3),
    drop_path_rate=0.4,
    checkpoint=None,  # our trainer's last.pth / best.pth / best_ema.pth (--backbone-checkpoint)
    checkpoint_key='model')  # or 'ema' (last.pth)
dcls_hooks = [dict(type='DclsClampHook'), dict(type='DclsSafeCheckpointHook')]
