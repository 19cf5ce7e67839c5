#!/usr/bin/env bash
# Every GPU measurement in one command (benchmarks/gpu_suite.py): pytest -m gpu, the contrastive,
# fused-linear-KD and train-step benchmarks; one JSON + Markdown report in --out (default gpu_results/).
#   benchmarks/gpu_suite.sh [--out DIR] [--dry-run] [--cpu-smoke] [--stages a,b] [--budget-s S]
# Environment it relies on (each can be overridden from outside):
#   XLA_PYTHON_CLIENT_MEM_FRACTION=0.92  JAX's GPU pool (default 0.75): the OOM sweeps go further
#   JAX_COMPILATION_CACHE_DIR            a persistent compile cache: a rerun on the same machine compiles less
#   PYTHONUNBUFFERED=1                   logs arrive as they are written
#   XLA_FLAGS is left as given: no --xla_force_host_platform_device_count (that is for CPU tests only)
#   GPU_WHEELS=build/gpu_wheels          wheels to install first where grain / ml-collections / tfds are missing
set -euo pipefail
cd "$(dirname "$0")/.."
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxsup_jax_cache}"
export PYTHONUNBUFFERED=1
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
# A bare JAX GPU image without the project's host dependencies: install the wheels that
# benchmarks/gpu_wheels.sh fetched elsewhere (carried in GPU_WHEELS) into /tmp/site.
GPU_WHEELS="${GPU_WHEELS:-build/gpu_wheels}"
if ! "$PYTHON" -c "import grain, ml_collections, tensorflow_datasets" 2>/dev/null && [ -d "$GPU_WHEELS" ]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    "$GPU_WHEELS"/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec "$PYTHON" benchmarks/gpu_suite.py "$@"
