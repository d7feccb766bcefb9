#!/usr/bin/env bash
# Build mmcv 2.1.0 with compiled ops against the installed torch, once per machine, and install it.
#
# Why: PyPI has no mmcv 2.x wheel for our torch, mmdet 3.3 / mmseg 1.2 need mmcv < 2.2, and the sdist
# fails to build against torch 2.14 unless setuptools < 81 (pkg_resources) and -std=c++20 are used.
# The wheel is cached under $DCLS_CACHE (default ~/.cache/dcls-vision) keyed by mmcv, torch, CUDA and
# Python versions, so the ~35 min CPU build happens once. CUDA ops are built when nvcc and a GPU exist.
#
#   DCLS_MMCV_CUDA=auto|1|0   CUDA ops: auto (nvcc and a visible GPU), 1 (force: e.g. a cluster login node
#                             without GPU; set TORCH_CUDA_ARCH_LIST), 0 (CPU ops only)
#   DCLS_CACHE=DIR            wheel cache root (default ~/.cache/dcls-vision); MAX_JOBS=N compile jobs
# Re-running is a no-op when the installed mmcv was built for the same key (marker file in the package).
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
MMCV_VERSION=2.1.0
cache_root="${DCLS_CACHE:-$HOME/.cache/dcls-vision}"
want_cuda="${DCLS_MMCV_CUDA:-auto}"
case "$want_cuda" in
  auto|0|1) ;;
  *) echo "build_mmcv.sh: DCLS_MMCV_CUDA='$want_cuda' is not supported; allowed: auto, 0, 1" >&2; exit 2 ;;
esac

read -r torch_v cuda_v py_v < <(python -c "
import sys, torch
print(torch.__version__.split('+')[0], torch.version.cuda or 'none', f'{sys.version_info.major}{sys.version_info.minor}')")
force_cuda=0
if [ "$want_cuda" = 1 ]; then
  command -v nvcc >/dev/null 2>&1 || { echo "build_mmcv.sh: DCLS_MMCV_CUDA=1 but nvcc is not on PATH" >&2; exit 2; }
  [ "$cuda_v" != none ] || { echo "build_mmcv.sh: DCLS_MMCV_CUDA=1 but torch $torch_v is a CPU build" >&2; exit 2; }
  force_cuda=1
elif [ "$want_cuda" = auto ] && command -v nvcc >/dev/null 2>&1 \
    && python -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  force_cuda=1
fi
flavour=cpu; ((force_cuda)) && flavour="cu${cuda_v}"
key="mmcv-${MMCV_VERSION}_torch-${torch_v}_${flavour}_py${py_v}"
wheel_dir="$cache_root/wheels/$key"

installed_key() {
  python -c "
import pathlib, mmcv, mmcv.ops
marker = pathlib.Path(mmcv.__file__).with_name('.dcls_build_key')
print(marker.read_text().strip() if marker.is_file() else '')" 2>/dev/null || true
}
strip_wheel() {  # strip_wheel WHEEL OUT_DIR: the same wheel without debug symbols in its .so files
  local whl out tmp rc=0
  whl="$(realpath "$1")" out="$(realpath "$2")"
  tmp="$(mktemp -d)"
  (cd "$tmp" && mkdir unpacked packed && cd unpacked && python -m zipfile -e "$whl" . \
    && find . -name '*.so' -exec strip --strip-debug {} + && cd .. \
    && python -m wheel pack unpacked -d packed >/dev/null && cp packed/*.whl "$out/") || rc=$?
  rm -rf "$tmp"
  return $rc
}

if [ "$(installed_key)" = "$key" ]; then
  exit 0
fi

python -m pip install -q "setuptools>=77.0.3,<81" ninja psutil wheel

if ! ls "$wheel_dir"/mmcv-*.whl >/dev/null 2>&1; then
  echo "build_mmcv.sh: building $key (about 35 min on 2 CPU cores; cached afterwards in $wheel_dir)" >&2
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  python -m pip download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  # torch >= 2.10 headers need C++20; mmcv appends -std=c++17 after user flags, so patch it at the source.
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  FORCE_CUDA=$force_cuda MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    python -m pip wheel -q --no-build-isolation --no-deps "$src" -w "$work/dist"
  raw=("$work"/dist/mmcv-*.whl)
  rm -rf "$wheel_dir.tmp" && mkdir -p "$wheel_dir.tmp"
  # Debug symbols make the wheel 32 MB instead of ~1.5 MB. A failure here must not waste the compile:
  # the unstripped wheel is cached instead.
  if ! strip_wheel "${raw[0]}" "$wheel_dir.tmp"; then
    echo "build_mmcv.sh: stripping debug symbols failed; caching the unstripped wheel" >&2
    rm -f "$wheel_dir.tmp"/*.whl
    cp "${raw[0]}" "$wheel_dir.tmp/"
  fi
  rm -rf "$wheel_dir" && mv "$wheel_dir.tmp" "$wheel_dir"
fi
python -m pip install -q --no-deps --force-reinstall "$wheel_dir"/mmcv-*.whl
python -c "
import pathlib, mmcv, mmcv.ops
pathlib.Path(mmcv.__file__).with_name('.dcls_build_key').write_text('$key\n')
print('mmcv', mmcv.__version__, 'ops OK ($key)')"
