"""relevance_directions and relevance_accumulate against the reference and StyleCLIP."""

import pytest
import torch

import vmd_fast.ops as ops
from vmd_fast.ops import reference

MODES = ["l2", "absmax_l2", "absmax", "none"]


def _relevance(channels, dim, attributes, gen, dtype=torch.float32):
    M = torch.nn.functional.normalize(torch.randn(channels, dim, generator=gen, dtype=torch.float64), dim=1)
    dt = torch.nn.functional.normalize(torch.randn(attributes, dim, generator=gen, dtype=torch.float64), dim=1)
    return M.to(dtype), dt.to(dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 5, 3), (1000, 64, 12), (6048, 128, 40)])
@pytest.mark.parametrize("scaled", [False, True])
def test_relevance_directions_match_reference(compiled, mode, shape, scaled, gen):
    backend, device = compiled
    channels, dim, attributes = shape
    M, dt = _relevance(channels, dim, attributes, gen)
    scale = torch.rand(channels, generator=gen) + 0.5 if scaled else None
    M, dt = M.to(device), dt.to(device)
    scale = scale.to(device) if scaled else None
    threshold = 0.1
    got = ops.relevance_directions(M, dt, threshold, mode, scale, backend=backend)
    want = reference.relevance_directions(M.double(), dt.double(), threshold, mode, None if scale is None else scale.double())
    assert got.shape == (attributes, channels) and got.dtype == M.dtype
    torch.testing.assert_close(got.double(), want, atol=2e-6, rtol=1e-5)


def test_relevance_directions_threshold_drops_weak_channels(compiled, gen):
    backend, device = compiled
    M, dt = _relevance(500, 32, 4, gen)
    M, dt = M.to(device), dt.to(device)
    r = dt @ M.T
    ds = ops.relevance_directions(M, dt, 0.2, "none", backend=backend)
    assert torch.equal(ds != 0, r.abs() >= 0.2)
    unit = ops.relevance_directions(M, dt, 0.2, "l2", backend=backend)
    torch.testing.assert_close(unit.norm(dim=1), torch.ones(4, device=device))
    peak = ops.relevance_directions(M, dt, 0.2, "absmax", backend=backend)
    torch.testing.assert_close(peak.abs().amax(dim=1), torch.ones(4, device=device))


def test_relevance_directions_give_zero_rows_when_nothing_passes(compiled, gen):
    backend, device = compiled
    M, dt = _relevance(50, 8, 3, gen)
    for mode in MODES:
        ds = ops.relevance_directions(M.to(device), dt.to(device), 10.0, mode, backend=backend)
        assert torch.count_nonzero(ds) == 0 and torch.isfinite(ds).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float16, 2e-3), (torch.bfloat16, 1e-2), (torch.float64, 1e-12)])
def test_relevance_directions_other_dtypes(compiled, dtype, tol, gen):
    backend, device = compiled
    M, dt = _relevance(300, 32, 6, gen, dtype)
    M, dt = M.to(device), dt.to(device)
    got = ops.relevance_directions(M, dt, 0.05, "l2", backend=backend)
    assert got.dtype == dtype
    want = reference.relevance_directions(M.double(), dt.double(), 0.05, "l2")
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_relevance_directions_gradients_match_reference(compiled, mode, gen):
    backend, device = compiled
    M, dt = _relevance(40, 6, 3, gen, torch.float64)
    scale = torch.rand(40, generator=gen, dtype=torch.float64) + 0.5
    # Keep every relevance away from the threshold so the mask is locally constant.
    r = dt @ M.T
    threshold = 0.5 * (r.abs().min() + r.abs().median()).item()
    inputs = [t.to(device).requires_grad_() for t in (M, dt, scale)]
    fn = lambda m, d, s: ops.relevance_directions(m, d, threshold, mode, s, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs)
    ref_inputs = [t.detach().clone().requires_grad_() for t in inputs]
    weights = torch.randn(3, 40, generator=gen, dtype=torch.float64).to(device)
    (fn(*inputs) * weights).sum().backward()
    (reference.relevance_directions(ref_inputs[0], ref_inputs[1], threshold, mode, ref_inputs[2]) * weights).sum().backward()
    for a, b in zip(inputs, ref_inputs):
        torch.testing.assert_close(a.grad, b.grad)


