#!/usr/bin/env bash
# Wheels of the host-side dependencies that a bare JAX GPU image may lack (ml-collections, grain,
# tensorflow-datasets and what they need beyond numpy/protobuf/absl/etils), for machines that cannot
# reach a package index. Run it where pip can reach PyPI; carry the folder to the GPU machine, where
# benchmarks/gpu_suite.sh installs it into /tmp/site before running (GPU_WHEELS=folder, default below).
#   benchmarks/gpu_wheels.sh [DEST=build/gpu_wheels] [PYTHON_VERSION=3.12]
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-build/gpu_wheels}"
PYVER="${2:-3.12}"
mkdir -p "$DEST"
BINARY=(ml-collections==1.1.0 grain==0.2.18 array_record==0.8.6 dm-tree==0.1.10 tensorflow-datasets==4.9.10
        tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 immutabledict==4.3.1 simple_parsing==0.1.9
        docstring-parser==0.18.0 termcolor==3.3.0 toml==0.10.2 importlib-resources==7.1.0 zipp==4.1.2
        portpicker==1.6.0)
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" "${BINARY[@]}"
python3 -m pip wheel -q --no-deps -w "$DEST" promise==2.3   # pure Python, published as a source archive only
du -sh "$DEST"
