#!/usr/bin/env bash
# Cloud TPU VM lifecycle for sltjax: create, setup (copy + install on every worker), build (a
# dataset into a bucket, once), run, logs, delete.
#
#   launch/tpu_vm.sh [--dry-run] --name=NAME --zone=ZONE [--project=P] [--accelerator=v5litepod-16]
#                    [--version=v2-alpha-tpuv5-lite] [--release=gs://BUCKET/raw/RELEASE]
#                    [--no-compile-check] COMMAND [-- ARGS]
#
#   COMMAND: create | setup | build | run | logs | delete
#   create and run check before they spend: given the job's ARGS (--config=...), they first
#   compile its training step for the slice on this machine (`python -m sltjax.main
#   --mode=compile --topology=ACCELERATOR ARGS`, which needs `pip install -e '.[tpu]'` here) and
#   refuse to start when it fails or does not fit the chips' memory (--no-compile-check skips
#   it). run reads the slice's accelerator type from gcloud unless --accelerator is given.
#   build runs `python -m sltjax.data.build ARGS` on worker 0 (in the foreground), e.g.
#     -- --dataset=phoenix2014t --data_dir=gs://BUCKET/tensorflow_datasets
#   with --release, it first copies that downloaded release from the bucket to worker 0's disk
#   and adds --manual_dir=<that copy>. Every worker then reads the built dataset from the bucket.
#   run starts `python -m sltjax.main --multihost ARGS` on all workers in the background (nohup),
#   logging to ~/sltjax.log on each; logs tails worker 0's log.
# --dry-run prints the exact commands instead of running them.
set -euo pipefail

dry_run=0; name=""; zone=""; project=""; accelerator="v5litepod-16"; version="v2-alpha-tpuv5-lite"
release=""; accelerator_given=0; compile_check=1
command=""; main_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}"; accelerator_given=1 ;;
    --no-compile-check) compile_check=0 ;;
    --version=*) version="${1#*=}" ;;
    --release=*) release="${1#*=}" ;;
    create|setup|build|run|logs|delete) command="$1" ;;
    --) shift; main_args=("$@"); break ;;
    *) echo "tpu_vm.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n "$command" ]] || { echo "tpu_vm.sh: give a COMMAND: create | setup | build | run | logs | delete" >&2; exit 2; }
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
python="$repo_root/.venv/bin/python"
[[ -x "$python" ]] || python=python3

# The job's training step compiled for slice $1 here, before any TPU time is spent on it.
check_fits() {
  [[ $compile_check -eq 1 && ${#main_args[@]} -gt 0 ]] || return 0
  if [[ $dry_run -eq 1 ]]; then
    run "$python" -m sltjax.main --mode=compile --topology="$1" "${main_args[@]}"
    return 0
  fi
  echo "tpu_vm.sh: compiling the training step for $1 before starting (--no-compile-check skips)" >&2
  if ! (cd "$repo_root" && "$python" -m sltjax.main --mode=compile --topology="$1" \
        "${main_args[@]}" >&2); then
    echo "tpu_vm.sh: not started: the job does not compile for $1 or does not fit its chips (above)." >&2
    exit 2
  fi
}

case "$command" in
  create)
    check_fits "$accelerator"
    run "${gcloud_tpu[@]}" create "$name" "${common[@]}" --accelerator-type="$accelerator" \
      --version="$version" ;;
  setup)
    run "${gcloud_tpu[@]}" scp --recurse "$repo_root" "$name:~/sltjax" "${common[@]}" --worker=all
    on_all_workers "cd ~/sltjax && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'" ;;
  build)
    quoted=$(printf '%q ' "${main_args[@]}")
    fetch=""
    if [[ -n "$release" ]]; then
      fetch="mkdir -p ~/release && gcloud storage cp -r $(printf '%q' "$release") ~/release && "
      quoted+="--manual_dir=\$HOME/release/$(printf '%q' "$(basename "$release")")"
    fi
    run "${gcloud_tpu[@]}" ssh "$name" "${common[@]}" --worker=0 \
      --command="cd ~/sltjax && ${fetch}.venv/bin/python -m sltjax.data.build $quoted" ;;
  run)
    if [[ $accelerator_given -eq 0 && $compile_check -eq 1 && ${#main_args[@]} -gt 0 ]]; then
      describe=("${gcloud_tpu[@]}" describe "$name" "${common[@]}" --format='value(acceleratorType)')
      if [[ $dry_run -eq 1 ]]; then run "${describe[@]}"; accelerator='ACCELERATOR_TYPE'
      else accelerator=$("${describe[@]}"); fi
    fi
    check_fits "$accelerator"
    quoted=$(printf '%q ' "${main_args[@]}")
    on_all_workers "cd ~/sltjax && nohup .venv/bin/python -m sltjax.main --multihost $quoted > ~/sltjax.log 2>&1 &" ;;
  logs)
    run "${gcloud_tpu[@]}" ssh "$name" "${common[@]}" --worker=0 --command="tail -f ~/sltjax.log" ;;
  delete)
    run "${gcloud_tpu[@]}" delete "$name" "${common[@]}" --quiet ;;
esac
