"""What SIA and ZOOM share: target adapters, the diagnosis metrics, the result and report.

Example:
    >>> from vmd_fast.diagnose import adapter_for, flip_rate
    >>> import torch
    >>> adapter = adapter_for(torch.nn.Linear(3, 1), task="binary")
    >>> ref = adapter.reference(torch.tensor([[1.0], [-1.0]]))
    >>> flip_rate(adapter.flipped(torch.tensor([[-1.0], [-2.0]]), ref))
    0.5
"""

from vmd_fast.diagnose.metrics import decoupling, decoupling_summary, flip_rate, flip_resistance, normalized, psnr, sdar
from vmd_fast.diagnose.result import DiagnosisResult
from vmd_fast.diagnose.targets import (
    ADAPTERS,
    TASKS,
    AttributesAdapter,
    BinaryAdapter,
    KeypointAdapter,
    MultiClassAdapter,
    SegmentationAdapter,
    TargetAdapter,
    adapter_for,
    repeat_reference,
    soft_argmax,
    target_label,
    target_name,
)

__all__ = [
    "ADAPTERS",
    "TASKS",
    "AttributesAdapter",
    "BinaryAdapter",
    "DiagnosisResult",
    "KeypointAdapter",
    "MultiClassAdapter",
    "SegmentationAdapter",
    "TargetAdapter",
    "adapter_for",
    "decoupling",
    "decoupling_summary",
    "flip_rate",
    "flip_resistance",
    "normalized",
    "psnr",
    "repeat_reference",
    "sdar",
    "soft_argmax",
    "target_label",
    "target_name",
]
