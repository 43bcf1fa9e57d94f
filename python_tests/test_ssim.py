"""Fused SSIM: skimage and pytorch_msssim agreement, gradients, the reference cache."""

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import structural_similarity

import vmd_fast.ops as ops
from vmd_fast.ops import reference

from conftest import HAS_CUDA


def _image(name):
    img = getattr(skdata, name)().astype(np.float64) / 255.0
    if img.ndim == 2:
        img = img[..., None]
    return img


def _distortions(img, rng):
    """Distorted versions of an image in [0, 1] (H, W, C)."""
    noisy = np.clip(img + rng.normal(0, 0.08, img.shape), 0, 1)
    dark = np.clip(img * 0.7 + 0.05, 0, 1)
    shifted = np.roll(img, 3, axis=1)
    blocky = np.repeat(np.repeat(img[::4, ::4], 4, axis=0), 4, axis=1)[: img.shape[0], : img.shape[1]]
    return {"noise": noisy, "contrast": dark, "shift": shifted, "blocky": blocky}


def _to_tensor(img, device, dtype=torch.float64):
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))[None].to(device, dtype)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "camera"])
def test_ssim_matches_skimage(any_backend, name):
    backend, device = any_backend
    rng = np.random.default_rng(0)
    img = _image(name)
    for label, distorted in _distortions(img, rng).items():
        want = structural_similarity(
            img, distorted, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
            data_range=1.0, channel_axis=2,
        )
        for dtype in (torch.float64, torch.float32):
            got = ops.ssim(_to_tensor(img, device, dtype), _to_tensor(distorted, device, dtype), backend=backend)
            assert abs(float(got) - want) < 1e-4, (label, dtype, float(got), want)


def test_ssim_matches_skimage_at_data_range_255(compiled):
    backend, device = compiled
    img = _image("chelsea") * 255.0
    noisy = np.clip(img + np.random.default_rng(1).normal(0, 20, img.shape), 0, 255)
    want = structural_similarity(
        img, noisy, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255.0, channel_axis=2,
    )
    got = ops.ssim(_to_tensor(img, device), _to_tensor(noisy, device), data_range=255.0, backend=backend)
    assert abs(float(got) - want) < 1e-4


def _pair(shape, gen, device, dtype=torch.float32):
    x = torch.rand(shape, generator=gen, dtype=torch.float64)
    y = (x + 0.15 * torch.randn(shape, generator=gen, dtype=torch.float64)).clamp(0, 1)
    return x.to(device, dtype), y.to(device, dtype)


def test_ssim_matches_pytorch_msssim(compiled, gen):
    from pytorch_msssim import ssim as msssim_ssim

    backend, device = compiled
    x, y = _pair((4, 3, 32, 40), gen, device)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = ops.ssim(xa, ya, data_range=1.0, size_average=False, backend=backend)
    want = msssim_ssim(xb, yb, data_range=1.0, size_average=False)
    torch.testing.assert_close(got, want, atol=2e-6, rtol=0)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-7, rtol=1e-4)
    torch.testing.assert_close(ya.grad, yb.grad, atol=1e-7, rtol=1e-4)


