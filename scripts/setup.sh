#!/usr/bin/env bash
# Sets vmd_fast up from nothing: a virtual environment, torch 2.14.1 + torchvision 0.29.1,
# the other dependencies, and the compiled kernels (CUDA too when nvcc is found; no GPU is
# needed to compile them). Re-running it only rebuilds what changed.
#
# Environment: VMD_FAST_VENV (default .venv), PYTHON (default python3.11), VMD_FAST_CUDA
# (0: CPU-only build, 1: require CUDA), CUDA_HOME, TORCH_CUDA_ARCH_LIST, MAX_JOBS,
# VMD_FAST_SKIP_CHROMIUM=1 (do not try to install Debian's chromium as root).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VMD_FAST_VENV:-.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"

quiet_pip() {
  # pip's notes about absent local index folders are noise here; keep real errors.
  set +o pipefail
  python -m pip install -q --disable-pip-version-check "$@" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
  local status=${PIPESTATUS[0]}
  set -o pipefail
  return "$status"
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "vmd_fast: creating the virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"

if ! python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')" 2>/dev/null; then
  echo "vmd_fast: installing torch 2.14.1 and torchvision 0.29.1"
  quiet_pip torch==2.14.1 torchvision==0.29.1
fi
quiet_pip -r requirements.txt

if [ -z "${CUDA_HOME:-}" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
  export CUDA_HOME=/usr/local/cuda
fi
export MAX_JOBS="${MAX_JOBS:-2}"
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  export TORCH_CUDA_ARCH_LIST="9.0"  # H100 / H200; compiling needs no GPU
fi

echo "vmd_fast: building the compiled kernels (incremental)"
mkdir -p build
if ! python setup.py build_ext --inplace > build/setup.log 2>&1; then
  tail -n 60 build/setup.log >&2
  echo "vmd_fast: the extension build failed (full log: build/setup.log)" >&2
  exit 1
fi
if ! python -c "import importlib.metadata as m; m.version('vmd_fast')" 2>/dev/null; then
  VMD_FAST_SKIP_EXT=1 quiet_pip --no-build-isolation --no-deps -e .
fi
# The report test screenshots pages in headless Chromium. Install Debian's chromium when this
# runs as root with apt-get; any failure (no network to the mirrors) only makes that test skip.
if [ "${VMD_FAST_SKIP_CHROMIUM:-0}" != "1" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1 \
   && ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  echo "vmd_fast: installing Debian's chromium for the report screenshot test (optional)"
  mkdir -p build
  apt_install() { DEBIAN_FRONTEND=noninteractive timeout 240 apt-get install -y --no-install-recommends chromium; }
  if ! { apt_install || { timeout 120 apt-get update && apt_install; }; } > build/chromium-install.log 2>&1; then
    echo "vmd_fast: chromium was not installed (build/chromium-install.log); the screenshot test will skip"
  fi
fi
python -c "import vmd_fast.ops as o; print(f'vmd_fast: ready (compiled kernels: {o.has_compiled_ops()}, CUDA kernels: {o.has_cuda_kernels()})')"
