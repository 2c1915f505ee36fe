#!/usr/bin/env bash
# One Ray node of a Slurm job, run by `srun` from train.sbatch (one task per node):
#   ray_node.sh head PORT          the head: GCS on NODE_IP:PORT
#   ray_node.sh worker HEAD:PORT   a worker joining that head
# It records "<role> <host> <pid>" in $SLIME_JOB_DIR/pids, then becomes `ray start --block` (exec, same PID):
# SIGTERM makes Ray drain and stop every process it started on this node, then exit.
#
# Environment (train.sbatch exports it; srun passes it on):
#   SLIME_JOB_DIR         the job's folder (pids file)
#   SLIME_NODE_IP         this node's IP; default: the first address of `hostname -I`. Set it only on one node
#                         (127.0.0.1 with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0: Ray binds loopback only, and then
#                         refuses to start workers, so that is for single-node jobs and tests)
#   SLIME_RAY_TMPDIR      Ray's temp dir (sockets, logs); default /tmp/slime-ray-$SLURM_JOB_ID. Kept after the job
#                         for its logs. Keep it short: Unix socket paths inside it must stay under 107 bytes
#   SLIME_RAY_START_ARGS  extra `ray start` arguments, e.g. fixed ports (--ray-client-server-port ...)
#   RAY_AUTH_MODE=token and RAY_AUTH_TOKEN: the cluster's token, the same on every node
# CPUs and GPUs are the ones Slurm gave this node (SLURM_CPUS_ON_NODE, SLURM_GPUS_ON_NODE).
set -euo pipefail

role="${1:?usage: ray_node.sh head PORT | worker HEAD_IP:PORT}"
target="${2:?usage: ray_node.sh head PORT | worker HEAD_IP:PORT}"
: "${SLIME_JOB_DIR:?set SLIME_JOB_DIR (train.sbatch does)}"
: "${RAY_AUTH_TOKEN:?set RAY_AUTH_TOKEN: the cluster keeps token auth on}"
node_ip="${SLIME_NODE_IP:-$(hostname -I | awk '{print $1}')}"
temp_dir="${SLIME_RAY_TMPDIR:-/tmp/slime-ray-${SLURM_JOB_ID:?}}"
mkdir -p "$temp_dir"

args=(
  --node-ip-address "$node_ip"
  --num-cpus "${SLURM_CPUS_ON_NODE:?run under srun}"
  --num-gpus "${SLURM_GPUS_ON_NODE:-0}"
  --temp-dir "$temp_dir"
  --disable-usage-stats
  --block
)
case "$role" in
  head) args=(--head --port "$target" --include-dashboard=false "${args[@]}") ;;
  worker) args=(--address "$target" "${args[@]}") ;;
  *) echo "ray_node.sh: role must be head or worker, got '$role'" >&2; exit 2 ;;
esac
# Word splitting of SLIME_RAY_START_ARGS is intended: it is a list of flags.
# shellcheck disable=SC2206
args+=(${SLIME_RAY_START_ARGS:-})

echo "ray-$role $(hostname) $$" >> "$SLIME_JOB_DIR/pids"
echo "ray_node.sh: ray-$role on $(hostname) ($node_ip), pid $$, temp dir $temp_dir" >&2
export RAY_AUTH_MODE=token
exec ray start "${args[@]}"
