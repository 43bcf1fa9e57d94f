r"""A seeded, vectorised procedural renderer of synthetic 64x64 faces with ground truth.

Every random choice of a face is one column of a uniform code :math:`u \in [0, 1)^{D}`
(``D = PARAM_DIM``): :func:`params_from_uniform` maps ``u`` to :class:`FaceParams`
deterministically, :func:`sample_params` draws ``u`` from a :class:`torch.Generator`, and
:func:`render` draws the faces of a batch at once with smooth signed-distance masks (every
edge is antialiased over about one pixel, so images vary smoothly with the geometry).

Attributes are independent by default: each one reads its own column of ``u``. A planted
correlation (:class:`Correlation`) or a prior (``priors``) changes that on purpose, to build
the biased and imbalanced training sets of :mod:`vmd_fast.domains.datasets`.

Geometry uses normalised image coordinates :math:`(x, y) \in [-1, 1]^2` (x to the right,
y down); landmarks are returned in pixel coordinates, the centre of pixel ``(i, j)`` being
``(x, y) = (j, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace as dataclass_replace
from typing import Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "BINARY_ATTRIBUTES",
    "CATEGORICAL_ATTRIBUTES",
    "CONTINUOUS_ATTRIBUTES",
    "ATTRIBUTES",
    "EDITOR_ATTRIBUTES",
    "LANDMARK_NAMES",
    "PART_NAMES",
    "PARAM_FIELDS",
    "PARAM_DIM",
    "FaceParams",
    "Correlation",
    "Render",
    "params_from_uniform",
    "sample_params",
    "render",
    "attribute_vector",
    "describe",
]

BINARY_ATTRIBUTES: Tuple[str, ...] = (
    "eyeglasses",
    "smiling",
    "mouth_open",
    "beard",
    "moustache",
    "bangs",
    "lipstick",
    "hat",
    "earrings",
    "heavy_makeup",
    "grey_hair",  # the age cue: grey temples and wrinkles
    "male",  # a gender-like cue: short hair, thick straight brows, square jaw
)
"""Binary attributes, stored as float 0/1 tensors of shape (N,)."""

CATEGORICAL_ATTRIBUTES: Dict[str, Tuple[str, ...]] = {
    "hair_color": ("black", "brown", "blond", "red"),
    "eye_color": ("brown", "blue", "green"),
    "background": ("grey", "blue", "green", "yellow"),
}
"""Categorical attributes and their class names, stored as int64 class indices (N,)."""

CONTINUOUS_ATTRIBUTES: Tuple[str, ...] = (
    "skin_tone",  # 0 light .. 1 dark
    "yaw",  # head pose: 0 turned to the image's left, 0.5 frontal, 1 turned right
    "lighting",  # direction of the key light: 0 from the left, 1 from the right
)
"""Continuous attributes, float tensors (N,) with values in [0, 1]."""

ATTRIBUTES: Tuple[str, ...] = (
    BINARY_ATTRIBUTES + tuple(CATEGORICAL_ATTRIBUTES) + CONTINUOUS_ATTRIBUTES
)
"""Every attribute name, in the order of the fields of :class:`FaceParams`."""

EDITOR_ATTRIBUTES: Tuple[str, ...] = BINARY_ATTRIBUTES
"""The attributes an attribute editor conditions on (the columns of its vector ``a``)."""

LANDMARK_NAMES: Tuple[str, ...] = (
    "left_eye",  # as seen in the image
    "right_eye",
    "nose_tip",
    "mouth_left",
    "mouth_right",
    "chin",
)
"""Landmarks of :attr:`Render.landmarks`, in order."""

PART_NAMES: Tuple[str, ...] = (
    "background",
    "skin",
    "hair",
    "eyes",
    "brows",
    "nose",
    "mouth",
    "facial_hair",
    "glasses",
    "hat",
    "clothes",
    "earrings",
)
"""Classes of :attr:`Render.segmentation`, in order of their index."""

_PART = {name: index for index, name in enumerate(PART_NAMES)}


@dataclass
class FaceParams:
    """A batch of faces: attributes and identity (nuisance) parameters, each a tensor (N,).

    Binary attributes are float 0/1, categorical ones int64 class indices, continuous
    attributes and every identity parameter float in [0, 1] (the renderer maps them to
    their ranges). Build one with :func:`sample_params` or :func:`params_from_uniform`;
    :meth:`replace` gives the counterfactual of the same faces with some attributes set.

    Example:
        >>> p = sample_params(4, generator=torch.Generator().manual_seed(0))
        >>> len(p), p.smiling.shape, p.hair_color.dtype
        (4, torch.Size([4]), torch.int64)
        >>> q = p.replace(smiling=1.0)
        >>> bool((q.smiling == 1).all()), bool(torch.equal(q.face_width, p.face_width))
        (True, True)
    """

    # binary attributes
    eyeglasses: Tensor
    smiling: Tensor
    mouth_open: Tensor
    beard: Tensor
    moustache: Tensor
    bangs: Tensor
    lipstick: Tensor
    hat: Tensor
    earrings: Tensor
    heavy_makeup: Tensor
    grey_hair: Tensor
    male: Tensor
    # categorical attributes
    hair_color: Tensor
    eye_color: Tensor
    background: Tensor
    # continuous attributes
    skin_tone: Tensor
    yaw: Tensor
    lighting: Tensor
    # identity and nuisance, each in [0, 1]
    face_x: Tensor
    face_y: Tensor
    face_width: Tensor
    face_height: Tensor
    eye_height: Tensor
    eye_spacing: Tensor
    eye_size: Tensor
    brow_height: Tensor
    nose_length: Tensor
    mouth_width: Tensor
    mouth_height: Tensor
    hairline: Tensor
    hair_length: Tensor
    hair_shade: Tensor
    skin_shade: Tensor
    lip_shade: Tensor
    hat_hue: Tensor
    shirt_hue: Tensor
    glasses_shape: Tensor
    glasses_shade: Tensor
    earring_shade: Tensor
    makeup_hue: Tensor
    light_strength: Tensor
    background_shade: Tensor
    hair_texture: Tensor

    def __len__(self) -> int:
        return self.smiling.shape[0]

    def __getitem__(self, index) -> "FaceParams":
        """The faces selected by ``index`` (an int, slice, bool mask or index tensor)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return FaceParams(**{name: getattr(self, name)[index] for name in PARAM_FIELDS})

    @property
    def device(self) -> torch.device:
        return self.smiling.device

    def to(self, device) -> "FaceParams":
        return FaceParams(**{name: getattr(self, name).to(device) for name in PARAM_FIELDS})

    def attributes(self) -> Dict[str, Tensor]:
        """Every attribute (binary, categorical, continuous) by name, each (N,)."""
        return {name: getattr(self, name) for name in ATTRIBUTES}

    def replace(self, **values) -> "FaceParams":
        """The same faces with some fields set: the counterfactual of each face.

        Args:
            **values: field name -> a number or a tensor broadcastable to (N,); categorical
                attributes also accept a class name (``hair_color="blond"``).

        Returns:
            A new :class:`FaceParams`; the fields not named are shared with ``self``.
        """
        new = {}
        for name, value in values.items():
            if name not in PARAM_FIELDS:
                raise KeyError(f"unknown face parameter {name!r}; expected one of {PARAM_FIELDS}")
            old = getattr(self, name)
            if isinstance(value, str):
                classes = CATEGORICAL_ATTRIBUTES.get(name)
                if classes is None or value not in classes:
                    raise ValueError(f"{value!r} is not a class of {name!r}")
                value = classes.index(value)
            new[name] = torch.as_tensor(value, device=old.device).to(old.dtype).expand_as(old)
        return dataclass_replace(self, **new)

    def replace_from_vector(
        self, vector: Tensor, names: Sequence[str] = EDITOR_ATTRIBUTES
    ) -> "FaceParams":
        """Set attributes from an attribute vector, the inverse of :func:`attribute_vector`.

        Args:
            vector: (N, A) values in [0, 1], one column per name.
            names: the attribute of each column; binary attributes are thresholded at 0.5,
                continuous ones are clamped to [0, 1], ``"name=class"`` columns of a
                categorical attribute set the class of the largest column.

        Returns:
            The edited :class:`FaceParams`.
        """
        if vector.shape != (len(self), len(names)):
            raise ValueError(
                f"vector must be (N, A) = {(len(self), len(names))}, got {tuple(vector.shape)}"
            )
        vector = vector.to(self.device)
        values, groups = {}, {}
        for column, name in enumerate(names):
            if "=" in name:
                attribute, cls = name.split("=", 1)
                groups.setdefault(attribute, []).append(
                    (CATEGORICAL_ATTRIBUTES[attribute].index(cls), column)
                )
            elif name in BINARY_ATTRIBUTES:
                values[name] = (vector[:, column] >= 0.5).float()
            elif name in CONTINUOUS_ATTRIBUTES:
                values[name] = vector[:, column].clamp(0, 1).float()
            else:
                raise KeyError(f"{name!r} is not a binary, continuous or 'name=class' attribute")
        for attribute, members in groups.items():
            classes = torch.tensor([cls for cls, _ in members], device=self.device)
            best = vector[:, [column for _, column in members]].argmax(dim=1)
            values[attribute] = classes[best]
        return self.replace(**values)

    @staticmethod
    def cat(batches: Sequence["FaceParams"]) -> "FaceParams":
        """Concatenate batches of faces along the batch dimension."""
        return FaceParams(
            **{name: torch.cat([getattr(b, name) for b in batches]) for name in PARAM_FIELDS}
        )


