#!/usr/bin/env bash
# Build mmcv 2.1.0 with compiled ops against the installed torch, once per machine, and install it.
#
# Why: PyPI has no mmcv 2.x wheel for our torch, mmdet 3.3 / mmseg 1.2 need mmcv < 2.2, and the sdist
# fails to build against torch 2.14 unless setuptools < 81 (pkg_resources) and -std=c++20 are used.
# The wheel is cached under $DCLS_CACHE (default ~/.cache/dcls-vision) keyed by mmcv, torch, CUDA (+ the CUDA
# arch list for CUDA builds) and Python versions, so the ~35 min CPU build happens once. A lock file in the cache
# serialises concurrent runs (the second waits, then reuses the wheel); each build stages in its own temp dir
# and the finished wheel enters the cache by an atomic rename. A cache that cannot be written costs no compile:
# the built wheel is installed anyway (one warning line).
#
#   DCLS_MMCV_CUDA=auto|1|0   CUDA ops: auto (nvcc and a visible GPU), 1 (force: e.g. a cluster login node
#                             without GPU; set TORCH_CUDA_ARCH_LIST), 0 (CPU ops only; GPUs are hidden from the build)
#   TORCH_CUDA_ARCH_LIST      CUDA builds: target archs (default: those of the visible GPUs, the highest +PTX)
#   DCLS_MMCV_SDIST=FILE      build from a local mmcv-2.1.0.tar.gz instead of downloading it (no PyPI access)
#   DCLS_MMCV_TARGET=DIR      install into DIR (pip --target) instead of the current Python environment
#   DCLS_CACHE=DIR            wheel cache root (default ~/.cache/dcls-vision); MAX_JOBS=N compile jobs
#   --print-key               print the cache key of this machine's build and exit
# Re-running is a no-op when the installed mmcv was built for the same key (marker file in the package).
# `source tools/build_mmcv.sh` defines the functions only (tests call them one by one).
set -euo pipefail
shopt -s inherit_errexit  # a failure inside $(...) stops the script too
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
MMCV_VERSION=2.1.0
CLEANUP=()

die() { echo "build_mmcv.sh: $*" >&2; exit 2; }

