#!/usr/bin/env bash
# Submit a training run to a running Ray cluster's job server, follow its logs, exit with its status:
#   RAY_ADDRESS=http://HEAD:8265 RAY_AUTH_TOKEN=... launch/ray_job.sh experiment=toy mode=fully_async
# Arguments are the run's Hydra overrides; the job runs `python launch/train.py cluster=ray OVERRIDES` on the
# head node, from a copy of this repository that Ray uploads (runtime_env working_dir; .venv, outputs, .git and
# caches are left out, so the upload is the source only). Exit status: 0 when the job SUCCEEDED, 1 when it
# FAILED, 143 when it was STOPPED; Ctrl-C or SIGTERM stops the job.
#
# Contracts:
#   - The head was started with its job server (`ray start --head --include-dashboard=true ...`; port 8265 by
#     default), and `python` on the head's PATH has slime-rl's dependencies (the job imports slime_rl from the
#     uploaded copy, which Ray puts first on its PYTHONPATH).
#   - Token auth stays on: the cluster's token in RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token
#     (`ray get-auth-token` on the head prints it). The token is sent only as the job server's Bearer token,
#     never put in the job's runtime_env.
#   - Relative paths in the overrides (output_dir=outputs, the default) resolve inside the uploaded copy, which
#     Ray may delete: give absolute paths on storage the head can write, e.g. output_dir=/shared/runs.
#   - The buffer: `buffer.url=redis://:PW@HOST:6379/0` for an external Redis; otherwise the driver starts an
#     embedded one on the head, bound to buffer.host (127.0.0.1 unless set: then every actor must run there).
set -euo pipefail
cd "$(dirname "$0")/.."

address="${RAY_API_SERVER_ADDRESS:-${RAY_ADDRESS:-}}"
if [[ "$address" != http://* && "$address" != https://* ]]; then
  echo "ray_job.sh: set RAY_ADDRESS to the head's job server, http://HEAD:8265 (got '${address}')" >&2
  exit 2
fi
if [[ -z "${RAY_AUTH_TOKEN:-}" && ! -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; then
  echo "ray_job.sh: no Ray token; set RAY_AUTH_TOKEN (print it on the head with \`ray get-auth-token\`)" >&2
  exit 2
fi
export RAY_AUTH_MODE=token

submission_id="slime-rl-$(date +%Y%m%d-%H%M%S)-$RANDOM"
excludes='{"excludes": [".venv", "venv", "outputs", ".git", "__pycache__", "*.pyc", "*.egg-info",
  ".pytest_cache", ".ruff_cache", ".hypothesis"]}'

status_file="$(mktemp)"
child=""
stop_job() {
  echo "ray_job.sh: stopping job $submission_id" >&2
  ray job stop --address "$address" "$submission_id" >&2 || true
  [[ -z "$child" ]] || kill -TERM "$child" 2>/dev/null || true
  exit 143
}
trap stop_job TERM INT
trap 'rm -f "$status_file"' EXIT

# Follows the logs until the job ends. Its exit status says only FAILED or not (a STOPPED job exits 0, and the
# log stream may end early), so the job's final status is waited for below.
ray job submit --address "$address" --submission-id "$submission_id" --working-dir . \
  --runtime-env-json "$excludes" -- python launch/train.py cluster=ray "$@" &  # it shell-quotes each word
child=$!
wait "$child" || true

# The final status; JobSubmissionClient reads the same token (`ray job status` prints no machine-readable status).
# Commands run in the background and are waited for, so that a signal reaches stop_job at once.
python - "$address" "$submission_id" > "$status_file" <<'PY' &
import sys
import time

from ray.job_submission import JobSubmissionClient

client = JobSubmissionClient(sys.argv[1])
while not (status := client.get_job_status(sys.argv[2])).is_terminal():
    time.sleep(1)
print(status.value)
PY
child=$!
wait "$child" || true
status="$(cat "$status_file")"
case "$status" in
  SUCCEEDED) echo "ray_job.sh: job $submission_id SUCCEEDED" >&2; exit 0 ;;
  STOPPED) echo "ray_job.sh: job $submission_id was STOPPED" >&2; exit 143 ;;
  *)
    echo "ray_job.sh: job $submission_id ${status:-status unknown}; its logs: ray job logs --address $address $submission_id" >&2
    exit 1
    ;;
esac
