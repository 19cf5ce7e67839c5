#!/usr/bin/env bash
# One process on this machine (its GPU if it has one, else the CPU).
#
#   launch/local.sh [--dry-run] [--gpu N] -- --config configs/supervised_digits.py --workdir /tmp/run
#
# --gpu N restricts the run to GPU N (CUDA_VISIBLE_DEVICES). Resumes from the
# workdir if it holds a checkpoint.
set -euo pipefail
dry_run=0 gpu=""
python="${PYTHON:-python}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --gpu) gpu="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "local.sh: unknown option $1 (train args go after --)" >&2; exit 2 ;;
  esac
done
envs=()
[[ -n "$gpu" ]] && envs+=(CUDA_VISIBLE_DEVICES="$gpu")
cmd=("$python" -m jaxsup.train "$@")
if [[ $dry_run == 1 ]]; then
  echo "env ${envs[*]} ${cmd[*]}"
  exit 0
fi
exec env "${envs[@]}" "${cmd[@]}"
