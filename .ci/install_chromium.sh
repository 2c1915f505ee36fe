#!/usr/bin/env bash
# Install Debian's Chromium for tests/e2e/test_profile_rollout.py (it opens report.html headless), when missing.
# Needs root and apt-get (CI: a fresh Debian machine, as root). Elsewhere it says what it would install and
# exits 0: the browser check then skips and says why.
set -euo pipefail

if command -v chromium > /dev/null; then
  exit 0
fi
if [[ "$(id -u)" != 0 ]] || ! command -v apt-get > /dev/null; then
  echo "install_chromium.sh: chromium is missing; as root on Debian: apt-get install chromium" >&2
  exit 0
fi
echo "install_chromium.sh: installing chromium" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium > /dev/null