PARAM_FIELDS: Tuple[str, ...] = tuple(f.name for f in fields(FaceParams))
"""The fields of :class:`FaceParams`, in the order of the columns of ``u``."""

PARAM_DIM: int = len(PARAM_FIELDS)
"""Number of columns of the uniform code ``u``."""

_COLUMN = {name: index for index, name in enumerate(PARAM_FIELDS)}


@dataclass(frozen=True)
class Correlation:
    r"""A planted dependence between two binary attributes.

    ``spurious`` copies ``label`` with probability ``p`` and is its negation otherwise:
    :math:`P(\text{spurious} = \text{label}) = p`, so ``Correlation("smiling", "hat", 0.95)``
    gives :math:`P(\text{hat} \mid \text{smiling}) = 0.95` and
    :math:`P(\text{hat} \mid \neg\text{smiling}) = 0.05`. ``p = 0.5`` is independence.
    """

    label: str
    spurious: str
    p: float

    def __post_init__(self):
        for name in (self.label, self.spurious):
            if name not in BINARY_ATTRIBUTES:
                raise ValueError(f"correlations join binary attributes; {name!r} is not one")
        if self.label == self.spurious:
            raise ValueError("a correlation needs two different attributes")
        if not 0.0 <= self.p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {self.p}")


def params_from_uniform(
    u: Tensor,
    correlations: Optional[Sequence[Correlation]] = None,
    priors: Optional[Mapping[str, float]] = None,
) -> FaceParams:
    r"""Map a uniform code to face parameters, deterministically.

    Column ``k`` of ``u`` decides field ``PARAM_FIELDS[k]``: a binary attribute is
    ``u < prior`` (prior 0.5 unless ``priors`` says otherwise), a categorical one with
    :math:`K` classes is :math:`\lfloor K u \rfloor`, every other field is ``u`` itself.
    A :class:`Correlation` then sets its spurious attribute from its label attribute,
    flipping it where the spurious column of ``u`` is :math:`\ge p`.

    Args:
        u: (N, PARAM_DIM) values in [0, 1), e.g. ``torch.special.ndtr(z)`` for a
            standard normal ``z``.
        correlations: planted correlations, applied in order (:class:`Correlation` s or
            ``(label, spurious, p)`` tuples).
        priors: binary attribute -> :math:`P(\text{attribute} = 1)`, for imbalanced sets.

    Returns:
        :class:`FaceParams` of N faces on ``u``'s device.

    Example:
        >>> u = torch.full((2, PARAM_DIM), 0.25)
        >>> p = params_from_uniform(u)
        >>> p.smiling.tolist(), p.hair_color.tolist(), p.yaw.tolist()
        ([1.0, 1.0], [1, 1], [0.25, 0.25])
    """
    if u.dim() != 2 or u.shape[1] != PARAM_DIM:
        raise ValueError(f"u must be (N, {PARAM_DIM}), got {tuple(u.shape)}")
    u = u.float()
    priors = dict(priors or {})
    for name in priors:
        if name not in BINARY_ATTRIBUTES:
            raise ValueError(f"priors apply to binary attributes; {name!r} is not one")
    values = {}
    for name, column in _COLUMN.items():
        v = u[:, column]
        if name in BINARY_ATTRIBUTES:
            values[name] = (v < priors.get(name, 0.5)).float()
        elif name in CATEGORICAL_ATTRIBUTES:
            k = len(CATEGORICAL_ATTRIBUTES[name])
            values[name] = (v * k).long().clamp_(0, k - 1)
        else:
            values[name] = v.clamp(0.0, 1.0)
    for c in correlations or ():
        c = c if isinstance(c, Correlation) else Correlation(*c)
        keep = u[:, _COLUMN[c.spurious]] < c.p
        label = values[c.label]
        values[c.spurious] = torch.where(keep, label, 1.0 - label)
    return FaceParams(**values)


