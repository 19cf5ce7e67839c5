#!/usr/bin/env bash
# Every GPU measurement in one command (benchmarks/gpu_suite.py): pytest -m gpu, the contrastive,
# fused-linear-KD and train-step benchmarks; one JSON + Markdown report in --out (default gpu_results/).
#   benchmarks/gpu_suite.sh [--out DIR] [--dry-run] [--cpu-smoke] [--stages a,b] [--budget-s S]
# Environment it relies on (each can be overridden from outside):
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.92  JAX's GPU pool (default 0.75): the OOM sweeps go further
#   JAX_COMPILATION_CACHE_DIR            a persistent compile cache: a rerun on the same machine compiles less
#   PYTHONUNBUFFERED=1                   logs arrive as they are written
#   XLA_FLAGS is left as given: no --xla_force_host_platform_device_count (that is for CPU tests only)
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxsup_jax_cache}"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
