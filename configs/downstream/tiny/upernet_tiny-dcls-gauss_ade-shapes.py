# Tiny UperNet for tests and CPU smoke runs: a 16-32-64-128 ConvNeXt-dcls Gauss (9/10, depths 1-1-2-1) on the
# offline ADE20K-layout shapes set (python -m dcls_vision.downstream.datasets ade DIR). Same pieces as the
# ADE20K 160k configs (DclsOptimWrapperConstructor with stage-wise decay 0.9, clamp hook); 128x128 crops,
# BatchNorm heads (SyncBN needs CUDA), iteration-based.
_base_ = ['mmseg::_base_/models/upernet_r50.py', 'mmseg::_base_/default_runtime.py',
          './_base_/tiny_dcls.py']

custom_imports = dict(imports=['dcls_vision.downstream.mm'], allow_failed_imports=False)

classes = ('scene', 'rectangle', 'ellipse', 'triangle')
palette = [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50]]
data_root = 'data/shapes_ade/'
crop_size = (128, 128)
norm_cfg = dict(type='BN', requires_grad=True)

model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # the base's ResNet URL; DCLS backbones load `checkpoint` instead
    backbone={**_base_.tiny_backbone, '_delete_': True, 'model_name': 'convnext_tiny_dcls_gauss'},
    decode_head=dict(in_channels=[16, 32, 64, 128], channels=32, num_classes=len(classes), norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=64, channels=16, num_classes=len(classes), norm_cfg=norm_cfg),
    test_cfg=dict(mode='whole'))

dataset_type = 'BaseSegDataset'
common = dict(type=dataset_type, data_root=data_root, metainfo=dict(classes=classes, palette=palette),
              img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.9),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**common, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**common, data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator

optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise'))

custom_hooks = [dict(type='DclsClampHook'), dict(type='DclsSafeCheckpointHook')]
default_hooks = dict(logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
                     checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=4, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
