#!/usr/bin/env bash
# N jaxsup processes on this machine (127.0.0.1), M simulated CPU devices each:
# the multi-host code path (jax.distributed, per-process data, collective
# checkpoints) without a pod. `--processes 1` still joins jax.distributed, so it
# sums with the same collectives (gloo) as N processes: a run moves between
# process counts bitwise (README, "Moving a run to another layout").
#
#   launch/multihost_cpu.sh [--dry-run] [--processes N] [--devices M] [--port P] \
#       [--logdir DIR] -- --config configs/supervised_digits.py --workdir /tmp/mh
#
# Logs go to DIR/process_<i>.log (default: <workdir>/logs). Exits non-zero if
# any process fails; SIGTERM/SIGINT are forwarded to every process.
set -euo pipefail
processes=2 devices=4 port=12355 logdir="" dry_run=0
python="${PYTHON:-python}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) dry_run=1; shift ;;
    --processes) processes="$2"; shift 2 ;;
    --devices) devices="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --logdir) logdir="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "multihost_cpu.sh: unknown option $1 (train args go after --)" >&2; exit 2 ;;
  esac
done
args=("$@")
if [[ -z "$logdir" ]]; then
  for ((i = 0; i < ${#args[@]}; i++)); do
    [[ "${args[$i]}" == "--workdir" ]] && logdir="${args[$((i + 1))]}/logs"
    [[ "${args[$i]}" == --workdir=* ]] && logdir="${args[$i]#--workdir=}/logs"
  done
  logdir="${logdir:-logs}"
fi

pids=()
forward() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap forward TERM INT

[[ $dry_run == 1 ]] || mkdir -p "$logdir"
for ((i = 0; i < processes; i++)); do
  envs=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
        JAXSUP_COORDINATOR_ADDRESS="127.0.0.1:$port" JAXSUP_NUM_PROCESSES="$processes" JAXSUP_PROCESS_ID="$i")
  cmd=("$python" -m jaxsup.train "${args[@]}")
  if [[ $dry_run == 1 ]]; then
    echo "env ${envs[*]} ${cmd[*]} > $logdir/process_$i.log 2>&1 &"
    continue
  fi
  env "${envs[@]}" "${cmd[@]}" > "$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
[[ $dry_run == 1 ]] && exit 0

status=0
for ((i = 0; i < ${#pids[@]}; i++)); do
  if ! wait "${pids[$i]}"; then
    echo "process $i failed; last lines of $logdir/process_$i.log:" >&2
    tail -n 5 "$logdir/process_$i.log" >&2
    status=1
  fi
done
exit $status
