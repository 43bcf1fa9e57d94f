"""vmd_fast: C++/CUDA-accelerated vision model diagnosis (SIA and ZOOM) for PyTorch."""

__version__ = "0.1.0"

from vmd_fast import ops  # noqa: E402  (loads the compiled kernels once)
from vmd_fast import diagnose  # noqa: E402

__all__ = ["diagnose", "ops", "__version__"]