def sample_params(
    n: int,
    generator: Optional[torch.Generator] = None,
    correlations: Optional[Sequence[Correlation]] = None,
    device: Union[str, torch.device] = "cpu",
    priors: Optional[Mapping[str, float]] = None,
) -> FaceParams:
    """Draw ``n`` random faces: ``u ~ U[0, 1)^(n, PARAM_DIM)`` then :func:`params_from_uniform`.

    Args:
        n: number of faces.
        generator: the source of randomness (same seed, same faces); ``u`` is drawn on
            its device, then moved to ``device``.
        correlations: planted correlations (:class:`Correlation`), e.g. a biased set.
        device: where the parameters live.
        priors: binary attribute -> probability of 1 (imbalance).

    Returns:
        :class:`FaceParams` of ``n`` faces.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> p = sample_params(10000, g, correlations=[Correlation("smiling", "hat", 0.95)])
        >>> float(p.hat[p.smiling == 1].mean()) > 0.94, float(p.hat[p.smiling == 0].mean()) < 0.06
        (True, True)
    """
    gen_device = generator.device if generator is not None else "cpu"
    u = torch.rand(n, PARAM_DIM, generator=generator, device=gen_device)
    return params_from_uniform(u.to(device), correlations, priors)


def attribute_vector(params: FaceParams, names: Sequence[str] = EDITOR_ATTRIBUTES) -> Tensor:
    """The attributes of each face as one vector in [0, 1].

    Args:
        params: N faces.
        names: columns: binary attributes (0/1), continuous ones (their value) or
            ``"name=class"`` for the one-hot column of a categorical attribute.

    Returns:
        (N, A) float tensor, ``A = len(names)``.

    Example:
        >>> p = sample_params(3, torch.Generator().manual_seed(0))
        >>> a = attribute_vector(p)
        >>> a.shape, bool(torch.equal(a[:, 1], p.smiling))
        (torch.Size([3, 12]), True)
        >>> bool(torch.equal(attribute_vector(p.replace_from_vector(a)), a))
        True
    """
    columns = []
    for name in names:
        if "=" in name:
            attribute, cls = name.split("=", 1)
            index = CATEGORICAL_ATTRIBUTES[attribute].index(cls)
            columns.append((getattr(params, attribute) == index).float())
        elif name in BINARY_ATTRIBUTES or name in CONTINUOUS_ATTRIBUTES:
            columns.append(getattr(params, name).float())
        else:
            raise KeyError(f"{name!r} is not a binary, continuous or 'name=class' attribute")
    return torch.stack(columns, dim=1)


