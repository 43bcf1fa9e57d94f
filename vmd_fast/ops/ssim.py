r"""Fused Gaussian-window SSIM, forward and backward, and a cache of reference statistics.

Matches ``skimage.metrics.structural_similarity(x, y, gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=...)`` (which crops the borders that its filter
pads, i.e. averages over the "valid" window positions) and ``pytorch_msssim.ssim`` (same
argument names and defaults, except ``data_range`` which defaults to 1 here).

ZOOM's structural loss (thesis Eq. 3.7) compares many edits with the same originals:
:class:`SSIMReference` blurs the originals once and compares any number of edits per
original against them.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from vmd_fast.ops import reference
from vmd_fast.ops._backend import (
    check_finite,
    check_like,
    check_number,
    check_tensor,
    has_compiled_ops,
    use_compiled,
)

_MAX_WINDOW = 31  # csrc/ops/common.h kMaxWindow


def _window_taps(win_size: int, win_sigma: float, win: Optional[torch.Tensor]) -> Tuple[float, ...]:
    """The 1-D window as Python floats (a kernel argument: no device copy, capture-safe)."""
    if win is not None:
        check_tensor(win, "win")
        # pytorch_msssim passes (C, 1, 1, K) repeats of one 1-D window.
        taps = win.reshape(-1, win.shape[-1])[0] if win.dim() > 1 else win
        if win.dim() > 1 and not bool((win.reshape(-1, win.shape[-1]) == taps).all()):
            raise ValueError("win must hold the same 1-D window for every channel")
        k = taps.numel()
        if k % 2 == 0 or k > _MAX_WINDOW:
            raise ValueError(f"win must have an odd length <= {_MAX_WINDOW}, got {k}")
        return tuple(taps.detach().double().cpu().tolist())
    if isinstance(win_size, bool) or not isinstance(win_size, int):
        raise TypeError(f"win_size must be an int, got {type(win_size).__name__}")
    if win_size < 1 or win_size % 2 == 0 or win_size > _MAX_WINDOW:
        raise ValueError(f"win_size must be odd and in [1, {_MAX_WINDOW}], got {win_size}")
    win_sigma = check_number(win_sigma, "win_sigma", minimum=0.0, strict=True)
    return reference.gaussian_taps(win_size, win_sigma)


def _constants(data_range: float, K: Sequence[float]) -> Tuple[float, float]:
    data_range = check_number(data_range, "data_range", minimum=0.0, strict=True)
    if len(K) != 2:
        raise ValueError(f"K must be a pair (K1, K2), got {K!r}")
    k1 = check_number(K[0], "K[0]", minimum=0.0)
    k2 = check_number(K[1], "K[1]", minimum=0.0)
    return (k1 * data_range) ** 2, (k2 * data_range) ** 2


def _check_images(x: torch.Tensor, name: str, window: int) -> None:
    check_tensor(x, name, ndim=4)
    if x.shape[-1] < window or x.shape[-2] < window:
        raise ValueError(
            f"{name} images are {x.shape[-2]}x{x.shape[-1]}, smaller than the {window}-tap "
            "SSIM window; use a smaller win_size"
        )


def _reduce(per_channel: torch.Tensor, dtype: torch.dtype, size_average: bool, nonnegative_ssim: bool) -> torch.Tensor:
    if nonnegative_ssim:
        per_channel = torch.relu(per_channel)
    per_image = per_channel.mean(1)
    result = per_image.mean() if size_average else per_image
    return result.to(dtype)


def _grad_mode(x: torch.Tensor, y: Optional[torch.Tensor]) -> int:
    if not torch.is_grad_enabled():
        return 0
    if y is not None and y.requires_grad:
        return 2
    return 1 if x.requires_grad else 0


def ssim(
    x: torch.Tensor,
    y: torch.Tensor,
    data_range: float = 1.0,
    size_average: bool = True,
    win_size: int = 11,
    win_sigma: float = 1.5,
    win: Optional[torch.Tensor] = None,
    K: Sequence[float] = (0.01, 0.03),
    nonnegative_ssim: bool = False,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Structural similarity of two image batches (Gaussian window, fused kernel).

    Forward and backward are each one fused pass: the five windowed moments of ``x``,
    ``y``, ``x^2``, ``y^2``, ``xy`` are blurred together, and the forward pass keeps the
    per-position partial derivatives so that the backward pass is one transposed blur.
    Differentiable with respect to both ``x`` and ``y``.

    Args:
        x: images, shape :math:`(N, C, H, W)` with :math:`H, W \ge` ``win_size``; float32,
            float16, bfloat16 or float64.
        y: images, same shape, dtype and device as ``x``.
        data_range: value range of the images (1 for [0, 1], 255 for uint8-scaled).
        size_average: return the mean over the batch (a scalar) instead of one value per
            image :math:`(N,)`.
        win_size: taps of the Gaussian window (odd, at most 31). Default: 11.
        win_sigma: standard deviation of the window. Default: 1.5.
        win: an explicit window instead (1-D, or pytorch_msssim's :math:`(C, 1, 1, K)`).
        K: the stabilising constants :math:`(K_1, K_2)`. Default: (0.01, 0.03).
        nonnegative_ssim: clamp the per-channel SSIM at 0 (pytorch_msssim's option).
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``.

    Returns:
        Mean SSIM, a scalar or :math:`(N,)`, dtype of ``x``.

    Example:
        >>> x = torch.linspace(0, 1, 3 * 16 * 16).reshape(1, 3, 16, 16)
        >>> round(float(ssim(x, x)), 5)
        1.0
    """
    taps = _window_taps(win_size, win_sigma, win)
    _check_images(x, "x", len(taps))
    check_like(y, x, "y", "x")
    C1, C2 = _constants(data_range, K)
    check_finite(x, "x")
    check_finite(y, "y")
    if not use_compiled(backend, x.device):
        window = torch.tensor(taps, dtype=torch.float64)
        per_channel = reference.ssim_per_channel(x, y, window, C1, C2)
    else:
        per_channel, _ = torch.ops.vmd_fast.ssim_forward(x, y, list(taps), C1, C2, _grad_mode(x, y))
    return _reduce(per_channel, x.dtype, size_average, nonnegative_ssim)


