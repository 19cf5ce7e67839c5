"""Multi-process start-up: `jax.distributed.initialize` from flags, env, or auto-detection.

Order of precedence:
1. explicit `--coordinator_address/--num_processes/--process_id` flags;
2. env JAXSUP_COORDINATOR_ADDRESS, JAXSUP_NUM_PROCESSES, JAXSUP_PROCESS_ID
   (what launch/multihost_cpu.sh and launch/slurm.sh set);
3. auto-detection by JAX on Cloud TPU pods and SLURM (`jax.distributed.initialize()`
   with no arguments), when TPU_WORKER_HOSTNAMES lists several hosts or
   SLURM_NTASKS > 1.
A single process needs none of this; given an address anyway (e.g.
`launch/multihost_cpu.sh --processes 1`) it joins as a one-process run and
then uses the same cross-process collectives as N processes (gloo on CPU):
its sums round exactly as a run of N processes do, so a checkpoint moves
between process counts bitwise (docs/scaling.md, "Moving a run to another layout"). An unreachable
coordinator fails after `timeout_s` with a message naming the address,
instead of hanging.

Dead peers: every process sends heartbeats to the coordinator; one silent for
`heartbeat_timeout_s` (`--heartbeat_timeout`, env JAXSUP_HEARTBEAT_TIMEOUT;
JAX's default 100 s) counts as dead and the surviving processes stop, so a
scheduler can restart the job from its last checkpoint. Shorter notices a
dead peer sooner; too short stops healthy runs whose hosts stall (long
compiles, swapping, a slow filesystem).
"""
from __future__ import annotations

import logging
import os
import socket
import time

import jax
import numpy as np

from jaxsup.errors import LaunchError

log = logging.getLogger("jaxsup")

ENV_ADDRESS, ENV_COUNT, ENV_ID = "JAXSUP_COORDINATOR_ADDRESS", "JAXSUP_NUM_PROCESSES", "JAXSUP_PROCESS_ID"
ENV_HEARTBEAT = "JAXSUP_HEARTBEAT_TIMEOUT"
HEARTBEAT_TIMEOUT_S = 100  # jax.distributed.initialize's default


class DistributedInitError(LaunchError):
    """This process could not join the multi-process run."""


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def _auto_detectable() -> bool:
    tpu_hosts = [h for h in os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    return len(tpu_hosts) > 1 or int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Polls host:port until it accepts a TCP connection; raises DistributedInitError at the deadline.

    jax.distributed aborts the whole process (no Python exception) when the
    coordinator never answers, so non-coordinator processes check first.
    """
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise DistributedInitError(
                    f"Could not join the multi-process run at {address}: no coordinator answered within "
                    f"{timeout_s} s ({err}). Is process 0 running, and is the port reachable from this host?"
                ) from err
            time.sleep(0.5)


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_s: int = 300,
    heartbeat_timeout_s: int | None = None,
) -> bool:
    """Initializes jax.distributed when this is a multi-process launch; returns True if it did.

    heartbeat_timeout_s: seconds of silence after which a peer counts as dead
    (None: env JAXSUP_HEARTBEAT_TIMEOUT, else HEARTBEAT_TIMEOUT_S).
    """
    heartbeat = heartbeat_timeout(heartbeat_timeout_s)
    address = coordinator_address or os.environ.get(ENV_ADDRESS)
    count = num_processes if num_processes is not None else _env_int(ENV_COUNT)
    index = process_id if process_id is not None else _env_int(ENV_ID)
    if count == 1 and address and index is None:
        index = 0
    if count is not None and (count > 1 or address):  # one process with an address: see the module docstring
        if not address or index is None:
            raise LaunchError(
                f"A {count}-process run needs a coordinator address and a process id "
                f"(--coordinator_address/--process_id or {ENV_ADDRESS}/{ENV_ID})."
            )
        if not 0 <= index < count:
            raise LaunchError(f"process_id {index} is outside [0, {count}).")
        kwargs = dict(coordinator_address=address, num_processes=count, process_id=index)
        if index != 0:
            wait_for_coordinator(address, timeout_s)
        log.info("Process %d of %d: joining %s (waiting up to %d s for all).", index, count, address, timeout_s)
    elif _auto_detectable():
        kwargs = {}
    else:
        return False
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=timeout_s, heartbeat_timeout_seconds=heartbeat)
    except Exception as err:  # XLA raises RuntimeError/XlaRuntimeError with a long message.
        where = kwargs.get("coordinator_address", "the auto-detected coordinator")
        raise DistributedInitError(
            f"Could not join the multi-process run at {where} within {timeout_s} s "
            f"(process {kwargs.get('process_id', '?')} of {kwargs.get('num_processes', '?')}): "
            f"is process 0 running and the port reachable? ({str(err).splitlines()[0][:200]})"
        ) from err
    log.info("Process %d of %d joined (%d local devices; a peer silent for %d s counts as dead).",
             jax.process_index(), jax.process_count(), jax.local_device_count(), heartbeat)
    return True


def heartbeat_timeout(seconds: int | None = None) -> int:
    """The dead-peer timeout: `seconds`, else env JAXSUP_HEARTBEAT_TIMEOUT, else JAX's default; >= 1."""
    value = seconds if seconds is not None else _env_int(ENV_HEARTBEAT)
    value = HEARTBEAT_TIMEOUT_S if value is None else value
    if value < 1:
        raise LaunchError(f"heartbeat timeout {value} s (--heartbeat_timeout / {ENV_HEARTBEAT}) must be >= 1.")
    return value


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is True on any (a host-level all-gather)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))
