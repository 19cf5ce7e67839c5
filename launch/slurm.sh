#!/usr/bin/env bash
# SLURM: one jaxsup process per GPU (or per host with --ntasks-per-node=1).
#
#   sbatch --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 launch/slurm.sh \
#       --config configs/clip_vit_b16.py --workdir /shared/runs/clip_b16
#   launch/slurm.sh --dry-run --config ... --workdir ...   # print the srun line
#
# Each task joins jax.distributed with the first node as coordinator, sees
# only its own GPU (one task per GPU), and reads its slice of every batch.
# SLURM's SIGTERM before the time limit (--signal) makes every process save
# and exit 0; resubmitting the same command resumes.
#SBATCH --job-name=jaxsup
#SBATCH --signal=TERM@120
#SBATCH --output=slurm-%j.out
#SBATCH --open-mode=append
set -euo pipefail
dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then dry_run=1; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
python="${PYTHON:-python}"
port="${JAXSUP_PORT:-12355}"

if [[ $dry_run == 1 ]]; then
  nodes="${SLURM_JOB_NODELIST:-node[0-1]}"
  echo "srun --kill-on-bad-exit=1 bash -c 'JAXSUP_COORDINATOR_ADDRESS=<first host of $nodes>:$port" \
       "JAXSUP_NUM_PROCESSES=\$SLURM_NTASKS JAXSUP_PROCESS_ID=\$SLURM_PROCID" \
       "CUDA_VISIBLE_DEVICES=\$SLURM_LOCALID $python -m jaxsup.train $*'"
  exit 0
fi
coordinator="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1):$port"
export JAXSUP_COORDINATOR_ADDRESS="$coordinator"
# Single quotes: SLURM_* are expanded per task, inside srun.
srun --kill-on-bad-exit=1 bash -c '
  export JAXSUP_NUM_PROCESSES=$SLURM_NTASKS JAXSUP_PROCESS_ID=$SLURM_PROCID
  [[ $SLURM_NTASKS -gt 1 ]] || unset JAXSUP_COORDINATOR_ADDRESS  # one task: a plain process, binds no port
  if [[ ${SLURM_GPUS_PER_TASK:-} == "" && ${SLURM_NTASKS_PER_NODE:-1} -gt 1 ]]; then
    export CUDA_VISIBLE_DEVICES=$SLURM_LOCALID
  fi
  exec '"$python"' -m jaxsup.train "$@"' jaxsup "$@"
