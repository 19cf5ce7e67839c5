#!/usr/bin/env bash
# Cloud TPU VM pod: copy the repo to every worker, install, run the same
# command on all of them, collect the logs.
#
#   launch/tpu_pod.sh [--dry-run] --tpu NAME --zone ZONE [--project P] \
#       [--create --accelerator v4-32 --version tpu-ubuntu2204-base] [--no-install] \
#       -- --config configs/clip_vit_b16.py --workdir gs://bucket/runs/clip_b16
#
# jax.distributed auto-detects the pod (no coordinator flags needed); each
# host reads its slice of every batch. Maintenance events send SIGTERM: the
# run saves and exits 0; run the same command again to resume. Logs are
# fetched into ./tpu_logs/<NAME>/worker_<i>.log.
set -euo pipefail
dry_run=0 create=0 install=1 tpu="" zone="" project="" accelerator="v4-32" version="tpu-ubuntu2204-base"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --tpu) tpu="$2"; shift 2 ;;
    --zone) zone="$2"; shift 2 ;;
    --project) project="$2"; shift 2 ;;
    --create) create=1; shift ;;
    --accelerator) accelerator="$2"; shift 2 ;;
    --version) version="$2"; shift 2 ;;
    --no-install) install=0; shift ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option $1 (train args go after --)" >&2; exit 2 ;;
  esac
done
[[ -n "$tpu" && -n "$zone" ]] || { echo "tpu_pod.sh: --tpu and --zone are required" >&2; exit 2; }
gflags=(--zone "$zone")
[[ -n "$project" ]] && gflags+=(--project "$project")
train_args="$*"
run() { if [[ $dry_run == 1 ]]; then echo "$*"; else "$@"; fi; }

if [[ $create == 1 ]]; then
  run gcloud compute tpus tpu-vm create "$tpu" "${gflags[@]}" --accelerator-type "$accelerator" --version "$version"
fi
run gcloud compute tpus tpu-vm scp --recurse "$(pwd)" "$tpu:~/jaxsup" --worker=all "${gflags[@]}"
if [[ $install == 1 ]]; then
  run gcloud compute tpus tpu-vm ssh "$tpu" --worker=all "${gflags[@]}" \
    --command "cd ~/jaxsup && python3 -m pip install -q -e '.[tb]' 'jax[tpu]'"
fi
run gcloud compute tpus tpu-vm ssh "$tpu" --worker=all "${gflags[@]}" \
  --command "cd ~/jaxsup && python3 -m jaxsup.train $train_args > ~/jaxsup_train.log 2>&1"
if [[ $dry_run == 1 ]]; then
  echo "gcloud compute tpus tpu-vm scp $tpu:~/jaxsup_train.log tpu_logs/$tpu/worker_<i>.log --worker=<i> ${gflags[*]}  # for each worker"
  exit 0
fi
mkdir -p "tpu_logs/$tpu"
workers=$(gcloud compute tpus tpu-vm describe "$tpu" "${gflags[@]}" --format='value(networkEndpoints.len())' 2>/dev/null || echo 1)
for ((i = 0; i < workers; i++)); do
  gcloud compute tpus tpu-vm scp "$tpu:~/jaxsup_train.log" "tpu_logs/$tpu/worker_$i.log" --worker="$i" "${gflags[@]}" || true
done
