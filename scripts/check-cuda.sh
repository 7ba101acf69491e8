#!/usr/bin/env bash
# Compile-checks the `cuda` feature (candle CUDA tensors + NCCL through cudarc) on a machine
# without a GPU or a system CUDA toolkit: the toolkit comes from PyPI wheels pinned to CUDA 13.0
# (driver 580), laid out as a toolkit folder in a cache dir. Not run in CI (a few minutes, ~3 GB).
#   scripts/check-cuda.sh            # cargo check -p genarm-model --features cuda
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${GENARM_CACHE_DIR:-$HOME/.cache/genarm}/cuda13"
venv="$cache/venv"
tk="$cache/toolkit"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -x "$tk/bin/nvcc" ]; then
  "$venv/bin/pip" install -q 'cuda-toolkit[nvcc,nvvm,crt,cccl,cudart,cublas,curand,nvrtc]==13.0.2' nvidia-nccl-cu13==2.28.9
  sp=$("$venv/bin/python" -c 'import site; print(site.getsitepackages()[0])')
  mkdir -p "$tk/lib64" "$tk/include"
  ln -sfn "$sp/nvidia/cu13/bin" "$tk/bin"
  ln -sfn "$sp/nvidia/cu13/nvvm" "$tk/nvvm"
  for f in "$sp"/nvidia/cu13/include/* "$sp"/nvidia/nccl/include/*; do ln -sfn "$f" "$tk/include/"; done
  for f in "$sp"/nvidia/cu13/lib/*.so* "$sp"/nvidia/nccl/lib/*.so*; do
    b=$(basename "$f"); ln -sfn "$f" "$tk/lib64/$b"
    u="${b%%.so*}.so"; [ -e "$tk/lib64/$u" ] || ln -sfn "$f" "$tk/lib64/$u"
  done
fi
export CUDA_ROOT="$tk" CUDA_PATH="$tk" CUDA_HOME="$tk" CUDA_TOOLKIT_ROOT_DIR="$tk"
export NVCC="$tk/bin/nvcc" PATH="$tk/bin:$PATH" CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDAFORGE_THREADS=2
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target/cuda-check}"
cargo check -p genarm-model --features cuda "$@"
