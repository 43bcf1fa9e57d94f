"""The thesis's diagnosis metrics, shared by SIA, ZOOM and the training issue.

* flip rate: the fraction of counterfactuals that flip the prediction (thesis 3.4.2);
* flip resistance: the fraction that do not (FR-25 / FR-100 are this after 25 / 100
  optimisation steps, Table 3.3);
* SDAR: the standard deviation of the attribute sensitivities (thesis 2.4.4, population
  form ``sqrt(mean((s_i - mean s)^2))``);
* PSNR of adversaries or counterfactuals against their originals.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence, Union

import torch

Sensitivities = Union[Mapping[str, float], Sequence[float], torch.Tensor]


def flip_rate(flipped: torch.Tensor) -> float:
    """Fraction of ``True`` in a boolean tensor of flips (any shape).

    Example:
        >>> flip_rate(torch.tensor([True, False, True, True]))
        0.75
    """
    if flipped.numel() == 0:
        raise ValueError("flipped must hold at least one counterfactual")
    return float(flipped.float().mean())


def flip_resistance(flipped: torch.Tensor) -> float:
    """``1 - flip_rate``: the fraction of counterfactuals the model withstood.

    Example:
        >>> flip_resistance(torch.tensor([True, False, False, False]))
        0.75
    """
    return 1.0 - flip_rate(flipped)


def _values(sensitivity: Sensitivities) -> torch.Tensor:
    if isinstance(sensitivity, Mapping):
        sensitivity = list(sensitivity.values())
    values = torch.as_tensor(sensitivity, dtype=torch.float64).flatten()
    if values.numel() == 0:
        raise ValueError("sensitivity must hold at least one attribute")
    return values


def sdar(sensitivity: Sensitivities, normalize: bool = False) -> float:
    """Standard Deviation of Attribute Robustness (thesis 2.4.4).

    Args:
        sensitivity: per-attribute sensitivities (a dict attribute -> value, or a sequence).
        normalize: divide by their sum first (the thesis's histograms are shown so).

    Example:
        >>> round(sdar({"smile": 0.1, "hat": 0.3}), 6)
        0.1
    """
    values = _values(sensitivity)
    if normalize:
        total = values.sum()
        values = values / total if total > 0 else values
    return float(((values - values.mean()) ** 2).mean().sqrt())


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, in dB.

    Args:
        x, y: (N, C, H, W) images in ``[0, data_range]``.

    Returns:
        (N,) PSNR; ``inf`` where the images are equal.

    Example:
        >>> x = torch.zeros(1, 1, 4, 4); y = x + 0.1
        >>> psnr(x, y).round()
        tensor([20.])
    """
    if x.shape != y.shape:
        raise ValueError(f"y must have the shape of x {tuple(x.shape)}, got {tuple(y.shape)}")
    mse = ((x.float() - y.float()) ** 2).flatten(1).mean(dim=1)
    return 10 * torch.log10(data_range**2 / mse)


def normalized(sensitivity: Mapping[str, float]) -> dict:
    """Sensitivities divided by their sum (how the thesis draws its histograms).

    Example:
        >>> normalized({"a": 1.0, "b": 3.0})
        {'a': 0.25, 'b': 0.75}
    """
    total = sum(sensitivity.values())
    if total <= 0 or not math.isfinite(total):
        return {key: 0.0 for key in sensitivity}
    return {key: value / total for key, value in sensitivity.items()}