class SSIMReference:
    r"""SSIM against fixed reference images, with their window statistics cached.

    ZOOM compares every edit of an image with the same original; blurring the originals'
    moments once saves two of the five blurs of every later comparison. ``x`` may hold
    ``k`` images per reference (``x.shape[0] == k * y.shape[0]``): ``x[b]`` is compared
    with ``y[b // k]``, the layout of a batch of images x attributes flattened image-major.

    Args:
        y: reference images :math:`(R, C, H, W)` (detached: gradients flow to ``x`` only).
        data_range, win_size, win_sigma, win, K: as in :func:`ssim`.
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``.

    Example:
        >>> y = torch.rand(2, 3, 16, 16)
        >>> ref = SSIMReference(y)
        >>> edits = y.repeat_interleave(4, dim=0)  # 4 edits per original
        >>> ref(edits, size_average=False).shape
        torch.Size([8])
    """

    def __init__(
        self,
        y: torch.Tensor,
        data_range: float = 1.0,
        win_size: int = 11,
        win_sigma: float = 1.5,
        win: Optional[torch.Tensor] = None,
        K: Sequence[float] = (0.01, 0.03),
        *,
        backend: str = "auto",
    ) -> None:
        self.taps = _window_taps(win_size, win_sigma, win)
        _check_images(y, "y", len(self.taps))
        check_finite(y, "y")
        self.C1, self.C2 = _constants(data_range, K)
        self.backend = backend
        self.y = y.detach()
        self._compiled = use_compiled(backend, y.device)
        with torch.no_grad():
            if self._compiled:
                self.mu_y, self.e_yy = torch.ops.vmd_fast.ssim_reference_stats(self.y, list(self.taps))
            else:
                window = torch.tensor(self.taps, dtype=torch.float64)
                self.mu_y, self.e_yy = reference.ssim_reference_stats(self.y, window)

    @property
    def shape(self) -> torch.Size:
        """Shape of the reference images."""
        return self.y.shape

    def ssim(self, x: torch.Tensor, size_average: bool = True, nonnegative_ssim: bool = False) -> torch.Tensor:
        """SSIM of ``x`` (:math:`(kR, C, H, W)`) against the references.

        Returns:
            A scalar, or :math:`(kR,)` without ``size_average``; dtype of ``x``.
        """
        check_like(x, self.y, "x", "the reference images", shape=False)
        if x.dim() != 4 or x.shape[1:] != self.y.shape[1:]:
            raise ValueError(
                f"x must have shape (k * {self.y.shape[0]}, {', '.join(map(str, self.y.shape[1:]))}), "
                f"got {tuple(x.shape)}"
            )
        if x.shape[0] % self.y.shape[0]:
            raise ValueError(
                f"the batch of x ({x.shape[0]}) must be a multiple of the number of references "
                f"({self.y.shape[0]})"
            )
        check_finite(x, "x")
        if not self._compiled:
            window = torch.tensor(self.taps, dtype=torch.float64)
            per_channel = reference.ssim_per_channel(
                x, self.y, window, self.C1, self.C2, stats=(self.mu_y, self.e_yy)
            )
        else:
            per_channel, _ = torch.ops.vmd_fast.ssim_cached_forward(
                x, self.y, self.mu_y, self.e_yy, list(self.taps), self.C1, self.C2, _grad_mode(x, None)
            )
        return _reduce(per_channel, x.dtype, size_average, nonnegative_ssim)

    __call__ = ssim