def _styleclip_responses(channels, images, dim, gen):
    """Single-channel mutation responses as StyleCLIP's fs3 preprocessing sees them."""
    e_pos = torch.nn.functional.normalize(torch.randn(channels, images, dim, generator=gen), dim=-1)
    e_neg = torch.nn.functional.normalize(torch.randn(channels, images, dim, generator=gen), dim=-1)
    return e_pos - e_neg  # (C, N, D)


def test_relevance_accumulate_reproduces_styleclip_fs3(compiled, gen):
    backend, device = compiled
    channels, images, dim = 64, 7, 16
    deltas = _styleclip_responses(channels, images, dim, gen)
    # StyleCLIP GetFs: normalise each difference, average over images, normalise.
    fs3 = torch.nn.functional.normalize(torch.nn.functional.normalize(deltas, dim=-1).mean(1), dim=-1)
    M = torch.zeros(channels, dim, device=device)
    # Stream the (channel, image) responses in shuffled batches, as a run over images would.
    rows = deltas.reshape(-1, dim)
    index = torch.arange(channels).repeat_interleave(images)
    order = torch.randperm(rows.shape[0], generator=gen)
    for chunk in order.split(50):
        ops.relevance_accumulate(
            M, torch.ones(len(chunk), device=device), rows[chunk].to(device), index[chunk].to(device), backend=backend
        )
    torch.testing.assert_close(ops.normalize_relevance(M).cpu(), fs3, atol=1e-5, rtol=0)


def test_relevance_accumulate_sparse_matches_dense_one_hot(compiled, gen):
    backend, device = compiled
    b, channels, dim = 300, 40, 24
    idx = torch.randint(0, channels, (b,), generator=gen)
    weights = torch.randn(b, generator=gen)
    clip = torch.randn(b, dim, generator=gen)
    clip[3] = 0.0  # a mutation CLIP did not notice
    sparse = torch.zeros(channels, dim, device=device)
    ops.relevance_accumulate(sparse, weights.to(device), clip.to(device), idx.to(device), backend=backend)
    dense = torch.zeros(channels, dim, device=device)
    one_hot = torch.nn.functional.one_hot(idx, channels).float() * weights[:, None]
    ops.relevance_accumulate(dense, one_hot.to(device), clip.to(device), backend=backend)
    want = reference.relevance_accumulate(torch.zeros(channels, dim), weights, clip, idx)
    torch.testing.assert_close(sparse.cpu(), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense.cpu(), want, atol=1e-5, rtol=1e-5)
    assert torch.isfinite(sparse).all()


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_relevance_accumulate_matches_reference(compiled, normalize, dtype, gen):
    backend, device = compiled
    b, channels, dim = 77, 13, 9
    M0 = torch.randn(channels, dim, generator=gen).to(device, dtype)
    idx = torch.randint(0, channels, (b,), generator=gen).to(device)
    weights = torch.randn(b, generator=gen).to(device, dtype)
    clip = torch.randn(b, dim, generator=gen).to(device, dtype)
    dense_deltas = torch.randn(b, channels, generator=gen).to(device, dtype)
    tol = {torch.float16: 3e-2, torch.bfloat16: 2e-1}.get(dtype, 1e-5)
    for args in ((weights, clip, idx), (dense_deltas, clip, None)):
        got = ops.relevance_accumulate(M0.clone(), *args, normalize=normalize, backend=backend)
        ref_args = [a.double() if a is not None and a.is_floating_point() else a for a in args]
        want = reference.relevance_accumulate(M0.double(), *ref_args, normalize=normalize)
        torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)


def test_relevance_accumulate_does_not_depend_on_thread_count(compiled, gen):
    backend, device = compiled
    b, channels, dim = 5000, 300, 64
    idx = torch.randint(0, channels, (b,), generator=gen).to(device)
    weights = torch.randn(b, generator=gen).to(device)
    clip = torch.randn(b, dim, generator=gen).to(device)
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, threads)):
            torch.set_num_threads(n)
            results.append(ops.relevance_accumulate(torch.zeros(channels, dim, device=device), weights, clip, idx, backend=backend))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])


