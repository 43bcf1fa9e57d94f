"""The fused ops of vmd_fast, each with a pure-PyTorch reference.

=========================  ==============================================================
op                          what it computes
=========================  ==============================================================
``projected_sign_step``     SIA / PGD update ``clip(Pi_B(origin, eps)(x + step sign g))``
``clamp_gd_step``           ZOOM update ``clamp(w - lr g, -eps, eps)``
``relevance_directions``    StyleCLIP global directions for many text directions
``relevance_accumulate``    batched accumulation of the channel-relevance matrix
``ssim`` / ``SSIMReference``  Gaussian-window SSIM, fused forward and backward
``clip_consistency``        soft cross-entropy of CLIP logits (ZOOM's gamma term)
=========================  ==============================================================

Each takes ``backend="auto" | "cuda" | "cpp" | "torch"``; the compiled ones are registered
as ``torch.ops.vmd_fast.*`` (schema, fake kernel, autograd), so they work under
``torch.compile`` and CUDA-graph capture. :mod:`vmd_fast.ops.reference` holds the
definitions they are tested against.
"""

from vmd_fast.ops import reference
from vmd_fast.ops._backend import (
    BACKENDS,
    has_compiled_ops,
    has_cuda_kernels,
    value_checks,
    value_checks_enabled,
)
from vmd_fast.ops.clip_consistency import clip_consistency
from vmd_fast.ops.relevance import normalize_relevance, relevance_accumulate, relevance_directions
from vmd_fast.ops.ssim import SSIMReference, ssim
from vmd_fast.ops.step import clamp_gd_step, projected_sign_step

__all__ = [
    "BACKENDS",
    "SSIMReference",
    "clamp_gd_step",
    "clip_consistency",
    "has_compiled_ops",
    "has_cuda_kernels",
    "normalize_relevance",
    "projected_sign_step",
    "reference",
    "relevance_accumulate",
    "relevance_directions",
    "ssim",
    "value_checks",
    "value_checks_enabled",
]
