"""Batched update steps: SIA's projected sign step and ZOOM's clamped gradient step.

Both are optimiser updates, not differentiable functions: they run without autograd
recording and may update their input in place (``out=x``).
"""

from __future__ import annotations

from typing import Optional, Union

import torch

from vmd_fast.ops import reference
from vmd_fast.ops._backend import (
    check_finite,
    check_like,
    check_number,
    check_tensor,
    has_compiled_ops,
    per_sample_param,
    use_compiled,
)

PerSample = Union[float, torch.Tensor]


def _aliases(a: torch.Tensor, b: torch.Tensor) -> bool:
    """True when ``a`` and ``b`` are the same tensor or view exactly the same memory
    (under torch.compile, where data pointers are not traceable, only the former)."""
    if a is b:
        return True
    if torch.compiler.is_compiling():
        return False
    return (
        a.data_ptr() == b.data_ptr()
        and a.shape == b.shape
        and a.stride() == b.stride()
        and a.device == b.device
    )


def _check_out(out: Optional[torch.Tensor], x: torch.Tensor, x_name: str, inputs: dict) -> None:
    if out is None:
        return
    check_like(out, x, "out", x_name)
    if torch.compiler.is_compiling():
        return
    for name, t in {x_name: x, **inputs}.items():
        if not _aliases(out, t) and _overlaps(out, t):
            raise ValueError(f"out partially overlaps {name}; pass out={x_name} or a separate tensor")


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.numel() == 0 or b.numel() == 0 or a.untyped_storage().data_ptr() != b.untyped_storage().data_ptr():
        return False
    size = a.element_size()

    def span(t: torch.Tensor):
        start = t.data_ptr()
        last = start + size * sum((d - 1) * s for d, s in zip(t.shape, t.stride()))
        return start, last + size

    a0, a1 = span(a)
    b0, b1 = span(b)
    return a0 < b1 and b0 < a1