def test_relevance_ops_reject_bad_input(any_backend):
    backend, device = any_backend
    M = torch.randn(10, 4, device=device)
    dt = torch.randn(3, 4, device=device)
    with pytest.raises(ValueError, match=r"dt must have shape \(attributes, 4\)"):
        ops.relevance_directions(M, torch.randn(3, 5, device=device), 0.1, backend=backend)
    with pytest.raises(ValueError, match="M must have 2 dimensions"):
        ops.relevance_directions(M[None], dt, 0.1, backend=backend)
    with pytest.raises(ValueError, match="threshold must be >= 0"):
        ops.relevance_directions(M, dt, -0.1, backend=backend)
    with pytest.raises(ValueError, match="normalize must be one of"):
        ops.relevance_directions(M, dt, 0.1, "max", backend=backend)
    with pytest.raises(ValueError, match=r"channel_scale must have shape \(10,\)"):
        ops.relevance_directions(M, dt, 0.1, channel_scale=torch.ones(9, device=device), backend=backend)
    with pytest.raises(ValueError, match="M contains NaN or Inf"):
        ops.relevance_directions(torch.full_like(M, float("nan")), dt, 0.1, backend=backend)
    with pytest.raises(TypeError, match="dt must have the dtype of M"):
        ops.relevance_directions(M, dt.double(), 0.1, backend=backend)
    acc = torch.zeros(10, 4, device=device)
    clip = torch.randn(6, 4, device=device)
    with pytest.raises(ValueError, match="channel_index values must lie in"):
        ops.relevance_accumulate(acc, torch.ones(6, device=device), clip, torch.full((6,), 10, device=device), backend=backend)
    with pytest.raises(TypeError, match="channel_index must be int64"):
        ops.relevance_accumulate(acc, torch.ones(6, device=device), clip, torch.zeros(6, dtype=torch.int32, device=device), backend=backend)
    with pytest.raises(ValueError, match=r"style_deltas must have shape \(6, 10\)"):
        ops.relevance_accumulate(acc, torch.ones(6, 9, device=device), clip, backend=backend)
    with pytest.raises(ValueError, match=r"clip_deltas must have shape \(B, 4\)"):
        ops.relevance_accumulate(acc, torch.ones(6, 10, device=device), torch.randn(6, 5, device=device), backend=backend)
    with pytest.raises(ValueError, match="M must be contiguous"):
        ops.relevance_accumulate(torch.zeros(4, 10, device=device).T, torch.ones(6, 10, device=device), clip, backend=backend)
    with pytest.raises(ValueError, match="clip_deltas contains NaN"):
        ops.relevance_accumulate(acc, torch.ones(6, 10, device=device), torch.full_like(clip, float("inf")), backend=backend)


def test_relevance_ops_pass_opcheck(compiled, gen):
    _, device = compiled
    M, dt = _relevance(30, 8, 4, gen)
    M, dt = M.to(device).requires_grad_(), dt.to(device).requires_grad_()
    scale = (torch.rand(30, generator=gen) + 0.5).to(device)
    for mode in MODES:
        torch.library.opcheck(torch.ops.vmd_fast.relevance_directions, (M, dt, 0.1, mode, scale))
    acc = torch.zeros(30, 8, device=device)
    torch.library.opcheck(
        torch.ops.vmd_fast.relevance_accumulate_,
        (acc, torch.ones(5, device=device), torch.randn(5, 8, device=device), torch.arange(5, device=device), True),
    )
    torch.library.opcheck(
        torch.ops.vmd_fast.relevance_accumulate_,
        (acc, torch.randn(5, 30, device=device), torch.randn(5, 8, device=device), None, False),
    )


def test_relevance_ops_handle_non_contiguous_inputs(compiled, gen):
    backend, device = compiled
    M, dt = _relevance(200, 16, 5, gen)
    M, dt = M.to(device), dt.to(device)
    M_t = M.T.contiguous().T  # column-major view
    assert not M_t.is_contiguous()
    got = ops.relevance_directions(M_t, dt, 0.05, "l2", backend=backend)
    torch.testing.assert_close(got, reference.relevance_directions(M, dt, 0.05, "l2"))
    clip = torch.randn(16, 40, generator=gen).to(device).T  # (40, 16) non-contiguous
    weights = torch.randn(40, generator=gen).to(device)
    index = torch.randint(0, 200, (40,), generator=gen).to(device)
    got = ops.relevance_accumulate(torch.zeros(200, 16, device=device), weights, clip, index, backend=backend)
    want = reference.relevance_accumulate(torch.zeros(200, 16, device=device), weights, clip.contiguous(), index)
    torch.testing.assert_close(got, want)
