"""Data sets of rendered faces: independent, biased (planted correlations) or imbalanced."""

from __future__ import annotations

from typing import Dict, Iterator, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from vmd_fast.domains.faces import (
    BINARY_ATTRIBUTES,
    CATEGORICAL_ATTRIBUTES,
    CONTINUOUS_ATTRIBUTES,
    Correlation,
    FaceParams,
    attribute_vector,
    render,
    sample_params,
)

__all__ = ["FaceDataset", "make_dataset", "as_correlations"]

CorrelationLike = Union[Correlation, Tuple[str, str, float]]


def as_correlations(correlations: Sequence[CorrelationLike]) -> Tuple[Correlation, ...]:
    """Normalise ``(label, spurious, p)`` tuples and :class:`Correlation` s to a tuple."""
    return tuple(c if isinstance(c, Correlation) else Correlation(*c) for c in correlations)


class FaceDataset(Dataset):
    """A fixed set of faces, rendered on access.

    Each item is a dict with ``image`` (3, H, W) in [0, 1], ``landmarks`` (K, 2),
    ``segmentation`` (H, W), ``attributes`` (A,) (the binary attributes, 0/1) and, when
    the set has a label, ``label``: a float 0/1 for a binary attribute, an int64 class
    for a categorical one, the value for a continuous one. Rendering a batch at once is
    much faster than item by item: iterate :meth:`batches` for training.

    Args:
        params: the faces.
        label: the attribute returned as ``label``, or None.
        size: image side in pixels.
    """

    def __init__(self, params: FaceParams, label: Optional[str] = None, size: int = 64):
        if (
            label is not None
            and label
            not in BINARY_ATTRIBUTES + tuple(CATEGORICAL_ATTRIBUTES) + CONTINUOUS_ATTRIBUTES
        ):
            raise KeyError(f"unknown label attribute {label!r}")
        self.params = params
        self.label = label
        self.size = size

    def __len__(self) -> int:
        return len(self.params)

    def batch(self, index: Union[Tensor, slice, Sequence[int]]) -> Dict[str, Tensor]:
        """Render the faces at ``index`` at once: the item dict with a batch dimension."""
        if not isinstance(index, (Tensor, slice)):
            index = torch.as_tensor(index, dtype=torch.long)
        params = self.params[index]
        out = render(params, self.size)
        item = {
            "image": out.images,
            "landmarks": out.landmarks,
            "segmentation": out.segmentation,
            "attributes": attribute_vector(params, BINARY_ATTRIBUTES),
        }
        if self.label is not None:
            item["label"] = getattr(params, self.label)
        return item

    def __getitem__(self, i: int) -> Dict[str, Tensor]:
        return {key: value[0] for key, value in self.batch(slice(i, i + 1)).items()}

    def __getitems__(self, indices: Sequence[int]):
        """Batched access for :class:`torch.utils.data.DataLoader` (one render per batch)."""
        batch = self.batch(indices)
        return [{key: value[k] for key, value in batch.items()} for k in range(len(indices))]

    def batches(
        self, batch_size: int, shuffle: bool = False, generator: Optional[torch.Generator] = None
    ) -> Iterator[Dict[str, Tensor]]:
        """Yield rendered batches (dicts of batched tensors) covering the set once."""
        order = (
            torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            yield self.batch(order[start : start + batch_size])


def make_dataset(
    n: int,
    seed: int,
    correlations: Sequence[CorrelationLike] = (),
    label: Optional[str] = None,
    imbalance: Optional[float] = None,
    size: int = 64,
) -> FaceDataset:
    r"""A seeded set of ``n`` faces, optionally biased or imbalanced.

    Args:
        n: number of faces.
        seed: the seed of the faces (same seed, same set).
        correlations: planted correlations, :class:`Correlation` or ``(label, spurious, p)``
            with :math:`P(\text{spurious} = \text{label}) = p`.
        label: the attribute returned as each item's ``label``.
        imbalance: :math:`P(\text{label} = 1)` for a binary label, e.g. 0.01 for a 1:99 set.
        size: image side in pixels.

    Returns:
        A :class:`FaceDataset`.

    Example:
        >>> ds = make_dataset(2000, seed=0, label="smiling", imbalance=0.01)
        >>> int(ds.params.smiling.sum())  # about 1% of 2000
        22
        >>> biased = make_dataset(2000, seed=0, label="smiling", correlations=[("smiling", "hat", 0.95)])
        >>> round(float((biased.params.hat == biased.params.smiling).float().mean()), 2)
        0.95
        >>> ds[0]["image"].shape, ds.batch(slice(0, 4))["label"].shape
        (torch.Size([3, 64, 64]), torch.Size([4]))
    """
    priors = None
    if imbalance is not None:
        if label not in BINARY_ATTRIBUTES:
            raise ValueError("imbalance needs a binary label attribute")
        if not 0.0 < imbalance < 1.0:
            raise ValueError(f"imbalance is P(label = 1), in (0, 1); got {imbalance}")
        priors = {label: imbalance}
    generator = torch.Generator().manual_seed(seed)
    params = sample_params(n, generator, correlations=as_correlations(correlations), priors=priors)
    return FaceDataset(params, label=label, size=size)