def describe(params: FaceParams, i: int) -> Dict[str, Union[bool, str, float]]:
    """The attributes of the ``i``-th face by name, for captions and reports.

    Example:
        >>> d = describe(sample_params(2, torch.Generator().manual_seed(0)), 0)
        >>> sorted(d)[:3], type(d["hair_color"]).__name__, type(d["smiling"]).__name__
        (['background', 'bangs', 'beard'], 'str', 'bool')
    """
    out: Dict[str, Union[bool, str, float]] = {}
    for name in BINARY_ATTRIBUTES:
        out[name] = bool(getattr(params, name)[i] > 0.5)
    for name, classes in CATEGORICAL_ATTRIBUTES.items():
        out[name] = classes[int(getattr(params, name)[i])]
    for name in CONTINUOUS_ATTRIBUTES:
        out[name] = float(getattr(params, name)[i])
    return out


@dataclass
class Render:
    """What :func:`render` returns.

    Attributes:
        images: (N, 3, H, W) float32 RGB in [0, 1].
        landmarks: (N, K, 2) float32 pixel coordinates (x, y) of :data:`LANDMARK_NAMES`.
        segmentation: (N, H, W) int64 indices into :data:`PART_NAMES`.
    """

    images: Tensor
    landmarks: Tensor
    segmentation: Tensor


# Colours (RGB in [0, 1]) of the classes and the ends of the continuous ranges.
_HAIR_RGB = ((0.09, 0.07, 0.07), (0.42, 0.25, 0.12), (0.95, 0.82, 0.42), (0.80, 0.30, 0.10))
_GREY_HAIR_RGB = (0.80, 0.80, 0.82)
_EYE_RGB = ((0.36, 0.20, 0.08), (0.20, 0.50, 0.95), (0.20, 0.68, 0.28))
_BACKGROUND_RGB = ((0.62, 0.62, 0.64), (0.45, 0.62, 0.90), (0.48, 0.78, 0.50), (0.93, 0.85, 0.48))
_SKIN_LIGHT, _SKIN_DARK = (0.98, 0.82, 0.70), (0.42, 0.27, 0.18)
_LIPSTICK_RGB = (0.85, 0.06, 0.20)
_EARRING_RGB = ((1.0, 0.85, 0.15), (0.92, 0.92, 1.0))
_MAX_YAW = 0.5  # radians at yaw = 0 or 1
_SMILE_LIFT = 0.10  # how far a smile raises the mouth corners (normalised units)
_EDGE_PX = 1.5  # width of the antialiasing ramp of every edge, in pixels


def _rgb(values, index: Tensor) -> Tensor:
    """(N,) class indices -> (N, 3, 1, 1) colours from a table."""
    table = torch.tensor(values, dtype=torch.float32, device=index.device)
    return table[index].view(-1, 3, 1, 1)


def _hue_rgb(hue: Tensor, saturation: float, value: float) -> Tensor:
    """(N,) hues in [0, 1] -> (N, 3, 1, 1) saturated colours (HSV with fixed S, V)."""
    k = (hue.view(-1, 1) * 6 + torch.tensor([5.0, 3.0, 1.0], device=hue.device)) % 6
    rgb = value - value * saturation * (torch.minimum(k, 4 - k).clamp(0, 1))
    return rgb.view(-1, 3, 1, 1)


def _col(t: Tensor) -> Tensor:
    """(N,) -> (N, 1, 1), to broadcast a per-face scalar over the image."""
    return t.view(-1, 1, 1)


class _Canvas:
    """The image, its part labels and its foreground coverage, painted layer by layer."""

    def __init__(self, background: Tensor, size: int):
        self.image = background.contiguous()  # (N, 3, H, W), painted in place
        n = background.shape[0]
        self.parts = torch.zeros(n, size, size, dtype=torch.uint8, device=background.device)
        self.scale = size / 2.0  # pixels per normalised unit
        self.cover = torch.zeros(n, size, size, device=background.device)

    def coverage(self, sdf: Tensor) -> Tensor:
        """Antialiased coverage of the inside (sdf < 0): a linear ramp 1.5 px wide."""
        return (0.5 - sdf * (self.scale / _EDGE_PX)).clamp_(0.0, 1.0)

    def paint(self, alpha: Tensor, color: Tensor, part: Optional[str] = None, silhouette=False):
        """Blend ``color`` (N, 3, 1|H, 1|W) over the image with ``alpha`` (N, H, W)."""
        self.image.lerp_(color.expand_as(self.image), alpha.unsqueeze(1))
        if part is not None:
            self.parts.masked_fill_(alpha > 0.5, _PART[part])
        if silhouette:
            self.cover = torch.maximum(self.cover, alpha)


