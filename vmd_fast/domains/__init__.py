"""The embedded synthetic face world: a procedural renderer with ground truth, and data sets.

See ``docs/world.md``. The main entry points::

    params = sample_params(16, torch.Generator().manual_seed(0))
    out = render(params)                       # images, landmarks, segmentation
    smiling = render(params.replace(smiling=1.0)).images   # the same faces, smiling
"""

from vmd_fast.domains.datasets import FaceDataset, as_correlations, make_dataset
from vmd_fast.domains.faces import (
    ATTRIBUTES,
    BINARY_ATTRIBUTES,
    CATEGORICAL_ATTRIBUTES,
    CONTINUOUS_ATTRIBUTES,
    EDITOR_ATTRIBUTES,
    LANDMARK_NAMES,
    PARAM_DIM,
    PARAM_FIELDS,
    PART_NAMES,
    Correlation,
    FaceParams,
    Render,
    attribute_vector,
    describe,
    params_from_uniform,
    render,
    sample_params,
)
from vmd_fast.domains.grid import make_grid, save_grid

__all__ = [
    "ATTRIBUTES",
    "BINARY_ATTRIBUTES",
    "CATEGORICAL_ATTRIBUTES",
    "CONTINUOUS_ATTRIBUTES",
    "EDITOR_ATTRIBUTES",
    "LANDMARK_NAMES",
    "PARAM_DIM",
    "PARAM_FIELDS",
    "PART_NAMES",
    "Correlation",
    "FaceDataset",
    "FaceParams",
    "Render",
    "as_correlations",
    "attribute_vector",
    "describe",
    "make_dataset",
    "make_grid",
    "params_from_uniform",
    "render",
    "sample_params",
    "save_grid",
]
