"""Pure-PyTorch reference implementations of the fused ops.

These are the definitions: plain, differentiable PyTorch, written for clarity rather than
speed. Every compiled backend is tested against them, the ``backend="torch"`` path of the
public wrappers runs them, and the benchmarks measure the fused kernels against them.
They assume validated arguments (the wrappers in :mod:`vmd_fast.ops` check them).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

Number = Union[float, int]
PerSample = Union[Number, torch.Tensor]


def per_sample_view(p: PerSample, x: torch.Tensor) -> PerSample:
    """Broadcastable view of a per-sample parameter against ``x`` of shape ``(N, ...)``.

    A number stays a number; a tensor with one value per sample becomes ``(N, 1, ..., 1)``.
    """
    if not isinstance(p, torch.Tensor):
        return p
    if p.numel() == 1:
        return p.reshape(()).to(device=x.device, dtype=x.dtype)
    return p.reshape((-1,) + (1,) * (x.dim() - 1)).to(device=x.device, dtype=x.dtype)


def projected_sign_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    origin: torch.Tensor,
    step: PerSample,
    eps: PerSample,
    lo: float = 0.0,
    hi: float = 1.0,
) -> torch.Tensor:
    """``clip(Pi_{B_inf(origin, eps)}(x + step * sign(grad)), lo, hi)`` (thesis Alg. 1)."""
    step = per_sample_view(step, x)
    eps = per_sample_view(eps, x)
    moved = x + step * torch.sign(grad)
    return moved.clamp(origin - eps, origin + eps).clamp(lo, hi)


def clamp_gd_step(
    w: torch.Tensor, grad: torch.Tensor, lr: PerSample, eps: PerSample
) -> torch.Tensor:
    """``clamp(w - lr * grad, -eps, eps)`` (thesis Eq. 3.10)."""
    lr = per_sample_view(lr, w)
    eps = per_sample_view(eps, w)
    return (w - lr * grad).clamp(-eps, eps)


def relevance_directions(
    M: torch.Tensor,
    dt: torch.Tensor,
    threshold: float,
    normalize: str = "l2",
    channel_scale: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """StyleCLIP global directions for every text direction (thesis Eq. 3.2).

    ``u = (dt @ M.T) * 1(|dt @ M.T| >= threshold) * channel_scale``, then per row:
    ``"none"`` keeps ``u``, ``"l2"`` and ``"absmax_l2"`` divide by ``||u||_2``,
    ``"absmax"`` divides by ``max |u|``. Rows with nothing above the threshold are zero.
    """
    r = dt @ M.T  # (A, C)
    u = r * (r.abs() >= threshold)
    if channel_scale is not None:
        u = u * channel_scale
    if normalize == "none":
        return u
    if normalize == "absmax":
        divisor = u.abs().amax(dim=1, keepdim=True)
    else:
        divisor = u.norm(dim=1, keepdim=True)
    return torch.where(divisor > 0, u / divisor.clamp_min(torch.finfo(u.dtype).tiny), 0.0)


def relevance_accumulate(
    M: torch.Tensor,
    style_deltas: torch.Tensor,
    clip_deltas: torch.Tensor,
    channel_index: Optional[torch.Tensor] = None,
    normalize: bool = True,
) -> torch.Tensor:
    """Accumulate style-channel relevance into ``M`` in place and return it.

    Dense: ``M += style_deltas.T @ n(clip_deltas)``; sparse (``channel_index`` given):
    ``M[channel_index[b]] += style_deltas[b] * n(clip_deltas[b])``, where ``n`` scales
    every row to unit length (zero rows stay zero) when ``normalize``.
    """
    clip = clip_deltas
    if normalize:
        norms = clip.norm(dim=1, keepdim=True)
        clip = torch.where(norms > 0, clip / norms.clamp_min(torch.finfo(clip.dtype).tiny), 0.0)
    if channel_index is None:
        M += style_deltas.T @ clip
    else:
        M.index_add_(0, channel_index, style_deltas.unsqueeze(1) * clip)
    return M


def gaussian_taps(win_size: int, win_sigma: float) -> Tuple[float, ...]:
    """Normalised 1-D Gaussian window of ``win_size`` taps as Python floats (as
    pytorch_msssim's ``_fspecial_gauss_1d`` and scipy's ``gaussian_filter`` with
    ``truncate=3.5``). Plain Python, so that torch.compile traces it."""
    centre = (win_size - 1) / 2
    g = [math.exp(-((i - centre) ** 2) / (2 * win_sigma**2)) for i in range(win_size)]
    total = math.fsum(g)
    return tuple(v / total for v in g)


def gaussian_window(win_size: int, win_sigma: float) -> torch.Tensor:
    """:func:`gaussian_taps` as a float64 tensor."""
    return torch.tensor(gaussian_taps(win_size, win_sigma), dtype=torch.float64)


def blur(t: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Valid separable correlation of every channel of ``t`` (N, C, H, W) with ``window``."""
    c = t.shape[1]
    w = window.to(device=t.device, dtype=t.dtype)
    k = w.numel()
    t = F.conv2d(t, w.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(t, w.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim_reference_stats(y: torch.Tensor, window: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Windowed moments ``(E[y], E[y^2])`` of reference images, each (R, C, Hv, Wv)."""
    return blur(y, window), blur(y * y, window)


def ssim_per_channel(
    x: torch.Tensor,
    y: torch.Tensor,
    window: torch.Tensor,
    C1: float,
    C2: float,
    stats: Optional[Tuple[torch.Tensor, torch.Tensor]] = None,
) -> torch.Tensor:
    """Mean SSIM of every (image, channel) plane, (N, C).

    With ``stats = (E[y], E[y^2])`` of R reference images, ``x`` holds ``k * R`` images and
    ``x[b]`` is compared with ``y[b // k]``.
    """
    if stats is None:
        mu_y, e_yy = ssim_reference_stats(y, window)
    else:
        mu_y, e_yy = stats
    per_ref = x.shape[0] // y.shape[0]
    if per_ref > 1:
        y = y.repeat_interleave(per_ref, dim=0)
        mu_y = mu_y.repeat_interleave(per_ref, dim=0)
        e_yy = e_yy.repeat_interleave(per_ref, dim=0)
    mu_x = blur(x, window)
    e_xx = blur(x * x, window)
    e_xy = blur(x * y, window)
    var_x = e_xx - mu_x * mu_x
    var_y = e_yy - mu_y * mu_y
    cov = e_xy - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + C1) / (mu_x * mu_x + mu_y * mu_y + C1)
    contrast_structure = (2 * cov + C2) / (var_x + var_y + C2)
    return (luminance * contrast_structure).flatten(2).mean(-1)


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    size_average: bool = True,
    win_size: int = 11,
    win_sigma: float = 1.5,
    K: Sequence[float] = (0.01, 0.03),
    nonnegative_ssim: bool = False,
) -> torch.Tensor:
    """Gaussian-window SSIM with pytorch_msssim's semantics: mean over the valid window
    positions and the channels; per image (N,) or, with ``size_average``, a scalar."""
    window = gaussian_window(win_size, win_sigma)
    C1 = (K[0] * data_range) ** 2
    C2 = (K[1] * data_range) ** 2
    per_channel = ssim_per_channel(x, y, window, C1, C2)
    if nonnegative_ssim:
        per_channel = torch.relu(per_channel)
    per_image = per_channel.mean(1)
    return per_image.mean() if size_average else per_image


def clip_consistency(
    image_logits_edit: torch.Tensor,
    image_logits_orig: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Soft cross-entropy ``-sum_k softmax(orig/T)_k log softmax(edit/T)_k`` per row
    (thesis Eq. 3.8), reduced with ``"mean"``, ``"sum"`` or ``"none"``."""
    target = torch.softmax(image_logits_orig / temperature, dim=-1)
    log_q = torch.log_softmax(image_logits_edit / temperature, dim=-1)
    loss = -(target * log_q).sum(-1)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


__all__ = [
    "blur",
    "clamp_gd_step",
    "clip_consistency",
    "gaussian_taps",
    "gaussian_window",
    "per_sample_view",
    "projected_sign_step",
    "relevance_accumulate",
    "relevance_directions",
    "ssim",
    "ssim_per_channel",
    "ssim_reference_stats",
]
