"""vmd_fast: C++/CUDA-accelerated vision model diagnosis (SIA and ZOOM) for PyTorch.

Submodules: ``ops`` (the fused kernels), ``diagnose`` (target adapters, metrics, results),
``zoom``, ``sia``, ``attacks`` (FGSM/PGD), ``train`` (counterfactual and adversarial
training), ``domains`` (the synthetic face world), ``zoo`` (the models shipped with the
package), ``models``, ``io`` (loading real checkpoints from local files), ``cli``. The
heavier ones load on first use (``vmd_fast.zoom``).
"""

import importlib

__version__ = "0.1.0"

from vmd_fast import ops  # noqa: E402  (loads the compiled kernels once)
from vmd_fast import diagnose  # noqa: E402

_LAZY = ("zoom", "sia", "attacks", "train", "domains", "zoo", "models", "cli", "bench", "io")

__all__ = ["diagnose", "ops", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"vmd_fast.{name}")
    raise AttributeError(f"module 'vmd_fast' has no attribute {name!r}")
