#!/usr/bin/env bash
# Install the Debian packages of a single-node SLURM cluster (SLURM 22.05 on Debian 12) used by
# slurm/local_cluster.sh and tests/test_slurm.py. Idempotent: when everything is installed it only runs dpkg -s.
# The packages' own service scripts cannot start anything here (no systemd); local_cluster.sh starts the daemons.
set -euo pipefail
packages=(slurmctld slurmd slurm-client slurmdbd munge mariadb-server)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
((${#missing[@]})) || exit 0
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "slurm/install.sh: installing ${missing[*]}" >&2
$SUDO apt-get update -qq
# policy-rc.d-less containers may try to start services: that fails harmlessly, the packages still install.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
