"""Save a batch of images as one PNG grid, to look at the faces."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Union

import torch
from PIL import Image
from torch import Tensor

__all__ = ["make_grid", "save_grid"]

logger = logging.getLogger(__name__)


def make_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images into one image, row by row.

    Args:
        images: (N, 3, H, W) or (N, 1, H, W) values in [0, 1].
        nrow: images per row.
        padding: pixels between images.
        pad_value: value of the padding.

    Returns:
        (3|1, rows * (H + padding) + padding, nrow * (W + padding) + padding) tensor.

    Example:
        >>> make_grid(torch.zeros(5, 3, 4, 4), nrow=4, padding=1).shape
        torch.Size([3, 11, 21])
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got {tuple(images.shape)}")
    n, c, h, w = images.shape
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = images.new_full(
        (c, rows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value
    )
    for k in range(n):
        r, q = divmod(k, ncol)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top : top + h, left : left + w] = images[k]
    return grid


def save_grid(
    images: Tensor, path: Union[str, Path], nrow: int = 8, padding: int = 2, scale: int = 1
) -> Path:
    """Save images as a PNG grid.

    Args:
        images: (N, 3, H, W) values in [0, 1].
        path: where to write the PNG (folders are created).
        nrow: images per row.
        padding: pixels between images.
        scale: integer upscaling (nearest) of the saved grid, to look at small images.

    Returns:
        The path written.

    Example:
        >>> import tempfile, os
        >>> out = save_grid(torch.rand(4, 3, 8, 8), os.path.join(tempfile.mkdtemp(), "g.png"), nrow=2)
        >>> out.suffix
        '.png'
    """
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding)
    if scale > 1:
        grid = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    array = (grid * 255).round().to(torch.uint8).permute(1, 2, 0).squeeze(-1).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    logger.info("saved a grid of %d images to %s", images.shape[0], path)
    return path