def _write(result: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    if out is None:
        return result
    out.copy_(result)
    return out


@torch.no_grad()
def projected_sign_step(
    x: torch.Tensor,
    grad: torch.Tensor,
    origin: torch.Tensor,
    step: PerSample,
    eps: PerSample,
    lo: float = 0.0,
    hi: float = 1.0,
    out: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""One projected sign-gradient step of PGD / SIA (thesis Algorithm 1).

    .. math::
        x \leftarrow \mathrm{clip}_{[lo, hi]}\big(\Pi_{B_\infty(origin, \epsilon)}
        (x + \eta\,\mathrm{sign}(\nabla))\big)

    One fused pass over the batch: a single read of ``x``, ``grad`` and ``origin`` and a
    single write, with per-sample step sizes and budgets.

    Args:
        x: current iterate, shape :math:`(N, *)` (images ``(N, C, H, W)`` or attribute
            codes ``(N, A)``), any floating dtype.
        grad: gradient of the loss to *ascend*, same shape, dtype and device as ``x``.
        origin: centre of the :math:`\ell_\infty` ball (the clean input), same as ``x``.
        step: step size :math:`\eta`, a number or one value per sample (shape ``(N,)``).
        eps: ball radius :math:`\epsilon \ge 0`, a number or one value per sample.
        lo: lower bound of the valid range. Default: 0.
        hi: upper bound of the valid range, ``hi >= lo``. Default: 1.
        out: where to write the result; ``out=x`` updates ``x`` in place. Default: a new
            tensor.
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"`` (see :mod:`vmd_fast.ops`).

    Returns:
        The updated iterate, shape of ``x`` (``out`` when given).

    Example:
        >>> x0 = torch.full((2, 3), 0.5)
        >>> g = torch.tensor([[1.0, -2.0, 0.0], [3.0, 3.0, -1.0]])
        >>> projected_sign_step(x0, g, x0, step=0.1, eps=0.05)
        tensor([[0.5500, 0.4500, 0.5000],
                [0.5500, 0.5500, 0.4500]])
    """
    check_tensor(x, "x")
    check_like(grad, x, "grad", "x")
    check_like(origin, x, "origin", "x")
    lo = check_number(lo, "lo")
    hi = check_number(hi, "hi")
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got lo={lo:g}, hi={hi:g}")
    step_t = per_sample_param(step, x, "step")
    eps_t = per_sample_param(eps, x, "eps", nonnegative=True)
    _check_out(out, x, "x", {"grad": grad, "origin": origin})
    for t, name in ((x, "x"), (grad, "grad"), (origin, "origin")):
        check_finite(t, name)
    if not use_compiled(backend, x.device):
        ref_step = step if not isinstance(step, torch.Tensor) else step_t
        ref_eps = eps if not isinstance(eps, torch.Tensor) else eps_t
        return _write(reference.projected_sign_step(x, grad, origin, ref_step, ref_eps, lo, hi), out)
    ops = torch.ops.vmd_fast
    if out is None:
        return ops.projected_sign_step(x, grad, origin, step_t, eps_t, lo, hi)
    if _aliases(out, x):
        ops.projected_sign_step_(x, grad, origin, step_t, eps_t, lo, hi)
        return x
    ops.projected_sign_step_out(x, grad, origin, step_t, eps_t, lo, hi, out)
    return out


@torch.no_grad()
def clamp_gd_step(
    w: torch.Tensor,
    grad: torch.Tensor,
    lr: PerSample,
    eps: PerSample,
    out: Optional[torch.Tensor] = None,
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""One clamped gradient-descent step of ZOOM's edit weights (thesis Eq. 3.10).

    .. math::
        w \leftarrow \mathrm{clamp}_{[-\epsilon, \epsilon]}(w - \eta \nabla_w \mathcal{L})

    Args:
        w: edit weights, shape :math:`(N, *)` (e.g. images x attributes ``(N, A)``).
        grad: gradient of the loss, same shape, dtype and device as ``w``.
        lr: step size :math:`\eta` (thesis: 0.2), a number or one value per sample.
        eps: clamp bound :math:`\epsilon \ge 0` (thesis: 30), a number or per sample.
        out: where to write the result; ``out=w`` updates in place. Default: new tensor.
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``.

    Returns:
        The updated weights, shape of ``w``.

    Example:
        >>> w = torch.tensor([[0.0, 29.9]])
        >>> clamp_gd_step(w, torch.tensor([[1.0, -1.0]]), lr=0.2, eps=30.0)
        tensor([[-0.2000, 30.0000]])
    """
    check_tensor(w, "w")
    check_like(grad, w, "grad", "w")
    lr_t = per_sample_param(lr, w, "lr")
    eps_t = per_sample_param(eps, w, "eps", nonnegative=True)
    _check_out(out, w, "w", {"grad": grad})
    check_finite(w, "w")
    check_finite(grad, "grad")
    if not use_compiled(backend, w.device):
        ref_lr = lr if not isinstance(lr, torch.Tensor) else lr_t
        ref_eps = eps if not isinstance(eps, torch.Tensor) else eps_t
        return _write(reference.clamp_gd_step(w, grad, ref_lr, ref_eps), out)
    ops = torch.ops.vmd_fast
    if out is None:
        return ops.clamp_gd_step(w, grad, lr_t, eps_t)
    if _aliases(out, w):
        ops.clamp_gd_step_(w, grad, lr_t, eps_t)
        return w
    ops.clamp_gd_step_out(w, grad, lr_t, eps_t, out)
    return out


if has_compiled_ops():

    @torch.library.register_fake("vmd_fast::projected_sign_step")
    def _(x, grad, origin, step, eps, lo, hi):
        return torch.empty_like(x)

    @torch.library.register_fake("vmd_fast::projected_sign_step_")
    def _(x, grad, origin, step, eps, lo, hi):
        return None

    @torch.library.register_fake("vmd_fast::projected_sign_step_out")
    def _(x, grad, origin, step, eps, lo, hi, out):
        return None

    @torch.library.register_fake("vmd_fast::clamp_gd_step")
    def _(w, grad, lr, eps):
        return torch.empty_like(w)

    @torch.library.register_fake("vmd_fast::clamp_gd_step_")
    def _(w, grad, lr, eps):
        return None

    @torch.library.register_fake("vmd_fast::clamp_gd_step_out")
    def _(w, grad, lr, eps, out):
        return None
