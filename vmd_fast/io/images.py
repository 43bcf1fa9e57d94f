"""Image folders in and out: the inputs of ``vmd-fast attack`` and its adversarial PNGs.

Images are read with Pillow as RGB and become float tensors in [0, 1] of shape
(N, 3, H, W); every image of a folder must have the same size unless ``size`` resizes
them. Writing rounds to 8 bits, so what is saved is what a viewer shows.
"""

from __future__ import annotations

import csv
import os
from typing import List, Optional, Sequence, Tuple

import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def list_images(folder: str) -> List[str]:
    """The image files of ``folder`` (not recursive), sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder!r} is not a directory")
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_SUFFIXES))


def load_image_folder(folder: str, size: Optional[int] = None, limit: Optional[int] = None) -> Tuple[torch.Tensor, List[str]]:
    """The images of a folder as one batch.

    Args:
        folder: a directory of PNG / JPEG / BMP / WebP files.
        size: resize every image to ``size x size`` (bilinear); ``None`` keeps the size,
            which must then be the same for all.
        limit: read at most this many (the first by name).

    Returns:
        ``(images, names)``: (N, 3, H, W) float in [0, 1], and the N file names.

    Example:
        >>> import tempfile
        >>> from PIL import Image
        >>> d = tempfile.mkdtemp()
        >>> Image.new("RGB", (4, 6), (255, 0, 0)).save(os.path.join(d, "a.png"))
        >>> x, names = load_image_folder(d)
        >>> tuple(x.shape), names, float(x[0, 0].mean())
        ((1, 3, 6, 4), ['a.png'], 1.0)
    """
    from PIL import Image

    names = list_images(folder)[:limit]
    if not names:
        raise FileNotFoundError(f"{folder!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    images = []
    for name in names:
        with Image.open(os.path.join(folder, name)) as image:
            image = image.convert("RGB")
            if size is not None:
                image = image.resize((size, size), Image.BILINEAR)
            array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
            images.append(array.reshape(image.height, image.width, 3).permute(2, 0, 1))
    shapes = {tuple(x.shape) for x in images}
    if len(shapes) > 1:
        raise ValueError(f"the images of {folder!r} have different sizes {sorted(shapes)}; pass a size to resize them")
    return torch.stack(images).float() / 255, names


def save_images(images: torch.Tensor, names: Sequence[str], folder: str) -> List[str]:
    """Write (N, 3, H, W) images in [0, 1] as 8-bit PNGs ``folder/<stem>.png``; returns the paths."""
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    array = (images.detach().float().clamp(0, 1).cpu() * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for name, pixels in zip(names, array):
        path = os.path.join(folder, os.path.splitext(os.path.basename(name))[0] + ".png")
        Image.fromarray(pixels).save(path)
        paths.append(path)
    return paths


def read_attribute_table(path: str, names: Sequence[str], columns: Sequence[str]) -> torch.Tensor:
    """Per-image attributes from a CSV with a ``file`` column and one column per attribute.

    Args:
        path: the CSV file.
        names: the image files, in batch order (each must have a row).
        columns: the attributes wanted, in order (the editor's attributes).

    Returns:
        (N, A) float tensor.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"attribute table {path!r} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = set(reader.fieldnames or ())
        if "file" not in header:
            raise ValueError(f"{path!r} needs a header 'file,{','.join(columns)}'")
        rows = {row["file"]: row for row in reader}
    missing_columns = [c for c in columns if c not in header]
    if missing_columns:
        raise ValueError(f"{path!r} lacks the attribute columns {missing_columns}")
    missing_rows = [n for n in names if n not in rows]
    if missing_rows:
        raise ValueError(f"{path!r} has no row for the images {missing_rows[:5]}")
    return torch.tensor([[float(rows[n][c]) for c in columns] for n in names])
