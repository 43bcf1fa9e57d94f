r"""StyleCLIP channel relevance: the matrix ``M`` and global edit directions.

**The relevance matrix** (StyleCLIP, Patashnik et al. 2021, "global directions"; thesis
3.3.2). Row ``c`` of ``M`` (channels x clip_dim) is the mean direction in which CLIP's
image embedding moves when style channel ``c`` is perturbed:

.. math::
    M_c \propto \mathbb{E}_n\, \frac{\Delta e_{n,c}}{\lVert \Delta e_{n,c} \rVert},\qquad
    \Delta e_{n,c} = \hat e\big(G(s_n + \alpha\sigma_c 1_c)\big)
                   - \hat e\big(G(s_n - \alpha\sigma_c 1_c)\big)

with :math:`\hat e` the unit-normalised CLIP image embedding, :math:`\sigma_c` the
channel's standard deviation over the style space and :math:`\alpha` the mutation strength
(StyleCLIP uses 5). :func:`relevance_accumulate` adds a batch of such responses to ``M``:
sparse rows ``(channel_index[b], style_deltas[b], clip_deltas[b])`` reproduce exactly that
single-channel estimate, and the dense form ``M += style_deltas.T @ n(clip_deltas)``
accumulates multi-channel probes (random style perturbations, or style-space gradients of
CLIP embeddings paired with the CLIP directions they were taken along), whose expectation
is the same Jacobian-based relevance. Normalise the rows at the end with
:func:`normalize_relevance`.

**Global directions** (thesis Eq. 3.2): for text directions ``dt`` (attributes x
clip_dim), :func:`relevance_directions` returns, for all attributes in one launch,

.. math::
    \Delta s = (M\,\Delta t)\odot \mathbb 1(|M\,\Delta t| \ge \lambda),

optionally scaled per channel (the official code multiplies by the style std) and
normalised per attribute.
"""

from __future__ import annotations

from typing import Optional

import torch

from vmd_fast.ops import reference
from vmd_fast.ops._backend import (
    check_finite,
    check_like,
    check_number,
    check_tensor,
    has_compiled_ops,
    use_compiled,
    value_checks_enabled,
)

NORMALIZE_MODES = ("l2", "absmax_l2", "absmax", "none")


