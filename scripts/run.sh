#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs vmd_fast's main job on the embedded
# default. Until the diagnosis pipeline lands (SIA/ZOOM issues), the main job is the
# benchmark of the fused ops against their references and peers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VMD_FAST_VENV:-.venv}/bin/activate"
out="${VMD_FAST_OUT:-outputs}"
mkdir -p "$out"
python -m vmd_fast.bench --json "$out/bench.json" "$@"
