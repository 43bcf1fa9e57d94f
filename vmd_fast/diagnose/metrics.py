"""The thesis's diagnosis metrics, shared by SIA, ZOOM and the training issue.

* flip rate: the fraction of counterfactuals that flip the prediction (thesis 3.4.2);
* flip resistance: the fraction that do not (FR-25 / FR-100 are this after 25 / 100
  optimisation steps, Table 3.3);
* SDAR: the standard deviation of the attribute sensitivities (thesis 2.4.4, population
  form ``sqrt(mean((s_i - mean s)^2))``);
* PSNR of adversaries or counterfactuals against their originals;
* decoupling: how much an annotator's score of every attribute moves when one attribute
  is edited (thesis 3.4.2, "Measuring disentanglement of attributes", Fig. 3.6).
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


def decoupling(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """The attribute-change matrix of single-attribute edits (thesis Fig. 3.6).

    Entry ``(i, j)`` is ``E_x |score_j(x_hat_i) - score_j(x)|``: how much an annotator's
    score of attribute ``j`` moved when the counterfactual edited attribute ``i``. Edits
    that change only what they name give a large diagonal and a small rest.

    Args:
        original: (N, B) annotator scores of the original images.
        edited: (N, A, B) scores of each image's counterfactual along each of A attributes.

    Returns:
        (A, B) mean absolute score changes (float32).

    Example:
        >>> x = torch.tensor([[0.1, 0.8]])
        >>> x_hat = torch.tensor([[[0.9, 0.8], [0.1, 0.6]]])
        >>> decoupling(x, x_hat)
        tensor([[0.8000, 0.0000],
                [0.0000, 0.2000]])
    """
    if original.dim() != 2:
        raise ValueError(f"original must have shape (N, B), got {tuple(original.shape)}")
    n, b = original.shape
    if edited.dim() != 3 or edited.shape[0] != n or edited.shape[2] != b:
        raise ValueError(f"edited must have shape ({n}, A, {b}) to match original, got {tuple(edited.shape)}")
    if edited.device != original.device:
        raise ValueError(f"edited must be on the device of original ({original.device}), got {edited.device}")
    if n == 0:
        raise ValueError("original holds no images")
    for name, value in (("original", original), ("edited", edited)):
        if not value.is_floating_point() or not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name} must hold finite floating-point scores")
    return (edited.float() - original.float()[:, None]).abs().mean(dim=0)


def decoupling_summary(matrix: torch.Tensor, edited: Sequence[str], annotated: Sequence[str]) -> dict:
    """The JSON-able record of a :func:`decoupling` matrix.

    ``diagonal`` is the mean change of the attribute that was edited and ``off_diagonal``
    the mean change of the others, over the edited attributes the annotator also scores
    (matched by name); both are ``None`` when no name matches.

    Example:
        >>> m = torch.tensor([[0.8, 0.1], [0.3, 0.4]])
        >>> r = decoupling_summary(m, ["hat", "beard"], ["hat", "beard"])
        >>> round(r["diagonal"], 3), round(r["off_diagonal"], 3)
        (0.6, 0.2)
    """
    edited, annotated = list(edited), list(annotated)
    if tuple(matrix.shape) != (len(edited), len(annotated)):
        raise ValueError(f"matrix must have shape ({len(edited)}, {len(annotated)}), got {tuple(matrix.shape)}")
    rows = [(i, annotated.index(name)) for i, name in enumerate(edited) if name in annotated]
    diagonal = off = None
    if rows:
        on = [float(matrix[i, j]) for i, j in rows]
        rest = [float(matrix[i, k]) for i, j in rows for k in range(len(annotated)) if k != j]
        diagonal = sum(on) / len(on)
        off = sum(rest) / len(rest) if rest else None
    return {
        "edited": edited,
        "annotated": annotated,
        "matrix": [[round(float(v), 6) for v in row] for row in matrix],
        "diagonal": diagonal,
        "off_diagonal": off,
    }