cleanup() { ((${#CLEANUP[@]})) && rm -rf "${CLEANUP[@]}"; return 0; }

# cache_key TORCH_VERSION CUDA_VERSION|none PY_TAG [ARCH_LIST]: the wheel-cache key. A CPU build's key has no
# arch part (the same key as before archs were keyed, so existing CPU caches stay valid).
cache_key() {
  local flavour=cpu
  if [ "$2" != none ]; then
    [ -n "${4:-}" ] || die "internal: a CUDA key needs an arch list"
    flavour="cu$2_arch-$(arch_tag "$4")"
  fi
  echo "mmcv-${MMCV_VERSION}_torch-$1_${flavour}_py$3"
}

# arch_tag "8.0;9.0+PTX" -> 8.0-9.0+PTX (TORCH_CUDA_ARCH_LIST separators are ';' or spaces).
arch_tag() {
  [[ "$1" =~ ^[A-Za-z0-9.+\;\ ]+$ ]] \
    || die "TORCH_CUDA_ARCH_LIST='$1' is invalid; allowed: archs like \"8.0;9.0\" (digits, dots, +PTX, ';' or spaces)"
  local tag
  tag="$(echo "$1" | tr ' ;' '\n\n' | sed '/^$/d' | paste -sd- -)"
  echo "$tag"
}

# probe_versions: "TORCH CUDA|none PY" from torch/version.py (importing torch takes seconds; the fallback does).
probe_versions() {
  python -c "
import importlib.util, pathlib, sys
py = f'{sys.version_info.major}{sys.version_info.minor}'
spec = importlib.util.find_spec('torch')
try:
    ns = {}
    exec((pathlib.Path(spec.origin).parent / 'version.py').read_text(), ns)
    version, cuda = ns['__version__'], ns.get('cuda')
except Exception:
    import torch
    version, cuda = torch.__version__, torch.version.cuda
print(str(version).split('+')[0], cuda or 'none', py)"
}

# build_tools_ready: setuptools >= 77.0.3, < 81 (pkg_resources), ninja, psutil and wheel are installed (no pip
# call, which takes seconds even when there is nothing to do).
build_tools_ready() {
  python -c "
import sys
from importlib.metadata import PackageNotFoundError, version
try:
    st = tuple(int(x) for x in version('setuptools').split('.')[:3])
    [version(name) for name in ('ninja', 'psutil', 'wheel')]
except (PackageNotFoundError, ValueError):
    sys.exit(1)
sys.exit(not (77, 0, 3) <= st < (81,))" 2>/dev/null
}

# visible_gpu_archs: capabilities of the visible GPUs, ascending, the highest +PTX (torch's own default).
visible_gpu_archs() {
  python -c "
import torch
caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
print(';'.join(f'{a}.{b}' for a, b in caps) + ('+PTX' if caps else ''))"
}

# decide_cuda: sets FORCE (0/1) and ARCHS (the arch list a CUDA build targets) from DCLS_MMCV_CUDA.
decide_cuda() {
  local want="${DCLS_MMCV_CUDA:-auto}" gpu=0
  case "$want" in
    auto|0|1) ;;
    *) die "DCLS_MMCV_CUDA='$want' is not supported; allowed: auto, 0, 1" ;;
  esac
  FORCE=0 ARCHS=""
  [ "$want" = 0 ] && return 0
  if command -v nvcc >/dev/null 2>&1 && [ "$CUDA_V" != none ] \
      && python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    gpu=1
  fi
  if [ "$want" = 1 ]; then
    command -v nvcc >/dev/null 2>&1 || die "DCLS_MMCV_CUDA=1 but nvcc is not on PATH"
    [ "$CUDA_V" != none ] || die "DCLS_MMCV_CUDA=1 but torch $TORCH_V is a CPU build"
  elif ((!gpu)); then
    return 0
  fi
  FORCE=1
  ARCHS="${TORCH_CUDA_ARCH_LIST:-}"
  if [ -z "$ARCHS" ] && ((gpu)); then ARCHS="$(visible_gpu_archs)"; fi
  [ -n "$ARCHS" ] || die "DCLS_MMCV_CUDA=1 without a visible GPU needs TORCH_CUDA_ARCH_LIST; allowed: e.g. \"8.0;9.0\""
}

in_target() {  # in_target CMD...: run CMD with DCLS_MMCV_TARGET (if set) first on PYTHONPATH
  if [ -n "${TARGET:-}" ]; then PYTHONPATH="$TARGET${PYTHONPATH:+:$PYTHONPATH}" "$@"; else "$@"; fi
}

# installed_key: the key the installed mmcv (in DCLS_MMCV_TARGET if set) was built for, or nothing.
installed_key() {
  in_target python -c "
import pathlib, sys, mmcv, mmcv.ops
pkg = pathlib.Path(mmcv.__file__).resolve().parent
if sys.argv[1] and pathlib.Path(sys.argv[1]).resolve() not in pkg.parents:
    sys.exit()  # an mmcv outside the target does not count
marker = pkg / '.dcls_build_key'
print(marker.read_text().strip() if marker.is_file() else '')" "${TARGET:-}" 2>/dev/null || true
}

check_sdist() {  # check_sdist FILE: an mmcv-<MMCV_VERSION> source archive, or a one-line error
  local top
  [ -f "$1" ] || die "DCLS_MMCV_SDIST='$1' is not a file; allowed: the path of mmcv-$MMCV_VERSION.tar.gz"
  top="$(tar -tzf "$1" 2>/dev/null | head -n1 | cut -d/ -f1)" || true
  [ "$top" = "mmcv-$MMCV_VERSION" ] \
    || die "DCLS_MMCV_SDIST='$1' is not an mmcv $MMCV_VERSION sdist (top dir '$top'); allowed: mmcv's own tar.gz"
}

# fetch_sdist WORK: extract the mmcv sdist (DCLS_MMCV_SDIST or PyPI) into WORK; prints the source dir.
# The download builds no metadata in an isolated env (whose newest setuptools may lack pkg_resources): it uses
# the installed setuptools < 81.
fetch_sdist() {
  local work="$1" sdist="${DCLS_MMCV_SDIST:-}"
  if [ -z "$sdist" ]; then
    python -m pip download -q --no-deps --no-binary :all: --no-build-isolation "mmcv==$MMCV_VERSION" -d "$work" >&2
    sdist="$work/mmcv-$MMCV_VERSION.tar.gz"
  fi
  check_sdist "$sdist"
  tar -xzf "$sdist" -C "$work"
  echo "$work/mmcv-$MMCV_VERSION"
}

# compile_wheel SRC OUT: build the wheel. A CPU build hides the GPUs (mmcv compiles CUDA ops whenever
# torch.cuda.is_available(), whatever FORCE_CUDA says).
compile_wheel() {
  local src="$1" out="$2"
  # torch >= 2.10 headers need C++20; mmcv appends -std=c++17 after user flags, so patch it at the source.
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  local -a env_=(MMCV_WITH_OPS=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}")
  if ((FORCE)); then
    env_+=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="$ARCHS")
  else
    env_+=(FORCE_CUDA=0 CUDA_VISIBLE_DEVICES="")
  fi
  env "${env_[@]}" python -m pip wheel -q --no-build-isolation --no-deps "$src" -w "$out"
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

# build_wheel STAGE: compile in the private dir STAGE; prints the finished (stripped if possible) wheel.
build_wheel() {
  local stage="$1" src raw
  echo "build_mmcv.sh: building $KEY (about 35 min on 2 CPU cores; cached afterwards in $WHEEL_DIR)" >&2
  src="$(fetch_sdist "$stage")"
  compile_wheel "$src" "$stage/dist" >&2  # stdout carries the wheel path only
  raw=("$stage"/dist/mmcv-*.whl)
  mkdir "$stage/final"
  # Debug symbols make the wheel 32 MB instead of ~1.5 MB. A failure here must not waste the compile.
  if ! strip_wheel "${raw[0]}" "$stage/final"; then
    echo "build_mmcv.sh: stripping debug symbols failed; keeping the unstripped wheel" >&2
    rm -f "$stage/final"/*.whl
    cp "${raw[0]}" "$stage/final/"
  fi
  ls "$stage"/final/mmcv-*.whl
}

# cache_wheel WHEEL: move WHEEL into WHEEL_DIR atomically (a dir renamed into place); fails if the cache
# cannot be written. Called with the lock held.
cache_wheel() {
  local tmp
  tmp="$(mktemp -d "$(dirname "$WHEEL_DIR")/.$KEY.XXXXXX" 2>/dev/null)" || return 1
  CLEANUP+=("$tmp")
  cp "$1" "$tmp/" 2>/dev/null && chmod 755 "$tmp" && rm -rf "$WHEEL_DIR" && mv -T "$tmp" "$WHEEL_DIR" 2>/dev/null
}

# lock_cache: take the cache lock for KEY (waiting for a concurrent build); fails if the cache is not writable.
lock_cache() {
  local lock
  lock="$(dirname "$WHEEL_DIR")/$KEY.lock"
  mkdir -p "$(dirname "$WHEEL_DIR")" 2>/dev/null && (: >>"$lock") 2>/dev/null || return 1
  exec 9>>"$lock"
  if ! flock -n 9; then
    echo "build_mmcv.sh: waiting for another build of $KEY (lock $lock)" >&2
    flock 9 || { echo "build_mmcv.sh: warning: cannot lock $lock (filesystem without flock?)" >&2; return 1; }
  fi
}

install_wheel() {  # install_wheel WHEEL: into the current environment (or DCLS_MMCV_TARGET), then mark it
  if [ -n "$TARGET" ]; then
    python -m pip install -q --no-deps --upgrade --target "$TARGET" "$1"
  else
    python -m pip install -q --no-deps --force-reinstall "$1"
  fi
  in_target python -c "
import pathlib, sys, mmcv, mmcv.ops
pathlib.Path(mmcv.__file__).with_name('.dcls_build_key').write_text(sys.argv[1] + '\n')
print('mmcv', mmcv.__version__, 'ops OK (' + sys.argv[1] + ')')" "$KEY"
}

main() {
  local print_key=0 wheel="" stage
  case "${1:-}" in
    "") ;;
    --print-key) print_key=1 ;;
    *) die "unexpected argument '$1'; allowed: --print-key (set DCLS_MMCV_* / DCLS_CACHE / MAX_JOBS instead)" ;;
  esac
  if [ -n "${DCLS_MMCV_SDIST:-}" ]; then check_sdist "$DCLS_MMCV_SDIST"; fi
  read -r TORCH_V CUDA_V PY_V < <(probe_versions)
  decide_cuda
  if ((FORCE)); then
    KEY="$(cache_key "$TORCH_V" "$CUDA_V" "$PY_V" "$ARCHS")"
  else
    KEY="$(cache_key "$TORCH_V" none "$PY_V")"  # unchanged form: CPU wheels cached by older versions still hit
  fi
  if ((print_key)); then echo "$KEY"; return 0; fi
  WHEEL_DIR="${DCLS_CACHE:-$HOME/.cache/dcls-vision}/wheels/$KEY"
  TARGET="${DCLS_MMCV_TARGET:-}"
  [ "$(installed_key)" = "$KEY" ] && return 0
  build_tools_ready || python -m pip install -q "setuptools>=77.0.3,<81" ninja psutil wheel
  local locked=0
  lock_cache && locked=1
  if ls "$WHEEL_DIR"/mmcv-*.whl >/dev/null 2>&1; then
    wheel="$(ls "$WHEEL_DIR"/mmcv-*.whl | head -n1)"
  else
    stage="$(mktemp -d)"
    CLEANUP+=("$stage")
    wheel="$(build_wheel "$stage")"
    if ((locked)) && cache_wheel "$wheel"; then
      wheel="$WHEEL_DIR/$(basename "$wheel")"
    else
      echo "build_mmcv.sh: warning: cannot write the cache $WHEEL_DIR; installing the built wheel uncached" >&2
    fi
  fi
  install_wheel "$wheel"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  trap cleanup EXIT
  main "$@"
fi
