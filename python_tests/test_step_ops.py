"""projected_sign_step and clamp_gd_step: every backend against the reference."""

import pytest
import torch

import vmd_fast.ops as ops
from vmd_fast.ops import reference

from conftest import HAS_CUDA

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
SHAPES = [(64, 3, 8, 8), (5, 7), (3, 1, 5, 11), (1,), (2, 3, 1, 1)]


def _tol(dtype):
    # Kernels compute in float32 and round once; the half-precision reference rounds after
    # every op, so they may differ by a rounding step of the result (values are in [0, 1]).
    return {torch.float16: 2e-3, torch.bfloat16: 1.6e-2}.get(dtype, 1e-6)


def _case(shape, dtype, device, gen, per_sample):
    x0 = torch.rand(shape, generator=gen, dtype=torch.float64)
    x = (x0 + 0.02 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    grad = torch.randn(shape, generator=gen, dtype=torch.float64)
    grad[..., 0] = 0.0  # sign(0) = 0: no move
    n = shape[0]
    if per_sample:
        step = torch.rand(n, generator=gen, dtype=torch.float64) * 0.02
        eps = torch.rand(n, generator=gen, dtype=torch.float64) * 0.03
        step, eps = step.to(device, dtype), eps.to(device, dtype)
    else:
        step, eps = 0.01, 0.015
    cast = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
    return cast(x), cast(grad), cast(x0), step, eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_projected_sign_step_matches_reference(compiled, dtype, shape, per_sample, gen):
    backend, device = compiled
    x, grad, origin, step, eps = _case(shape, dtype, device, gen, per_sample)
    got = ops.projected_sign_step(x, grad, origin, step, eps, 0.0, 1.0, backend=backend)
    want = reference.projected_sign_step(x, grad, origin, step, eps, 0.0, 1.0)
    assert got.dtype == dtype and got.shape == x.shape
    torch.testing.assert_close(got, want, atol=_tol(dtype), rtol=0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("per_sample", [False, True])
def test_clamp_gd_step_matches_reference(compiled, dtype, shape, per_sample, gen):
    backend, device = compiled
    w = (torch.randn(shape, generator=gen) * 20).to(device, dtype)
    grad = (torch.randn(shape, generator=gen) * 30).to(device, dtype)
    if per_sample:
        lr = (torch.rand(shape[0], generator=gen) * 0.4).to(device, dtype)
        eps = (torch.rand(shape[0], generator=gen) * 30).to(device, dtype)
    else:
        lr, eps = 0.2, 30.0
    got = ops.clamp_gd_step(w, grad, lr, eps, backend=backend)
    want = reference.clamp_gd_step(w, grad, lr, eps)
    tol = {torch.float16: 5e-2, torch.bfloat16: 0.25}.get(dtype, 1e-5)
    torch.testing.assert_close(got, want, atol=tol, rtol=1e-2 if tol > 1e-5 else 1e-6)


def test_projected_sign_step_stays_in_ball_and_range(compiled, gen):
    backend, device = compiled
    x, grad, origin, _, _ = _case((32, 3, 16, 16), torch.float32, device, gen, False)
    eps = 0.02
    for _ in range(10):
        x = ops.projected_sign_step(x, grad, origin, 0.01, eps, backend=backend)
        grad = torch.randn(x.shape, generator=gen).to(device)
    assert float((x - origin).abs().max()) <= eps + 1e-6
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_step_ops_handle_layouts(compiled, layout, gen):
    backend, device = compiled
    x, grad, origin, step, eps = _case((6, 3, 9, 7), torch.float32, device, gen, True)

    def arrange(t):
        if layout == "channels_last":
            return t.contiguous(memory_format=torch.channels_last)
        if layout == "transposed":
            return t.transpose(2, 3).contiguous().transpose(2, 3)
        return t

    xs, gs = arrange(x), arrange(grad)
    got = ops.projected_sign_step(xs, gs, origin, step, eps, backend=backend)
    torch.testing.assert_close(got, reference.projected_sign_step(x, grad, origin, step, eps), atol=1e-6, rtol=0)
    w = arrange(torch.randn(6, 3, 9, 7, generator=gen).to(device))
    g = torch.randn(6, 3, 9, 7, generator=gen).to(device)
    torch.testing.assert_close(ops.clamp_gd_step(w, g, 0.2, 1.0, backend=backend), reference.clamp_gd_step(w, g, 0.2, 1.0))


def test_step_ops_update_in_place_and_into_out(any_backend, gen):
    backend, device = any_backend
    x, grad, origin, step, eps = _case((4, 3, 5, 5), torch.float32, device, gen, True)
    want = reference.projected_sign_step(x, grad, origin, step, eps)
    x_inplace = x.clone()
    result = ops.projected_sign_step(x_inplace, grad, origin, step, eps, out=x_inplace, backend=backend)
    assert result is x_inplace
    torch.testing.assert_close(x_inplace, want, atol=1e-6, rtol=0)
    out = torch.empty_like(x)
    assert ops.projected_sign_step(x, grad, origin, step, eps, out=out, backend=backend) is out
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
    # A view of x counts as x.
    x_view = x.clone()
    ops.projected_sign_step(x_view[:], grad, origin, step, eps, out=x_view, backend=backend)
    torch.testing.assert_close(x_view, want, atol=1e-6, rtol=0)
    w = torch.randn(5, 4, generator=gen).to(device)
    w_want = reference.clamp_gd_step(w, w, 0.2, 0.5)
    ops.clamp_gd_step(w, w.clone(), 0.2, 0.5, out=w, backend=backend)
    torch.testing.assert_close(w, w_want)


def test_step_ops_ignore_autograd_history(compiled, gen):
    backend, device = compiled
    x = torch.rand(3, 4, generator=gen).to(device).requires_grad_()
    out = ops.projected_sign_step(x, torch.ones(3, 4, device=device), x.detach(), 0.1, 0.2, backend=backend)
    assert not out.requires_grad
    # In place on a leaf that requires grad works like an optimiser update.
    ops.clamp_gd_step(x, torch.ones(3, 4, device=device), 0.1, 1.0, out=x, backend=backend)


def test_step_ops_are_deterministic(compiled, gen):
    backend, device = compiled
    x, grad, origin, step, eps = _case((128, 3, 17, 17), torch.float32, device, gen, True)
    first = ops.projected_sign_step(x, grad, origin, step, eps, backend=backend)
    second = ops.projected_sign_step(x, grad, origin, step, eps, backend=backend)
    assert torch.equal(first, second)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda x: dict(grad=x[:, :2]), "grad must have the shape of x"),
        (lambda x: dict(grad=x.double()), "grad must have the dtype of x"),
        (lambda x: dict(origin=x.half()), "origin must have the dtype of x"),
        (lambda x: dict(eps=-0.1), "eps must be >= 0"),
        (lambda x: dict(eps=torch.tensor([0.1, -0.1, 0.1, 0.1], device=x.device)), "eps must be >= 0"),
        (lambda x: dict(eps=torch.full((4,), 0.1, device="meta")), "eps must be on"),
        (lambda x: dict(step=float("nan")), "step must be finite"),
        (lambda x: dict(step=torch.ones(3, device=x.device)), r"step must be a scalar or hold one value per sample"),
        (lambda x: dict(grad=torch.full_like(x, float("nan"))), "grad contains NaN or Inf"),
        (lambda x: dict(x=torch.full_like(x, float("inf"))), "x contains NaN or Inf"),
        (lambda x: dict(lo=1.0, hi=0.0), "lo must be <= hi"),
        (lambda x: dict(x=x.long()), "x must be a floating-point tensor"),
        (lambda x: dict(out=x[:, :1]), "out must have the shape of x"),
        (lambda x: dict(backend="gpu"), "backend must be one of"),
    ],
)
def test_projected_sign_step_rejects_bad_input(any_backend, make, match):
    backend, device = any_backend
    x = torch.rand(4, 3, 8, 8, device=device)
    args = dict(x=x, grad=torch.randn_like(x), origin=x.clone(), step=0.01, eps=0.03, lo=0.0, hi=1.0, backend=backend)
    args.update(make(x))
    with pytest.raises((ValueError, TypeError), match=match):
        ops.projected_sign_step(**args)


