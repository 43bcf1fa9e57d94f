#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs the test suite: the Python tests (CUDA
# tests skip without a GPU), the doctests, and the libtorch (CMake) build with its C++
# smoke test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VMD_FAST_VENV:-.venv}/bin/activate"

# A build that silently lost its kernels must fail, not skip.
export VMD_FAST_REQUIRE_COMPILED=1
if [ "${VMD_FAST_CUDA:-}" != "0" ] && [ -x "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" ]; then
  export VMD_FAST_REQUIRE_CUDA_KERNELS=1
fi

python -m pytest python_tests --doctest-modules vmd_fast "$@"

if [ "${VMD_FAST_SKIP_CMAKE:-0}" != "1" ]; then
  bash scripts/cmake_build.sh
fi