def _ssim_setup_context(ctx, inputs, output):
    x, y, window, C1, C2, _ = inputs
    _, maps = output
    ctx.mark_non_differentiable(maps)
    ctx.window, ctx.C1, ctx.C2 = window, C1, C2
    ctx.save_for_backward(x, y, maps)


def _ssim_backward(ctx, grad_ssim, _grad_maps):
    x, y, maps = ctx.saved_tensors
    want_y = ctx.needs_input_grad[1]
    if maps.numel() == 0 or (want_y and maps.shape[0] != 4):
        # The forward ran without keeping the partials (e.g. a direct op call).
        _, maps = torch.ops.vmd_fast.ssim_forward(x, y, ctx.window, ctx.C1, ctx.C2, 2 if want_y else 1)
    grad_x, grad_y = torch.ops.vmd_fast.ssim_backward(grad_ssim.contiguous(), x, y, maps, ctx.window)
    return grad_x, (grad_y if want_y else None), None, None, None, None


def _cached_setup_context(ctx, inputs, output):
    x, y, mu_y, e_yy, window, C1, C2, _ = inputs
    _, maps = output
    ctx.mark_non_differentiable(maps)
    ctx.window, ctx.C1, ctx.C2 = window, C1, C2
    ctx.save_for_backward(x, y, mu_y, e_yy, maps)


def _cached_backward(ctx, grad_ssim, _grad_maps):
    x, y, mu_y, e_yy, maps = ctx.saved_tensors
    if maps.numel() == 0:
        _, maps = torch.ops.vmd_fast.ssim_cached_forward(x, y, mu_y, e_yy, ctx.window, ctx.C1, ctx.C2, 1)
    grad_x, _ = torch.ops.vmd_fast.ssim_backward(grad_ssim.contiguous(), x, y, maps, ctx.window)
    return grad_x, None, None, None, None, None, None, None


def _fake_forward(x, window, grad_mode, nmaps_for_mode):
    k = len(window)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    n, c, h, w = x.shape
    nmaps = nmaps_for_mode[grad_mode]
    maps = x.new_empty((nmaps, n, c, h - k + 1, w - k + 1) if nmaps else (0,), dtype=acc)
    return x.new_empty((n, c), dtype=acc), maps


if has_compiled_ops():

    @torch.library.register_fake("vmd_fast::ssim_forward")
    def _(x, y, window, C1, C2, grad_mode):
        return _fake_forward(x, window, grad_mode, {0: 0, 1: 3, 2: 4})

    @torch.library.register_fake("vmd_fast::ssim_cached_forward")
    def _(x, y, mu_y, e_yy, window, C1, C2, grad_mode):
        return _fake_forward(x, window, grad_mode, {0: 0, 1: 3})

    @torch.library.register_fake("vmd_fast::ssim_reference_stats")
    def _(y, window):
        k = len(window)
        acc = torch.float64 if y.dtype == torch.float64 else torch.float32
        n, c, h, w = y.shape
        shape = (n, c, h - k + 1, w - k + 1)
        return y.new_empty(shape, dtype=acc), y.new_empty(shape, dtype=acc)

    @torch.library.register_fake("vmd_fast::ssim_backward")
    def _(grad, x, y, grad_maps, window):
        grad_y = torch.empty_like(y, memory_format=torch.contiguous_format) if grad_maps.shape[0] == 4 else y.new_empty((0,))
        return torch.empty_like(x, memory_format=torch.contiguous_format), grad_y

    torch.library.register_autograd(
        "vmd_fast::ssim_forward", _ssim_backward, setup_context=_ssim_setup_context
    )
    torch.library.register_autograd(
        "vmd_fast::ssim_cached_forward", _cached_backward, setup_context=_cached_setup_context
    )

    # Under autocast: float32 on inputs cast to float32, since SSIM's variances are
    # differences of windowed moments that bf16 would cancel (and a bf16 edit meets
    # float32 cached reference statistics).
    for _op in ("vmd_fast::ssim_forward", "vmd_fast::ssim_cached_forward", "vmd_fast::ssim_reference_stats",
                "vmd_fast::ssim_backward"):
        for _device in ("cpu", "cuda"):
            torch.library.register_autocast(_op, _device, torch.float32)