def test_projected_sign_step_rejects_overlapping_out(any_backend):
    backend, device = any_backend
    buf = torch.rand(5, 4, device=device)
    x = buf[:4]
    with pytest.raises(ValueError, match="out partially overlaps"):
        ops.projected_sign_step(x, torch.ones_like(x), x.clone(), 0.1, 0.1, out=buf[1:], backend=backend)


def test_clamp_gd_step_rejects_bad_input(any_backend):
    backend, device = any_backend
    w = torch.zeros(3, 4, device=device)
    with pytest.raises(ValueError, match="eps must be >= 0"):
        ops.clamp_gd_step(w, w, 0.2, -1.0, backend=backend)
    with pytest.raises(ValueError, match="grad must have the shape of w"):
        ops.clamp_gd_step(w, w[:, :2], 0.2, 1.0, backend=backend)
    with pytest.raises(ValueError, match="lr must be a scalar or hold one value per sample"):
        ops.clamp_gd_step(w, w, torch.ones(2, device=device), 1.0, backend=backend)
    with pytest.raises(ValueError, match="grad contains NaN"):
        ops.clamp_gd_step(w, torch.full_like(w, float("nan")), 0.2, 1.0, backend=backend)


def test_value_checks_can_be_turned_off(compiled):
    backend, device = compiled
    w = torch.zeros(3, 4, device=device)
    with ops.value_checks(False):
        assert not ops.value_checks_enabled()
        out = ops.clamp_gd_step(w, torch.full_like(w, float("nan")), 0.2, 1.0, backend=backend)
    assert ops.value_checks_enabled()
    assert out.shape == w.shape


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_step_ops_reject_mixed_devices():
    x = torch.rand(2, 3, device="cuda")
    with pytest.raises(ValueError, match="grad must be on the device of x"):
        ops.projected_sign_step(x, torch.ones(2, 3), x, 0.1, 0.1)
    with pytest.raises(ValueError, match="backend='cpp' runs on CPU tensors"):
        ops.projected_sign_step(x, x, x, 0.1, 0.1, backend="cpp")


@pytest.mark.parametrize("variant", ["functional", "inplace", "out"])
def test_step_ops_pass_opcheck(compiled, variant, gen):
    _, device = compiled
    x = torch.rand(4, 3, 5, 5, generator=gen).to(device)
    grad = torch.randn(4, 3, 5, 5, generator=gen).to(device)
    step = torch.full((4,), 0.01, device=device)
    eps = torch.tensor(0.03)
    vf = torch.ops.vmd_fast
    if variant == "functional":
        torch.library.opcheck(vf.projected_sign_step, (x, grad, x.clone(), step, eps, 0.0, 1.0))
        torch.library.opcheck(vf.clamp_gd_step, (grad, x, step, eps))
    elif variant == "inplace":
        torch.library.opcheck(vf.projected_sign_step_, (x.clone(), grad, x, step, eps, 0.0, 1.0))
        torch.library.opcheck(vf.clamp_gd_step_, (grad.clone(), x, step, eps))
    else:
        torch.library.opcheck(vf.projected_sign_step_out, (x, grad, x, step, eps, 0.0, 1.0, torch.empty_like(x)))
        torch.library.opcheck(vf.clamp_gd_step_out, (grad, x, step, eps, torch.empty_like(x)))
