#!/usr/bin/env bash
# Install Debian's Slurm (slurm-wlm) and munge for tests/cluster/test_slurm.py, when they are missing.
# Installs only: it starts and configures nothing (the test runs its own private munged, slurmctld and
# slurmd on 127.0.0.1), so a machine's own Slurm, if any, is left as it is.
# Needs root and apt-get (CI: a fresh Debian machine, as root). Elsewhere it says what it would install and
# exits 0: the Slurm tests then skip and say why.
set -euo pipefail

needed=(munged slurmctld slurmd sbatch)
missing=()
for cmd in "${needed[@]}"; do
  command -v "$cmd" > /dev/null || missing+=("$cmd")
done
if ((${#missing[@]} == 0)); then
  exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get > /dev/null; then
  echo "install_slurm.sh: missing ${missing[*]}; as root on Debian: apt-get install slurm-wlm munge" >&2
  exit 0
fi
echo "install_slurm.sh: installing slurm-wlm and munge (missing ${missing[*]})" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurm-wlm munge > /dev/null
