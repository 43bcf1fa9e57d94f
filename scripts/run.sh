#!/usr/bin/env bash
# Installs everything (scripts/setup.sh) and runs vmd_fast's main job on the embedded
# default: a ZOOM and an SIA diagnosis of the zoo's planted-bias smile classifier (trained
# where hats go with smiles), each with its report, then prints where the reports went.
# Extra arguments go to both `vmd-fast diagnose` calls, so they must be flags both methods
# take (e.g. --n-images 64 --device cuda; not ZOOM-only ones such as --threshold).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. "${VMD_FAST_VENV:-.venv}/bin/activate"
out="${VMD_FAST_OUT:-outputs}"
target="${VMD_FAST_TARGET:-smile_bias_hat}"
mkdir -p "$out"

missing=$(python - <<'PY'
from vmd_fast import zoo
shipped = {info["name"] for info in zoo.list()}
print(" ".join(name for name in ("generator", "clip", "editor") if name not in shipped))
PY
)
ran=0
if [[ " $missing " != *" generator "* && " $missing " != *" clip "* ]]; then
  python -m vmd_fast.cli diagnose --method zoom --target "$target" --out "$out/$target-zoom" \
    --cache-dir "$out/cache" "$@"
  ran=1
fi
if [[ " $missing " != *" editor "* ]]; then
  python -m vmd_fast.cli diagnose --method sia --target "$target" --out "$out/$target-sia" "$@"
  ran=1
fi
if [ -n "$missing" ]; then
  echo "vmd_fast: the zoo does not ship these models yet: $missing" >&2
  echo "vmd_fast: train them with: python -m vmd_fast.zoo train $missing" >&2
fi
if [ "$ran" = 0 ]; then
  exit 1
fi
echo "vmd_fast: reports are in $out/ (index.html in each run's folder)"