def relevance_directions(
    M: torch.Tensor,
    dt: torch.Tensor,
    threshold: float,
    normalize: str = "l2",
    channel_scale: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Global style-space edit directions for many CLIP text directions at once.

    ``u = (dt @ M.T) * 1(|dt @ M.T| >= threshold) * channel_scale``, then per attribute:

    - ``"l2"``: ``u / ||u||_2`` (thesis Eq. 3.2-3.3, the edits ZOOM combines);
    - ``"absmax_l2"``: the official StyleCLIP order, ``u / max|u|`` then divided by its
      L2 norm (equal to ``"l2"`` in exact arithmetic; the norm is taken after the rescale);
    - ``"absmax"``: ``u / max|u|`` (StyleCLIP's boundary scale, largest channel = 1);
    - ``"none"``: ``u``.

    An attribute with no channel above the threshold gets an all-zero direction.
    Differentiable with respect to ``M``, ``dt`` and ``channel_scale`` (the threshold mask
    is treated as a constant).

    Args:
        M: relevance matrix, shape :math:`(C, D)` (style channels x CLIP dim).
        dt: CLIP text directions, shape :math:`(A, D)` (attributes x CLIP dim), same dtype
            and device as ``M``.
        threshold: :math:`\lambda \ge 0`, the relevance below which a channel is dropped.
        normalize: ``"l2"`` (default), ``"absmax_l2"``, ``"absmax"`` or ``"none"``.
        channel_scale: optional per-channel factor, shape :math:`(C,)` (e.g. style std).
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``.

    Returns:
        The directions :math:`\Delta s`, shape :math:`(A, C)`, dtype of ``M``.

    Example:
        >>> M = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
        >>> relevance_directions(M, torch.tensor([[1.0, 0.0]]), threshold=0.5)
        tensor([[0.8575, 0.0000, 0.5145]])
    """
    check_tensor(M, "M", ndim=2)
    check_like(dt, M, "dt", "M", shape=False)
    if dt.dim() != 2 or dt.shape[1] != M.shape[1]:
        raise ValueError(
            f"dt must have shape (attributes, {M.shape[1]}) to match M {tuple(M.shape)}, "
            f"got {tuple(dt.shape)}"
        )
    threshold = check_number(threshold, "threshold", minimum=0.0)
    if normalize not in NORMALIZE_MODES:
        raise ValueError(f"normalize must be one of {NORMALIZE_MODES}, got {normalize!r}")
    if channel_scale is not None:
        check_like(channel_scale, M, "channel_scale", "M", shape=False)
        if channel_scale.shape != (M.shape[0],):
            raise ValueError(
                f"channel_scale must have shape ({M.shape[0]},), got {tuple(channel_scale.shape)}"
            )
        check_finite(channel_scale, "channel_scale")
    check_finite(M, "M")
    check_finite(dt, "dt")
    if not use_compiled(backend, M.device):
        return reference.relevance_directions(M, dt, threshold, normalize, channel_scale)
    ds, _ = torch.ops.vmd_fast.relevance_directions(M, dt, threshold, normalize, channel_scale)
    return ds


@torch.no_grad()
def relevance_accumulate(
    M: torch.Tensor,
    style_deltas: torch.Tensor,
    clip_deltas: torch.Tensor,
    channel_index: Optional[torch.Tensor] = None,
    normalize: bool = True,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Add a batch of CLIP responses to style perturbations into ``M``, in place.

    - sparse (``channel_index`` given): ``M[channel_index[b]] += style_deltas[b] *
      clip_deltas[b] / ||clip_deltas[b]||`` — StyleCLIP's single-channel mutations;
    - dense: ``M += style_deltas.T @ (clip_deltas / ||clip_deltas||_row)`` — probes that
      move many channels at once.

    Rows are summed in a fixed order on every backend (deterministic, no atomics). Zero
    CLIP responses contribute nothing. Inputs are cast to ``M``'s dtype.

    Args:
        M: accumulator, shape :math:`(C, D)`, contiguous, updated in place.
        style_deltas: sparse: weight (signed perturbation size) of each row, :math:`(B,)`;
            dense: the style perturbations, :math:`(B, C)`.
        clip_deltas: CLIP image-embedding changes, :math:`(B, D)`.
        channel_index: the perturbed channel of each row, int64 :math:`(B,)` in
            ``[0, C)``, or None for the dense form.
        normalize: scale each CLIP response to unit length first (StyleCLIP). Default: True.
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``.

    Returns:
        ``M``.

    Example:
        >>> M = torch.zeros(3, 2)
        >>> relevance_accumulate(M, torch.tensor([1.0, 1.0]), torch.tensor([[3.0, 4.0], [0.0, 2.0]]),
        ...                      channel_index=torch.tensor([2, 2]))
        tensor([[0.0000, 0.0000],
                [0.0000, 0.0000],
                [0.6000, 1.8000]])
    """
    check_tensor(M, "M", ndim=2)
    if not M.is_contiguous():
        raise ValueError("M must be contiguous (it is updated in place)")
    check_tensor(clip_deltas, "clip_deltas", ndim=2)
    check_tensor(style_deltas, "style_deltas")
    if clip_deltas.shape[1] != M.shape[1]:
        raise ValueError(
            f"clip_deltas must have shape (B, {M.shape[1]}) to match M, got {tuple(clip_deltas.shape)}"
        )
    for t, name in ((clip_deltas, "clip_deltas"), (style_deltas, "style_deltas")):
        if t.device != M.device:
            raise ValueError(f"{name} must be on the device of M ({M.device}), got {t.device}")
    b = clip_deltas.shape[0]
    if channel_index is not None:
        check_tensor(channel_index, "channel_index", ndim=1, floating=False)
        if channel_index.dtype != torch.int64:
            raise TypeError(f"channel_index must be int64, got {channel_index.dtype}")
        if channel_index.device != M.device:
            raise ValueError(f"channel_index must be on {M.device}, got {channel_index.device}")
        if channel_index.shape[0] != b or style_deltas.shape != (b,):
            raise ValueError(
                f"with channel_index, channel_index and style_deltas must have shape ({b},), "
                f"got {tuple(channel_index.shape)} and {tuple(style_deltas.shape)}"
            )
        if value_checks_enabled() and b and (
            int(channel_index.min()) < 0 or int(channel_index.max()) >= M.shape[0]
        ):
            raise ValueError(f"channel_index values must lie in [0, {M.shape[0]})")
    elif style_deltas.shape != (b, M.shape[0]):
        raise ValueError(
            f"style_deltas must have shape ({b}, {M.shape[0]}) (or pass channel_index), "
            f"got {tuple(style_deltas.shape)}"
        )
    style_deltas = style_deltas.to(M.dtype)
    clip_deltas = clip_deltas.to(M.dtype)
    check_finite(style_deltas, "style_deltas")
    check_finite(clip_deltas, "clip_deltas")
    if not use_compiled(backend, M.device):
        return reference.relevance_accumulate(M, style_deltas, clip_deltas, channel_index, normalize)
    torch.ops.vmd_fast.relevance_accumulate_(M, style_deltas, clip_deltas, channel_index, normalize)
    return M


def normalize_relevance(M: torch.Tensor) -> torch.Tensor:
    """Rows of an accumulated relevance matrix scaled to unit length (zero rows stay zero),
    the last step of StyleCLIP's estimate.

    Args:
        M: accumulated relevance, shape :math:`(C, D)`.

    Returns:
        A new tensor of the same shape.
    """
    check_tensor(M, "M", ndim=2)
    norms = M.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, M / norms.clamp_min(torch.finfo(M.dtype).tiny), 0.0)


def _relevance_backward(ctx, grad_ds, _grad_divisor):
    """Gradient of ``ds = u / divisor(u)``, ``u = mask * (dt @ M.T) * channel_scale``, with
    the threshold mask held constant. Recomputes ``u`` (one GEMM) instead of storing it."""
    M, dt, channel_scale = ctx.saved_tensors
    compute = torch.float64 if M.dtype == torch.float64 else torch.float32
    Mc, dtc = M.to(compute), dt.to(compute)
    r = dtc @ Mc.T  # (A, C)
    mask = (r.abs() >= ctx.threshold).to(compute)
    scale = channel_scale.to(compute) if channel_scale is not None else None
    u = r * mask if scale is None else r * mask * scale
    g = grad_ds.to(compute)
    if ctx.normalize == "none":
        grad_u = g
    else:
        if ctx.normalize == "absmax":
            divisor = u.abs().amax(dim=1, keepdim=True)
            # d(u / max|u|): a subgradient that splits ties between the maxima.
            peak = (u.abs() == divisor).to(compute)
            direction = peak * u.sign() / peak.sum(1, keepdim=True).clamp_min(1)
        else:
            divisor = u.norm(dim=1, keepdim=True)
            direction = None
        safe = torch.where(divisor > 0, divisor, torch.ones_like(divisor))
        out = u / safe
        if direction is None:
            direction = out
        grad_u = (g - direction * (g * out).sum(1, keepdim=True)) / safe
        grad_u = torch.where(divisor > 0, grad_u, torch.zeros_like(grad_u))
    grad_r = grad_u * mask
    grad_cs = None
    if scale is not None:
        if ctx.needs_input_grad[4]:
            grad_cs = (grad_r * r).sum(0).to(channel_scale.dtype)
        grad_r = grad_r * scale
    grad_M = (grad_r.T @ dtc).to(M.dtype) if ctx.needs_input_grad[0] else None
    grad_dt = (grad_r @ Mc).to(dt.dtype) if ctx.needs_input_grad[1] else None
    return grad_M, grad_dt, None, None, grad_cs


def _relevance_setup_context(ctx, inputs, output):
    M, dt, threshold, normalize, channel_scale = inputs
    ctx.threshold = threshold
    ctx.normalize = normalize
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(M, dt, channel_scale)


if has_compiled_ops():

    @torch.library.register_fake("vmd_fast::relevance_directions")
    def _(M, dt, threshold, normalize, channel_scale):
        compute = torch.float64 if M.dtype == torch.float64 else torch.float32
        return (
            M.new_empty((dt.shape[0], M.shape[0])),
            M.new_empty((dt.shape[0],), dtype=compute),
        )

    @torch.library.register_fake("vmd_fast::relevance_accumulate_")
    def _(M, style_deltas, clip_deltas, channel_index, normalize):
        return None

    torch.library.register_autograd(
        "vmd_fast::relevance_directions",
        _relevance_backward,
        setup_context=_relevance_setup_context,
    )

    # Under autocast: float32, since the directions are a thresholded projection and bf16
    # rounding would move channels across the threshold.
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast("vmd_fast::relevance_directions", _device, torch.float32)
