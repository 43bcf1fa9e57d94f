#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs vmd_fast's main job on the embedded
# default: a full ZOOM diagnosis and a full SIA diagnosis of the zoo's planted-bias smile
# classifier (trained where hats go with smiles), each with its report, then prints where
# the reports went. Extra arguments go to both `vmd-fast diagnose` calls
# (e.g. --n-images 64 --device cuda).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VMD_FAST_VENV:-.venv}/bin/activate"
out="${VMD_FAST_OUT:-outputs}"
target="${VMD_FAST_TARGET:-smile_bias_hat}"
mkdir -p "$out"
python -m vmd_fast.cli diagnose --method zoom --target "$target" --out "$out/$target-zoom" \
  --cache-dir "$out/cache" "$@"
python -m vmd_fast.cli diagnose --method sia --target "$target" --out "$out/$target-sia" "$@"
echo "vmd_fast: reports in $out/$target-zoom/index.html and $out/$target-sia/index.html"
