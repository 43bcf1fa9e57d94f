"""Metrics the zoo recipes measure on fresh renders (shared by all target recipes)."""

from __future__ import annotations

from typing import Dict, Sequence

import torch
from torch import Tensor

__all__ = [
    "binary_accuracy",
    "multiclass_accuracy",
    "group_accuracies",
    "landmark_error",
    "confusion_matrix",
    "intersection_over_union",
]


def binary_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Accuracy of ``logits > 0`` against 0/1 ``labels``.

    Args:
        logits: (N,) or (N, 1).
        labels: (N,) 0/1.

    Example:
        >>> binary_accuracy(torch.tensor([[2.0], [-1.0], [0.5]]), torch.tensor([1.0, 1.0, 1.0]))
        0.6666666865348816
    """
    return float(((logits.reshape(-1) > 0).float() == labels.reshape(-1).float()).float().mean())


def multiclass_accuracy(logits: Tensor, labels: Tensor) -> float:
    """Accuracy of ``argmax(logits)``; logits (N, K), labels (N,) class indices.

    Example:
        >>> multiclass_accuracy(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), torch.tensor([1, 1]))
        0.5
    """
    return float((logits.argmax(dim=1) == labels).float().mean())


def group_accuracies(correct: Tensor, label: Tensor, spurious: Tensor) -> Dict[str, float]:
    """Accuracy in each (label, spurious) group of a planted-bias evaluation.

    A group is *aligned* when the spurious attribute agrees with the label (as in most of
    the biased training set) and *conflicting* otherwise.

    Args:
        correct: (N,) bool, whether each prediction is right.
        label: (N,) 0/1 label attribute.
        spurious: (N,) 0/1 spurious attribute.

    Returns:
        ``{"label=l,spurious=s": accuracy}`` for the four groups, plus
        ``aligned_accuracy`` and ``conflicting_accuracy`` (means over their two groups),
        ``bias_gap`` (aligned minus conflicting) and ``worst_group_accuracy``.

    Example:
        >>> c = torch.tensor([True, True, False, True])
        >>> g = group_accuracies(c, torch.tensor([1, 0, 1, 0]), torch.tensor([1, 0, 0, 1]))
        >>> g["worst_group_accuracy"], g["bias_gap"]
        (0.0, 0.5)
    """
    correct = correct.float()
    out: Dict[str, float] = {}
    for l in (0, 1):
        for s in (0, 1):
            mask = (label.round() == l) & (spurious.round() == s)
            out[f"label={l},spurious={s}"] = (
                float(correct[mask].mean()) if mask.any() else float("nan")
            )
    aligned = (out["label=0,spurious=0"] + out["label=1,spurious=1"]) / 2
    conflicting = (out["label=0,spurious=1"] + out["label=1,spurious=0"]) / 2
    out["aligned_accuracy"] = aligned
    out["conflicting_accuracy"] = conflicting
    out["bias_gap"] = aligned - conflicting
    out["worst_group_accuracy"] = min(
        out[f"label={l},spurious={s}"] for l in (0, 1) for s in (0, 1)
    )
    return out


def landmark_error(predicted: Tensor, target: Tensor) -> Tensor:
    """Euclidean distance in pixels between predicted and true landmarks.

    Args:
        predicted: (N, K, 2).
        target: (N, K, 2).

    Returns:
        (N, K) distances.

    Example:
        >>> landmark_error(torch.zeros(1, 1, 2), torch.tensor([[[3.0, 4.0]]]))
        tensor([[5.]])
    """
    return (predicted - target).norm(dim=-1)


def confusion_matrix(predicted: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(P, P) counts, rows the true class, columns the predicted one.

    Args:
        predicted: (N, H, W) or any shape of class indices.
        target: same shape.
        num_classes: P.

    Example:
        >>> confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1]), 2)
        tensor([[1, 1],
                [0, 1]])
    """
    index = target.reshape(-1).long() * num_classes + predicted.reshape(-1).long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def intersection_over_union(confusion: Tensor, names: Sequence[str]) -> Dict[str, float]:
    """Per-class IoU over a whole evaluation set, and ``mIoU`` their mean.

    Classes absent from both the predictions and the targets are left out of the mean.

    Example:
        >>> iou = intersection_over_union(torch.tensor([[1, 1], [0, 1]]), ["a", "b"])
        >>> iou["a"], iou["b"], iou["mIoU"]
        (0.5, 0.5, 0.5)
    """
    confusion = confusion.double()
    tp = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - tp
    out = {name: float(tp[k] / union[k]) for k, name in enumerate(names) if union[k] > 0}
    out["mIoU"] = sum(out.values()) / len(out)
    return out