SHAPES = [(2, 3, 11, 11), (3, 1, 13, 17), (1, 4, 31, 12), (5, 3, 64, 64)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("win_size", [11, 7])
def test_ssim_values_and_gradients_match_reference(compiled, shape, win_size, gen):
    backend, device = compiled
    if min(shape[2:]) < win_size:
        pytest.skip("image smaller than the window")
    x, y = _pair(shape, gen, device, torch.float64)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    xb, yb = x.clone().requires_grad_(), y.clone().requires_grad_()
    got = ops.ssim(xa, ya, size_average=False, win_size=win_size, backend=backend)
    want = reference.ssim(xb, yb, size_average=False, win_size=win_size)
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-10)
    weights = torch.linspace(0.5, 1.5, shape[0], dtype=torch.float64, device=device)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(ya.grad, yb.grad, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("layout", ["channels_last", "transposed", "sliced"])
def test_ssim_handles_non_contiguous_inputs(compiled, layout, gen):
    backend, device = compiled
    x, y = _pair((3, 3, 24, 20), gen, device)
    if layout == "channels_last":
        xs, ys = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    elif layout == "transposed":
        xs, ys = (t.transpose(2, 3).contiguous().transpose(2, 3) for t in (x, y))
    else:
        big_x, big_y = (torch.cat([t, t], dim=3) for t in (x, y))
        xs, ys = big_x[..., :20], big_y[..., :20]
    xs = xs.detach().requires_grad_()
    got = ops.ssim(xs, ys, backend=backend)
    got.backward()
    xr = x.clone().requires_grad_()
    want = reference.ssim(xr, y)
    want.backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(xs.grad, xr.grad, atol=1e-7, rtol=1e-4)


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2)])
def test_ssim_half_precision_is_close_to_float32(compiled, dtype, tol, gen):
    backend, device = compiled
    x, y = _pair((4, 3, 32, 32), gen, device)
    xh, yh = x.to(dtype), y.to(dtype)
    xa = xh.clone().requires_grad_()
    got = ops.ssim(xa, yh, size_average=False, backend=backend)
    assert got.dtype == dtype
    got.sum().backward()
    assert xa.grad.dtype == dtype
    # Ground truth: float32 SSIM of the same (rounded) inputs.
    xr = xh.float().requires_grad_()
    want = reference.ssim(xr, yh.float(), size_average=False)
    want.sum().backward()
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=0)
    scale = float(xr.grad.abs().max())
    torch.testing.assert_close(xa.grad.float(), xr.grad, atol=tol * scale * 10, rtol=0)


def test_ssim_gradcheck_float64(compiled, gen):
    backend, device = compiled
    x, y = _pair((2, 2, 9, 10), gen, device, torch.float64)
    x.requires_grad_()
    y.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: ops.ssim(a, b, win_size=5, size_average=False, backend=backend), (x, y)
    )


def test_ssim_options_follow_pytorch_msssim(compiled, gen):
    from pytorch_msssim import ssim as msssim_ssim

    backend, device = compiled
    x, y = _pair((3, 3, 20, 20), gen, device)
    y = 1 - y  # strongly anti-correlated: negative SSIM
    for kwargs in (
        dict(nonnegative_ssim=True),
        dict(win_size=7, win_sigma=1.0),
        dict(K=(0.02, 0.05), data_range=2.0),
        dict(size_average=False),
    ):
        got = ops.ssim(x, y, backend=backend, **{"data_range": 1.0, **kwargs})
        want = msssim_ssim(x, y, **{"data_range": 1.0, **kwargs})
        torch.testing.assert_close(got, want, atol=2e-6, rtol=0, msg=str(kwargs))
    # pytorch_msssim's explicit window layout (C, 1, 1, K)
    from pytorch_msssim.ssim import _fspecial_gauss_1d

    win = _fspecial_gauss_1d(9, 2.0).repeat(3, 1, 1, 1).to(device)
    torch.testing.assert_close(
        ops.ssim(x, y, win=win, backend=backend), msssim_ssim(x, y, data_range=1.0, win=win), atol=2e-6, rtol=0
    )


@pytest.mark.parametrize("per_ref", [1, 5])
def test_ssim_reference_cache_matches_ssim(any_backend, per_ref, gen):
    backend, device = any_backend
    y = torch.rand(3, 3, 20, 23, generator=gen).to(device)
    edits = (y.repeat_interleave(per_ref, 0) + 0.1 * torch.randn(3 * per_ref, 3, 20, 23, generator=gen).to(device)).clamp(0, 1)
    cache = ops.SSIMReference(y, backend=backend)
    xa = edits.clone().requires_grad_()
    got = cache(xa, size_average=False)
    got.sum().backward()
    xb = edits.clone().requires_grad_()
    want = reference.ssim(xb, y.repeat_interleave(per_ref, 0), size_average=False)
    want.sum().backward()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-7, rtol=1e-4)


def test_ssim_reference_cache_rejects_mismatched_edits(any_backend):
    backend, device = any_backend
    cache = ops.SSIMReference(torch.rand(2, 3, 16, 16, device=device), backend=backend)
    with pytest.raises(ValueError, match="must be a multiple of the number of references"):
        cache(torch.rand(3, 3, 16, 16, device=device))
    with pytest.raises(ValueError, match=r"x must have shape \(k \* 2, 3, 16, 16\)"):
        cache(torch.rand(2, 3, 16, 17, device=device))
    with pytest.raises(TypeError, match="x must have the dtype of the reference images"):
        cache(torch.rand(2, 3, 16, 16, device=device, dtype=torch.float64))


