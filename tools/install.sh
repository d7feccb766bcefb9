#!/usr/bin/env bash
# Install everything dcls-vision needs on a fresh Debian machine (idempotent: re-running is cheap).
#   bash tools/install.sh          runtime: Python packages + the embedded Fashion-MNIST data + espeak-ng (audio set)
#   bash tools/install.sh --dev    also the test/lint tools, the reference `dcls` package, the loopback SLURM
#                                  cluster and the OpenMMLab extra (tools/install_mm.sh: mmcv is compiled once
#                                  per machine, ~35 min on 2 cores, then cached)
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "$0")/.."
dev=0
for arg in "$@"; do
  case "$arg" in
    --dev) dev=1 ;;
    *) echo "install.sh: unknown option '$arg'; allowed: --dev" >&2; exit 2 ;;
  esac
done

apt_packages=(dataset-fashion-mnist espeak-ng)  # espeak-ng: the embedded audio set
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

reqs=(-r requirements.txt)
((dev)) && reqs+=(-r requirements-dev.txt)
python -m pip install -q --disable-pip-version-check "${reqs[@]}"
# ImageNet-C corruptions; --no-deps keeps the headless OpenCV of requirements.txt (it asks for opencv-python).
python -m pip install -q --disable-pip-version-check --no-deps imagecorruptions-imaug==1.1.5
# The loopback SLURM cluster the launch tests submit to (Debian packages; fast no-op when installed).
((dev)) && bash slurm/install.sh
python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
# The OpenMMLab extra the downstream tests need (after the editable install: it checks the registrations).
if ((dev)); then bash tools/install_mm.sh; fi
