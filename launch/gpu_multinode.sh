#!/usr/bin/env bash
# Multi-node GPU training: one sltjax process per node, all GPUs of a node in that process.
#
#   launch/gpu_multinode.sh [--dry-run] --hosts=host0,host1,... [--port=1234] [--workdir_root=DIR]
#                           -- ARGS FOR sltjax.main
#
# Host 0 is the coordinator. Each host is reached with ssh and must have the repository at the
# same path with its .venv installed (`make setup`, then `.venv/bin/pip install 'jax[cuda13]'`).
# The workdir must be on a filesystem all hosts share (NFS, GCS fuse, ...).
# Under SLURM, skip this script: `srun python -m sltjax.main --multihost ...` lets JAX read the
# cluster from SLURM's environment.
# --dry-run prints the exact commands instead of running them.
set -euo pipefail

dry_run=0; hosts=""; port=1234; main_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --hosts=*) hosts="${1#*=}" ;;
    --port=*) port="${1#*=}" ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "gpu_multinode.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$hosts" ]] || { echo "gpu_multinode.sh: --hosts=host0,host1,... is required" >&2; exit 2; }
IFS=',' read -r -a host_list <<< "$hosts"
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
quoted=$(printf '%q ' "${main_args[@]}")

for i in "${!host_list[@]}"; do
  remote="cd $repo_root && .venv/bin/python -m sltjax.main --coordinator_address=${host_list[0]}:$port --num_processes=${#host_list[@]} --process_id=$i $quoted"
  if [[ $dry_run -eq 1 ]]; then
    printf 'ssh %q %q &\n' "${host_list[$i]}" "$remote"
  else
    ssh "${host_list[$i]}" "$remote" &
  fi
done
[[ $dry_run -eq 1 ]] || wait
