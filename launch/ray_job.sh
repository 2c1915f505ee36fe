#!/usr/bin/env bash
# Submit a training run to a running Ray cluster (started with `ray start --head` / `ray start --address`).
# Usage: RAY_ADDRESS=http://HEAD:8265 launch/ray_job.sh buffer.url=redis://:PW@HOST:6379/0 model=hf model.path=...
set -euo pipefail
cd "$(dirname "$0")/.."
exec ray job submit --working-dir . -- python launch/train.py cluster=ray buffer=external "$@"
