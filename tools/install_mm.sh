#!/usr/bin/env bash
# Install the optional OpenMMLab extra for downstream fine-tuning (mmdet 3.3 detection, mmseg 1.2 segmentation).
#   bash tools/install_mm.sh     (after tools/install.sh; idempotent, seconds when already done)
# 1. the pinned packages of requirements-mm.txt (mmengine, mmdet, mmsegmentation, their undeclared needs,
#    setuptools < 81 for pkg_resources);
# 2. tools/build_mmcv.sh: mmcv 2.1.0 with compiled ops, built once per machine (~35 min on 2 CPU cores; CUDA ops
#    where nvcc and a GPU exist) and cached under ~/.cache/dcls-vision/wheels/<key> (mmcv, torch, CUDA + archs,
#    Python; `bash tools/build_mmcv.sh --print-key`); its DCLS_MMCV_* variables pass through.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "$0")/.."
if (($#)); then
  echo "install_mm.sh: unexpected argument '$1'; allowed: none" \
    "(set DCLS_MMCV_CUDA / DCLS_MMCV_SDIST / DCLS_CACHE / MAX_JOBS instead)" >&2
  exit 2
fi
python -m pip install -q -r requirements-mm.txt
bash tools/build_mmcv.sh
python -c "import mmdet, mmseg, mmcv.ops, dcls_vision.downstream.mm as m; print('mm extra OK:', 'mmdet', mmdet.__version__, \
'mmseg', mmseg.__version__, 'mmcv', mmcv.__version__, '| DCLS backbones registered in', ', '.join(m.REGISTERED_IN))"
