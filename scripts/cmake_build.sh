#!/usr/bin/env bash
# Builds the kernels as a libtorch shared library with CMake (CPU-only unless
# VMD_FAST_CMAKE_CUDA=ON) against the torch of the virtual environment, and runs the C++
# smoke test. The hints below let CMake find a pip-installed CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
. "${VMD_FAST_VENV:-.venv}/bin/activate"
BUILD="${VMD_FAST_CMAKE_BUILD:-build-cmake}"
args=(-DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
      -DVMD_FAST_CUDA="${VMD_FAST_CMAKE_CUDA:-OFF}")
if python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)"; then
  cuda_home="${CUDA_HOME:-/usr/local/cuda}"
  nvrtc=$(python - <<'PY'
import glob, os
try:
    import nvidia
    hits = sorted(h for base in nvidia.__path__ for h in glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*")))
    print(hits[0] if hits else "")
except ImportError:
    print("")
PY
)
  args+=(-DCUDA_TOOLKIT_ROOT_DIR="$cuda_home")
  [ -n "$nvrtc" ] && args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
  export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
fi
cmake -S . -B "$BUILD" "${args[@]}" > "$BUILD.configure.log" 2>&1 || { cat "$BUILD.configure.log"; exit 1; }
cmake --build "$BUILD" -j "${MAX_JOBS:-2}" 2>&1 | grep -E "error|Error|Built target" || true
"$BUILD/vmd_fast_smoke"
echo "vmd_fast: libtorch library at $BUILD/libvmd_fast.so"
