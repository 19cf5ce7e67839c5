#!/usr/bin/env bash
# N jaxsup processes on this machine (127.0.0.1), M simulated CPU devices each:
# the multi-host code path (jax.distributed, per-process data, collective
# checkpoints) without a pod. `--processes 1` still joins jax.distributed, so it
# sums with the same collectives (gloo) as N processes: a run moves between
# process counts bitwise (docs/scaling.md, "Moving a run to another layout").
#
#   launch/multihost_cpu.sh [--dry-run] [--processes N] [--devices M] [--port P] \
#       [--logdir DIR] -- --config configs/supervised_digits.py --workdir /tmp/mh
#
# Logs go to DIR/process_<i>.log (default: <workdir>/logs); a relaunch first moves
# the earlier logs to process_<i>.<n>.log (n = 1, 2, ...), so no attempt's reason is
# lost. SIGTERM/SIGINT are forwarded to every process and the script waits for all
# of them (a process saving its checkpoint is never left behind); it exits 0 when
# every process exited 0, else 1.
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

keep_earlier_log() {  # process_<i>.log -> process_<i>.<n>.log, the first free n
  local log="$1" n=1
  [[ -e "$log" ]] || return 0
  while [[ -e "${log%.log}.$n.log" ]]; do n=$((n + 1)); done
  mv "$log" "${log%.log}.$n.log"
}

[[ $dry_run == 1 ]] || mkdir -p "$logdir"
for ((i = 0; i < processes; i++)); do
  envs=(JAX_PLATFORMS=cpu "XLA_FLAGS=--xla_force_host_platform_device_count=$devices"
        JAXSUP_COORDINATOR_ADDRESS="127.0.0.1:$port" JAXSUP_NUM_PROCESSES="$processes" JAXSUP_PROCESS_ID="$i")
  cmd=("$python" -m jaxsup.train "${args[@]}")
  if [[ $dry_run == 1 ]]; then
    echo "env ${envs[*]} ${cmd[*]} > $logdir/process_$i.log 2>&1 &"
    continue
  fi
  keep_earlier_log "$logdir/process_$i.log"
  env "${envs[@]}" "${cmd[@]}" > "$logdir/process_$i.log" 2>&1 &
  pids+=($!)
done
[[ $dry_run == 1 ]] && exit 0

# A trapped signal interrupts `wait` (status > 128) while the process runs on: wait again.
wait_for() {
  local pid="$1" rc
  while true; do
    rc=0
    wait "$pid" || rc=$?
    if (( rc > 128 )) && kill -0 "$pid" 2>/dev/null; then continue; fi
    return "$rc"
  done
}

status=0
for ((i = 0; i < ${#pids[@]}; i++)); do
  if ! wait_for "${pids[$i]}"; then
    echo "process $i failed; last lines of $logdir/process_$i.log:" >&2
    tail -n 5 "$logdir/process_$i.log" >&2
    status=1
  fi
done
exit $status
