#!/usr/bin/env bash
# Cloud TPU VM lifecycle for sltjax: create, setup (copy + install on every worker), run, logs, delete.
#
#   launch/tpu_vm.sh [--dry-run] --name=NAME --zone=ZONE [--project=P] [--accelerator=v5litepod-16]
#                    [--version=v2-alpha-tpuv5-lite] COMMAND [-- ARGS FOR sltjax.main]
#
#   COMMAND: create | setup | run | logs | delete
#   run starts `python -m sltjax.main --multihost ARGS` on all workers in the background (nohup),
#   logging to ~/sltjax.log on each; logs tails worker 0's log.
# --dry-run prints the exact commands instead of running them.
set -euo pipefail

dry_run=0; name=""; zone=""; project=""; accelerator="v5litepod-16"; version="v2-alpha-tpuv5-lite"
command=""; main_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    create|setup|run|logs|delete) command="$1" ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$command" ]] || { echo "tpu_vm.sh: give a COMMAND: create | setup | run | logs | delete" >&2; exit 2; }
[[ -n "$name" && -n "$zone" ]] || { echo "tpu_vm.sh: --name and --zone are required" >&2; exit 2; }

gcloud_tpu=(gcloud compute tpus tpu-vm)
common=("--zone=$zone")
[[ -n "$project" ]] && common+=("--project=$project")

run() {
  if [[ $dry_run -eq 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
on_all_workers() {
  run "${gcloud_tpu[@]}" ssh "$name" "${common[@]}" --worker=all --command="$1"
}

repo_root="$(cd "$(dirname "$0")/.." && pwd)"
case "$command" in
  create)
    run "${gcloud_tpu[@]}" create "$name" "${common[@]}" --accelerator-type="$accelerator" \
      --version="$version" ;;
  setup)
    run "${gcloud_tpu[@]}" scp --recurse "$repo_root" "$name:~/sltjax" "${common[@]}" --worker=all
    on_all_workers "cd ~/sltjax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'" ;;
  run)
    quoted=$(printf '%q ' "${main_args[@]}")
    on_all_workers "cd ~/sltjax && nohup .venv/bin/python -m sltjax.main --multihost $quoted > ~/sltjax.log 2>&1 &" ;;
  logs)
    run "${gcloud_tpu[@]}" ssh "$name" "${common[@]}" --worker=0 --command="tail -f ~/sltjax.log" ;;
  delete)
    run "${gcloud_tpu[@]}" delete "$name" "${common[@]}" --quiet ;;
esac