@pytest.mark.parametrize(
    "kwargs, match, error",
    [
        (dict(x=torch.rand(3, 16, 16)), r"x must have 4 dimensions", ValueError),
        (dict(y=torch.rand(2, 3, 16, 15)), "y must have the shape of x", ValueError),
        (dict(y=torch.rand(2, 3, 16, 16, dtype=torch.float64)), "y must have the dtype of x", TypeError),
        (dict(x=torch.rand(2, 3, 8, 16), y=torch.rand(2, 3, 8, 16)), "smaller than the 11-tap SSIM window", ValueError),
        (dict(win_size=10), "win_size must be odd", ValueError),
        (dict(win_size=33), "win_size must be odd", ValueError),
        (dict(win_sigma=0.0), "win_sigma must be > 0", ValueError),
        (dict(data_range=0.0), "data_range must be > 0", ValueError),
        (dict(data_range=float("inf")), "data_range must be finite", ValueError),
        (dict(K=(0.01,)), "K must be a pair", ValueError),
        (dict(y=torch.full((2, 3, 16, 16), float("nan"))), "y contains NaN or Inf", ValueError),
        (dict(x=torch.randint(0, 255, (2, 3, 16, 16))), "x must be a floating-point tensor", TypeError),
    ],
)
def test_ssim_rejects_bad_input(any_backend, kwargs, match, error):
    backend, device = any_backend
    args = dict(x=torch.rand(2, 3, 16, 16), y=torch.rand(2, 3, 16, 16))
    args.update(kwargs)
    args = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in args.items()}
    with pytest.raises(error, match=match):
        ops.ssim(backend=backend, **args)


def test_ssim_is_deterministic(compiled, gen):
    backend, device = compiled
    x, y = _pair((8, 3, 48, 48), gen, device)
    x.requires_grad_()
    first = ops.ssim(x, y, backend=backend)
    (g1,) = torch.autograd.grad(first, x)
    second = ops.ssim(x, y, backend=backend)
    (g2,) = torch.autograd.grad(second, x)
    assert torch.equal(first, second) and torch.equal(g1, g2)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_ssim_cuda_matches_cpu(gen):
    x, y = _pair((6, 3, 70, 45), gen, "cpu")
    xc, yc = x.clone().requires_grad_(), y.clone().requires_grad_()
    xg, yg = x.cuda().requires_grad_(), y.cuda().requires_grad_()
    a = ops.ssim(xc, yc, size_average=False, backend="cpp")
    b = ops.ssim(xg, yg, size_average=False, backend="cuda")
    torch.testing.assert_close(a, b.cpu(), atol=1e-6, rtol=0)
    a.sum().backward()
    b.sum().backward()
    torch.testing.assert_close(xc.grad, xg.grad.cpu(), atol=1e-8, rtol=1e-4)
    torch.testing.assert_close(yc.grad, yg.grad.cpu(), atol=1e-8, rtol=1e-4)


def test_ssim_ops_pass_opcheck(compiled, gen):
    _, device = compiled
    x, y = _pair((2, 3, 14, 13), gen, device)
    taps = list(reference.gaussian_window(5, 1.5).tolist())
    vf = torch.ops.vmd_fast
    xg = x.clone().requires_grad_()
    yg = y.clone().requires_grad_()
    for mode in (0, 1, 2):
        torch.library.opcheck(vf.ssim_forward, (xg, yg, taps, 1e-4, 9e-4, mode))
    mu, eyy = vf.ssim_reference_stats(y, taps)
    torch.library.opcheck(vf.ssim_reference_stats, (y, taps))
    edits = x.repeat(2, 1, 1, 1).requires_grad_()
    for mode in (0, 1):
        torch.library.opcheck(vf.ssim_cached_forward, (edits, y, mu, eyy, taps, 1e-4, 9e-4, mode))
    _, maps = vf.ssim_forward(x, y, taps, 1e-4, 9e-4, 2)
    torch.library.opcheck(vf.ssim_backward, (torch.rand(2, 3, device=device), x, y, maps, taps))