def _ellipse(x: Tensor, y: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Signed distance (first order, exact on the boundary) to an axis-aligned ellipse.

    ``x``, ``y`` are coordinates relative to its centre, ``a``, ``b`` its half axes.
    """
    qx, qy = x / a, y / b
    f = qx * qx + qy * qy - 1.0
    gx, gy = qx / a, qy / b
    grad = 2.0 * torch.sqrt(gx * gx + gy * gy + 1e-6)
    return f / grad


def _box(x: Tensor, y: Tensor, a: Tensor, b: Tensor, r) -> Tensor:
    """Signed distance to a box of half sizes (a, b) with corner radius r."""
    qx = x.abs() - a + r
    qy = y.abs() - b + r
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    return outside + torch.maximum(qx, qy).clamp(max=0) - r


def _band(y: Tensor, top: Tensor, bottom: Tensor) -> Tensor:
    """Signed distance (vertical) to the band top <= y <= bottom."""
    return torch.maximum(top - y, y - bottom)


def render(params: FaceParams, size: int = 64) -> Render:
    """Render faces, with their landmarks and part segmentation.

    Args:
        params: N faces (:func:`sample_params`).
        size: image side in pixels (the faces are designed at 64).

    Returns:
        :class:`Render` with ``images`` (N, 3, size, size) in [0, 1], ``landmarks``
        (N, K, 2) pixel coordinates and ``segmentation`` (N, size, size) part indices.

    Example:
        >>> out = render(sample_params(8, torch.Generator().manual_seed(0)))
        >>> out.images.shape, out.landmarks.shape, out.segmentation.shape
        (torch.Size([8, 3, 64, 64]), torch.Size([8, 6, 2]), torch.Size([8, 64, 64]))
        >>> 0.0 <= float(out.images.min()) and float(out.images.max()) <= 1.0
        True
    """
    p = params
    device = p.device
    n = len(p)
    coords = (torch.arange(size, device=device, dtype=torch.float32) * 2 + 1) / size - 1
    gx = coords.view(1, 1, size)
    gy = coords.view(1, size, 1)

    # Head frame: centre, half axes and yaw. A feature at frontal offset f (in face
    # half-widths) and depth d sits at x = cx + a (f cos t + d sqrt(1 - f^2) sin t).
    cx = _col(0.12 * (p.face_x - 0.5))
    cy = _col(0.10 + 0.10 * (p.face_y - 0.5))
    a = _col(0.43 + 0.07 * (p.face_width - 0.5))
    b = _col(0.56 + 0.07 * (p.face_height - 0.5))
    theta = _col((p.yaw - 0.5) * 2 * _MAX_YAW)
    sin_t, cos_t = torch.sin(theta), torch.cos(theta)
    male = _col(p.male)

    def project(f, depth=1.0):
        """(x, horizontal foreshortening) of a feature at frontal offset f."""
        f = torch.as_tensor(f, device=device, dtype=torch.float32)
        root = torch.sqrt(1 - f * f)
        x = cx + a * (f * cos_t + depth * root * sin_t)
        squeeze = ((root * cos_t - f * sin_t) / root).clamp(min=0.2)
        return x, squeeze

    eye_y = cy - b * (0.10 + 0.08 * (_col(p.eye_height) - 0.5))
    eye_f = 0.40 + 0.08 * (_col(p.eye_spacing) - 0.5)
    eye_w = 0.105 + 0.02 * (_col(p.eye_size) - 0.5)
    eye_h = 0.5 * eye_w
    brow_y = eye_y - 0.105 - 0.03 * (_col(p.brow_height) - 0.5)
    nose_y = cy + b * (0.23 + 0.06 * (_col(p.nose_length) - 0.5))
    mouth_y = cy + b * (0.50 + 0.06 * (_col(p.mouth_height) - 0.5))
    mouth_rest_w = 0.14 + 0.03 * (_col(p.mouth_width) - 0.5)
    mouth_w = mouth_rest_w + 0.035 * _col(p.smiling)
    hairline_y = cy - b * (0.52 + 0.10 * (_col(p.hairline) - 0.5))
    face_cx, _ = project(0.0, 0.35)  # the outline drifts a little with the pose
    head_cx = cx - 0.06 * sin_t  # the back of the head goes the other way

    # Colours.
    skin = torch.lerp(
        torch.tensor(_SKIN_LIGHT, device=device).view(1, 3, 1, 1),
        torch.tensor(_SKIN_DARK, device=device).view(1, 3, 1, 1),
        _col(p.skin_tone).unsqueeze(1),
    ) * (0.95 + 0.1 * _col(p.skin_shade).unsqueeze(1))
    hair = _rgb(_HAIR_RGB, p.hair_color) * (0.85 + 0.3 * _col(p.hair_shade).unsqueeze(1))
    hair = hair.clamp(0, 1)
    strands = 1 + 0.06 * torch.sin(
        (40 + 14 * _col(p.hair_texture)) * (gx - head_cx) + 4 * gy + 6.28 * _col(p.hair_texture)
    ).unsqueeze(
        1
    )  # (N, 1, H, W)
    grey = torch.tensor(_GREY_HAIR_RGB, device=device).view(1, 3, 1, 1)
    temples = (((gx - head_cx).abs() - 0.7 * a) * 12).sigmoid().unsqueeze(1)  # (N, 1, H, W)
    hair_px = torch.lerp(hair, grey, temples * 0.9 * _col(p.grey_hair).unsqueeze(1)) * strands
    facial_hair = hair * 0.72

    background = _rgb(_BACKGROUND_RGB, p.background) * (
        0.9 + 0.15 * _col(p.background_shade).unsqueeze(1)
    )
    background = background * (1.08 - 0.16 * (gy.unsqueeze(1) + 1) / 2)
    canvas = _Canvas(background.clamp(0, 1).expand(n, 3, size, size), size)

    # Clothes, long hair behind the head (not for the male cue), then the neck in front of it.
    shirt = _hue_rgb(p.shirt_hue, 0.55, 0.75)
    canvas.paint(
        canvas.coverage(_ellipse(gx - cx, gy - (cy + b + 0.55), 0.95, 0.42)),
        shirt,
        "clothes",
        silhouette=True,
    )
    hair_len = 0.35 + 0.45 * _col(p.hair_length)
    back = torch.minimum(
        _ellipse(gx - head_cx, gy - (cy - 0.04), a * 1.22, b * 1.12),
        _box(gx - head_cx, gy - (cy + 0.5 * hair_len), a * 1.22, 0.5 * hair_len + 0.1, 0.12),
    )
    back_alpha = canvas.coverage(back) * (1 - male)
    canvas.paint(back_alpha, hair_px * 0.85, "hair", silhouette=True)

    neck = _box(
        gx - (cx + 0.3 * (face_cx - cx)), gy - (cy + b * 0.9), 0.21 + 0.03 * male, 0.35, 0.02
    )
    canvas.paint(canvas.coverage(neck), skin * 0.86, "skin", silhouette=True)

    # Ears and earrings.
    ear_y = eye_y + 0.07
    for side in (-1.0, 1.0):
        ear_x, _ = project(side * 0.97, 1.0)
        visible = (1.0 - 2.5 * (side * sin_t).clamp(min=0)).clamp(0, 1)
        ear = _ellipse(gx - (ear_x + side * 0.03), gy - ear_y, 0.065, 0.11)
        canvas.paint(canvas.coverage(ear) * visible, skin * 0.93, "skin", silhouette=True)

    # Face: an ellipse whose lower half is squarer for the male cue (a superellipse).
    fx, fy = gx - face_cx, gy - cy
    jaw_p = torch.where(fy > 0, 2.0 + 1.6 * male, torch.full_like(fy, 2.0))
    q = ((fx / a).abs() ** jaw_p + (fy / b).abs() ** jaw_p) ** (1.0 / jaw_p)
    face_sdf = (q - 1.0) * torch.minimum(a, b) * 0.9
    canvas.paint(canvas.coverage(face_sdf), skin, "skin", silhouette=True)

    # Lighting: a horizontal shading ramp across the head, towards the light.
    light = _col((p.lighting - 0.5) * 2)
    shade = 1 + (0.30 * light * ((gx - cx) / a).clamp(-1.3, 1.3) - 0.05 * ((gx - cx) / a) ** 2)
    shade = shade * _col(0.88 + 0.24 * p.light_strength)

    # Age cue: wrinkles on the forehead, at the eyes and beside the mouth.
    grey_hair = _col(p.grey_hair)
    wrinkle = None
    for k in range(2):
        y0 = brow_y - 0.07 - 0.055 * k + 0.03 * ((gx - face_cx) / a) ** 2
        line = torch.maximum((gy - y0).abs() - 0.010, (gx - face_cx).abs() - 0.55 * a)
        wrinkle = line if wrinkle is None else torch.minimum(wrinkle, line)
    for side in (-1.0, 1.0):
        mx, _ = project(side * (mouth_rest_w / a).clamp(max=0.8), 1.0)
        nx, _ = project(side * 0.30, 1.0)
        # a fold from beside the nose to beside the mouth corner
        t = ((gy - nose_y) / (mouth_y - nose_y)).clamp(0, 1)
        fold_x = nx + (mx + side * 0.04 - nx) * t
        fold = torch.maximum((gx - fold_x).abs() - 0.010, _band(gy, nose_y, mouth_y + 0.02))
        wrinkle = torch.minimum(wrinkle, fold)
    canvas.paint(canvas.coverage(wrinkle) * grey_hair * 0.55, skin * 0.55)

    # Heavy makeup: coloured eye shadow and pink blush.
    makeup = _col(p.heavy_makeup)
    shadow_rgb = _hue_rgb(0.55 + 0.4 * p.makeup_hue, 0.6, 0.7)
    eyes = []
    for side in (-1.0, 1.0):
        ex, squeeze = project(side * eye_f, 1.0)
        eyes.append((ex, squeeze))
        shadow = _ellipse(gx - ex, gy - (eye_y - 0.035), eye_w * 1.25 * squeeze, 0.065)
        canvas.paint(canvas.coverage(shadow) * makeup * 0.75, shadow_rgb)
        cheek_x, _ = project(side * 0.55, 1.0)
        blush = _ellipse(gx - cheek_x, gy - (nose_y + 0.02), 0.10, 0.07)
        canvas.paint(
            canvas.coverage(blush) * makeup * 0.45,
            torch.tensor([0.95, 0.35, 0.45], device=device).view(1, 3, 1, 1),
        )

    # Eyes: sclera, iris (eye colour), pupil; eyeliner with makeup.
    iris_rgb = _rgb(_EYE_RGB, p.eye_color)
    white = torch.tensor([0.97, 0.97, 0.97], device=device).view(1, 3, 1, 1)
    dark = torch.tensor([0.05, 0.04, 0.04], device=device).view(1, 3, 1, 1)
    gaze = 0.35 * sin_t * eye_w
    for ex, squeeze in eyes:
        sclera = _ellipse(gx - ex, gy - eye_y, eye_w * squeeze, eye_h)
        liner = sclera.abs() - 0.012 - 0.012 * makeup
        canvas.paint(canvas.coverage(liner) * (0.55 + 0.45 * makeup), dark)
        canvas.paint(canvas.coverage(sclera), white, "eyes")
        iris = _ellipse(gx - ex - gaze, gy - eye_y, 0.052 * squeeze, 0.052)
        iris = torch.maximum(iris, sclera)
        canvas.paint(canvas.coverage(iris), iris_rgb)
        pupil = torch.maximum(_ellipse(gx - ex - gaze, gy - eye_y, 0.02 * squeeze, 0.02), sclera)
        canvas.paint(canvas.coverage(pupil), dark)

    # Brows: thick and straight for the male cue, thin and arched otherwise.
    brow_rgb = hair * 0.7
    for ex, squeeze in eyes:
        half = eye_w * 1.3 * squeeze
        t = ((gx - ex) / half).clamp(-1, 1)
        arch = (0.035 - 0.025 * male) * (1 - t * t)
        thick = (0.022 + 0.018 * male) * (1 - 0.4 * t * t)
        centre_y = brow_y - arch
        brow = torch.maximum((gy - centre_y).abs() - thick, (gx - ex).abs() - half)
        canvas.paint(canvas.coverage(brow), brow_rgb, "brows")

    # Nose: a shaded wedge, nostrils and a highlight, leaning with the pose.
    tip_x, _ = project(0.0, 1.25)
    root_x, _ = project(0.0, 1.05)
    t = ((gy - (eye_y + 0.02)) / (nose_y - eye_y - 0.02)).clamp(0, 1)
    axis = root_x + (tip_x - root_x) * t
    half_w = 0.025 + 0.05 * t * t
    nose = torch.maximum((gx - axis).abs() - half_w, _band(gy, eye_y + 0.03, nose_y + 0.035))
    nose_shade = skin * (0.80 + 0.12 * light.sign().unsqueeze(1) * (gx - axis).unsqueeze(1).sign())
    canvas.paint(canvas.coverage(nose) * 0.9, nose_shade, "nose")
    for side in (-1.0, 1.0):
        nostril = _ellipse(gx - (tip_x + side * 0.04), gy - (nose_y + 0.015), 0.022, 0.014)
        canvas.paint(canvas.coverage(nostril) * 0.8, skin * 0.35)

    # Facial hair: a beard over jaw and chin, and sideburns; a moustache above the lip.
    beard_sdf = torch.maximum(face_sdf - 0.012, mouth_y - 0.035 - gy)
    sideburn = torch.maximum(
        face_sdf - 0.012, torch.maximum(-face_sdf - 0.07, _band(gy, eye_y + 0.08, mouth_y))
    )
    beard_sdf = torch.minimum(beard_sdf, sideburn)
    canvas.paint(canvas.coverage(beard_sdf) * _col(p.beard), facial_hair * strands, "facial_hair")

    # Mouth: a curved band of lips (smiling raises the corners), open: dark inside, teeth.
    mouth_x, mouth_squeeze = project(0.0, 1.1)
    half_mouth = mouth_w * mouth_squeeze
    t = ((gx - mouth_x) / half_mouth).clamp(-1, 1)
    env = torch.sqrt((1 - t * t).clamp(min=0))
    smile = _col(p.smiling)
    opening = _col(p.mouth_open)
    lift = _SMILE_LIFT * smile - 0.012  # corners: up in a smile, a little down at rest
    centre = mouth_y - lift * t * t
    gap = opening * (0.030 + 0.025 * smile) * env
    # the jaw drops: an open mouth grows mostly downwards, the upper lip stays
    gap_up, gap_down = 0.4 * gap, 1.6 * gap
    upper = 0.026 * env + 0.004
    lower = 0.034 * env + 0.004
    lips = torch.maximum(
        _band(gy, centre - gap_up - upper, centre + gap_down + lower),
        (gx - mouth_x).abs() - half_mouth,
    )
    lip_natural = torch.lerp(
        skin, torch.tensor([0.72, 0.32, 0.34], device=device).view(1, 3, 1, 1), 0.55
    )
    lipstick_rgb = torch.tensor(_LIPSTICK_RGB, device=device).view(1, 3, 1, 1) * (
        0.75 + 0.3 * _col(p.lip_shade).unsqueeze(1)
    )
    lip_rgb = torch.lerp(lip_natural, lipstick_rgb, _col(p.lipstick).unsqueeze(1))
    canvas.paint(canvas.coverage(lips), lip_rgb, "mouth")
    parting = torch.maximum((gy - centre).abs() - 0.008, (gx - mouth_x).abs() - 0.95 * half_mouth)
    canvas.paint(canvas.coverage(parting) * 0.8, lip_rgb * 0.35)
    for side in (-1.0, 1.0):
        # smile creases just outside the raised corners
        crease_x = mouth_x + side * (half_mouth + 0.012)
        crease = torch.maximum(
            (gx - crease_x + side * 0.25 * (gy - mouth_y + lift) ** 2 / 0.05).abs() - 0.009,
            (gy - (mouth_y - lift + 0.005)).abs() - 0.032,
        )
        canvas.paint(canvas.coverage(crease) * smile * 0.6, skin * 0.55)
    inside = torch.maximum(
        _band(gy, centre - gap_up, centre + gap_down), (gx - mouth_x).abs() - 0.9 * half_mouth
    )
    canvas.paint(
        canvas.coverage(inside) * opening,
        torch.tensor([0.25, 0.05, 0.07], device=device).view(1, 3, 1, 1),
    )
    teeth = torch.maximum(inside, gy - (centre - gap_up + 0.028))
    canvas.paint(canvas.coverage(teeth) * opening, white * 0.95)

    moustache_bottom = centre - gap_up - upper - 0.006
    moustache = torch.maximum(
        _band(gy, moustache_bottom - 0.05 + 0.02 * t * t, moustache_bottom + 0.02 * (t * t)),
        (gx - mouth_x).abs() - half_mouth * 1.15,
    )
    canvas.paint(
        canvas.coverage(moustache) * _col(p.moustache), facial_hair * strands, "facial_hair"
    )

    # Hair on the head: the crown down to the hairline, lower at the temples for long hair.
    side_drop = b * (0.30 + 0.25 * (1 - male))
    hairline = hairline_y + side_drop * ((gx - face_cx) / a) ** 2
    scalp = _ellipse(gx - head_cx, gy - (cy - 0.02), a * 1.10, b * 1.08)
    crown = torch.maximum(scalp, gy - hairline)
    canvas.paint(canvas.coverage(crown), hair_px, "hair", silhouette=True)

    # Bangs: a fringe over the forehead down to just above the brows, ragged at the tips.
    tips = brow_y - 0.025 + 0.012 * torch.cos((gx - face_cx) * 55)
    fringe = torch.maximum(
        torch.maximum(_ellipse(gx - face_cx, gy - cy, a * 1.03, b * 1.03), gy - tips),
        (gx - face_cx).abs() - 0.92 * a,
    )
    fringe = torch.maximum(
        fringe, hairline - 0.04 - gy
    )  # it hangs from the hairline, over the forehead
    canvas.paint(canvas.coverage(fringe) * _col(p.bangs), hair_px, "hair")

    # Glasses: two frames (round or rectangular), a bridge and the arms; tinted lenses.
    glasses = _col(p.eyeglasses)
    frame_rgb = torch.lerp(
        dark,
        torch.tensor([0.75, 0.55, 0.2], device=device).view(1, 3, 1, 1),
        (_col(p.glasses_shade) > 0.7).float().unsqueeze(1),
    )
    corner = 0.02 + 0.06 * _col(p.glasses_shape)
    frame_sdf, lens_sdf, inner_edges = None, None, []
    for side, (ex, squeeze) in zip((-1.0, 1.0), eyes):
        lens_w = (eye_w + 0.05) * squeeze
        lens = _box(gx - ex, gy - (eye_y + 0.005), lens_w, 0.085, corner)
        ring = lens.abs() - 0.022
        # the arm runs from the outer edge of the lens to the ear
        outer, arm_end = ex + side * lens_w, project(side * 0.97, 1.0)[0]
        arm = torch.maximum(
            (gy - (eye_y - 0.03)).abs() - 0.016,
            (gx - (outer + arm_end) / 2).abs() - (arm_end - outer).abs() / 2,
        )
        piece = torch.minimum(ring, arm)
        frame_sdf = piece if frame_sdf is None else torch.minimum(frame_sdf, piece)
        lens_sdf = lens if lens_sdf is None else torch.minimum(lens_sdf, lens)
        inner_edges.append(ex - side * lens_w)
    left, right = inner_edges
    bridge = torch.maximum(
        (gy - (eye_y - 0.015)).abs() - 0.016,
        (gx - (left + right) / 2).abs() - (right - left).abs() / 2,
    )
    frame_sdf = torch.minimum(frame_sdf, bridge)
    canvas.paint(
        canvas.coverage(lens_sdf) * glasses * 0.25,
        torch.tensor([0.55, 0.65, 0.80], device=device).view(1, 3, 1, 1),
    )
    canvas.paint(canvas.coverage(frame_sdf) * glasses, frame_rgb, "glasses")

    # Hat: a crown and a brim sitting at the hairline.
    hat = _col(p.hat)
    hat_rgb = _hue_rgb(p.hat_hue, 0.7, 0.8)
    brim_y = hairline_y - 0.03  # high enough to show bangs below the brim
    hat_crown = _box(gx - head_cx, gy - (brim_y - 0.22), a * 1.08, 0.25, 0.12)
    brim = _box(gx - face_cx, gy - brim_y, a * 1.45, 0.045, 0.04)
    band = torch.maximum(hat_crown, _band(gy, brim_y - 0.10, brim_y))
    canvas.paint(
        canvas.coverage(torch.minimum(hat_crown, brim)) * hat, hat_rgb, "hat", silhouette=True
    )
    canvas.paint(canvas.coverage(band) * hat, hat_rgb * 0.55)

    # Earrings: bright studs at the ear lobes, drawn over the hair.
    earring_rgb = _rgb(_EARRING_RGB, (p.earring_shade > 0.5).long())
    for side in (-1.0, 1.0):
        ear_x, _ = project(side * 0.97, 1.0)
        visible = (side * sin_t < 0.2).float()  # a stud is seen whole or not at all
        stud = _ellipse(gx - (ear_x + side * 0.035), gy - (ear_y + 0.13), 0.038, 0.038)
        canvas.paint(
            canvas.coverage(stud) * visible * _col(p.earrings),
            earring_rgb,
            "earrings",
            silhouette=True,
        )

    image = canvas.image * (1 + canvas.cover.unsqueeze(1) * (shade.unsqueeze(1) - 1))
    image = image.clamp(0, 1)

    to_px = lambda v: (v + 1) * size / 2 - 0.5  # noqa: E731  normalised -> pixel centre coords
    mouth_left_x, _ = project(-(mouth_w / a).clamp(max=0.8), 1.0)
    mouth_right_x, _ = project((mouth_w / a).clamp(max=0.8), 1.0)
    corner_y = mouth_y - lift
    points = [
        (eyes[0][0], eye_y),
        (eyes[1][0], eye_y),
        (tip_x, nose_y),
        (mouth_x - half_mouth, corner_y),
        (mouth_x + half_mouth, corner_y),
        (face_cx, cy + b),  # the lowest point of the face outline
    ]
    landmarks = torch.stack(
        [
            torch.stack(
                [to_px(x).expand(n, 1, 1).reshape(n), to_px(y).expand(n, 1, 1).reshape(n)], dim=1
            )
            for x, y in points
        ],
        dim=1,
    )
    return Render(images=image.contiguous(), landmarks=landmarks, segmentation=canvas.parts.long())
