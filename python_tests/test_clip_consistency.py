"""clip_consistency: fused soft cross-entropy against the reference."""

import pytest
import torch

import vmd_fast.ops as ops
from vmd_fast.ops import reference


def _logits(shape, gen, device, dtype=torch.float32, spread=3.0):
    edit = torch.randn(shape, generator=gen, dtype=torch.float64) * spread
    orig = edit + torch.randn(shape, generator=gen, dtype=torch.float64)
    return edit.to(device, dtype), orig.to(device, dtype)


@pytest.mark.parametrize("shape", [(1, 1), (7, 3), (256, 40), (3, 1000), (2, 5, 9)])
@pytest.mark.parametrize("temperature", [1.0, 0.07, 4.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_clip_consistency_matches_reference(compiled, shape, temperature, reduction, gen):
    backend, device = compiled
    edit, orig = _logits(shape, gen, device, torch.float64)
    ea, oa = edit.clone().requires_grad_(), orig.clone().requires_grad_()
    eb, ob = edit.clone().requires_grad_(), orig.clone().requires_grad_()
    got = ops.clip_consistency(ea, oa, temperature, reduction, backend=backend)
    want = reference.clip_consistency(eb, ob, temperature, reduction)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)
    weights = torch.randn(want.shape, generator=gen, dtype=torch.float64).to(device)
    (got * weights).sum().backward()
    (want * weights).sum().backward()
    torch.testing.assert_close(ea.grad, eb.grad, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(oa.grad, ob.grad, atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 5e-3), (torch.bfloat16, 3e-2)])
def test_clip_consistency_low_precision(compiled, dtype, tol, gen):
    backend, device = compiled
    edit, orig = _logits((64, 16), gen, device, dtype)
    ea = edit.clone().requires_grad_()
    got = ops.clip_consistency(ea, orig, 0.5, "none", backend=backend)
    assert got.dtype == dtype
    got.sum().backward()
    eb = edit.double().requires_grad_()
    want = reference.clip_consistency(eb, orig.double(), 0.5, "none")
    want.sum().backward()
    torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
    torch.testing.assert_close(ea.grad.double(), eb.grad, atol=tol, rtol=tol)


def test_clip_consistency_is_stable_for_large_logits(compiled):
    backend, device = compiled
    # CLIP logits are scaled by up to 100: exp would overflow without the max shift.
    edit = torch.tensor([[1000.0, -1000.0, 0.0]], device=device, requires_grad=True)
    orig = torch.tensor([[0.0, 1000.0, -1000.0]], device=device)
    loss = ops.clip_consistency(edit, orig, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(edit.grad).all()
    torch.testing.assert_close(loss, torch.tensor(2000.0, device=device))


def test_clip_consistency_is_minimal_when_edit_matches_original(compiled, gen):
    backend, device = compiled
    edit, orig = _logits((32, 10), gen, device)
    at_orig = ops.clip_consistency(orig, orig, reduction="none", backend=backend)
    elsewhere = ops.clip_consistency(edit, orig, reduction="none", backend=backend)
    assert bool((elsewhere >= at_orig - 1e-5).all())
    x = orig.clone().requires_grad_()
    ops.clip_consistency(x, orig, backend=backend).backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x), atol=1e-7, rtol=0)


def test_clip_consistency_gradcheck(compiled, gen):
    backend, device = compiled
    edit, orig = _logits((4, 6), gen, device, torch.float64)
    edit.requires_grad_()
    orig.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda e, o: ops.clip_consistency(e, o, 0.7, "none", backend=backend), (edit, orig)
    )


def test_clip_consistency_handles_non_contiguous_logits(compiled, gen):
    backend, device = compiled
    edit, orig = _logits((12, 8), gen, device)
    e = edit.T.contiguous().T.requires_grad_()
    got = ops.clip_consistency(e, orig[:, :], backend=backend)
    got.backward()
    eb = edit.clone().requires_grad_()
    want = reference.clip_consistency(eb, orig)
    want.backward()
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(e.grad, eb.grad)


def test_clip_consistency_rejects_bad_input(any_backend):
    backend, device = any_backend
    e = torch.randn(4, 5, device=device)
    with pytest.raises(ValueError, match="image_logits_orig must have the shape of image_logits_edit"):
        ops.clip_consistency(e, e[:, :4], backend=backend)
    with pytest.raises(TypeError, match="image_logits_orig must have the dtype"):
        ops.clip_consistency(e, e.double(), backend=backend)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ops.clip_consistency(e, e, temperature=0.0, backend=backend)
    with pytest.raises(ValueError, match="reduction must be one of"):
        ops.clip_consistency(e, e, reduction="batchmean", backend=backend)
    with pytest.raises(ValueError, match="image_logits_edit contains NaN"):
        ops.clip_consistency(torch.full_like(e, float("nan")), e, backend=backend)
    with pytest.raises(ValueError, match="at least one class"):
        ops.clip_consistency(e[:, :0], e[:, :0], backend=backend)
    with pytest.raises(ValueError, match="0-dim"):
        ops.clip_consistency(e[0, 0], e[0, 0], backend=backend)


def test_clip_consistency_passes_opcheck(compiled, gen):
    _, device = compiled
    edit, orig = _logits((6, 7), gen, device)
    edit.requires_grad_()
    orig.requires_grad_()
    for mode in range(4):
        torch.library.opcheck(torch.ops.vmd_fast.clip_consistency_forward, (edit, orig, 0.5, mode))
