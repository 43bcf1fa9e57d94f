"""The fused ops trace under torch.compile and replay inside CUDA graphs."""

import pytest
import torch

import vmd_fast.ops as ops

from conftest import HAS_CUDA

pytestmark = pytest.mark.skipif(not ops.has_compiled_ops(), reason="needs the compiled kernels")


def _zoom_like_loss(w, directions, images, originals, logits_orig, cache):
    """A miniature ZOOM loss using every differentiable fused op."""
    edits = (images + (w @ directions).view_as(images)).clamp(0, 1)
    logits = edits.flatten(1)[:, : logits_orig.shape[1]] * 10
    loss = (1 - cache(edits)) + ops.clip_consistency(logits, logits_orig, 0.5)
    return loss + (1 - ops.ssim(edits, originals))


def _zoom_like_step(w, directions, images, originals, logits_orig, cache):
    loss = _zoom_like_loss(w, directions, images, originals, logits_orig, cache)
    (grad,) = torch.autograd.grad(loss, w)
    return ops.clamp_gd_step(w.detach(), grad, 0.2, 3.0), loss.detach()


def _inputs(device):
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 16, 16, generator=gen).to(device)
    directions = (torch.randn(2, 3 * 16 * 16, generator=gen) * 0.01).to(device)
    w = torch.zeros(4, 2, device=device, requires_grad=True)
    logits_orig = torch.randn(4, 5, generator=gen).to(device)
    return w, directions, images, images.clone(), logits_orig


def test_ops_compile_fullgraph_and_match_eager():
    w, directions, images, originals, logits_orig = _inputs("cpu")
    cache = ops.SSIMReference(originals)
    eager_loss = _zoom_like_loss(w, directions, images, originals, logits_orig, cache)
    (eager_grad,) = torch.autograd.grad(eager_loss, w)
    compiled_loss = torch.compile(_zoom_like_loss, fullgraph=True, backend="aot_eager")
    loss = compiled_loss(w, directions, images, originals, logits_orig, cache)
    (grad,) = torch.autograd.grad(loss, w)
    torch.testing.assert_close(loss, eager_loss)
    torch.testing.assert_close(grad, eager_grad)
    step = torch.compile(ops.clamp_gd_step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(step(w.detach(), grad, 0.2, 3.0), ops.clamp_gd_step(w.detach(), grad, 0.2, 3.0))


def test_projected_sign_step_compiles_in_place():
    def attack_step(x, origin):
        grad = torch.cos(x * 7)
        ops.projected_sign_step(x, grad, origin, 0.01, 0.03, out=x)
        return x

    origin = torch.rand(3, 4, 5)
    eager = attack_step(origin.clone(), origin)
    compiled = torch.compile(attack_step, fullgraph=True, backend="aot_eager")(origin.clone(), origin)
    torch.testing.assert_close(eager, compiled)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_zoom_like_step_replays_in_a_cuda_graph():
    w, directions, images, originals, logits_orig = _inputs("cuda")
    cache = ops.SSIMReference(originals)
    eager_w, eager_loss = _zoom_like_step(w, directions, images, originals, logits_orig, cache)
    static_w = w.detach().clone().requires_grad_()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):  # warm-up outside capture (allocations, caches)
            _zoom_like_step(static_w, directions, images, originals, logits_orig, cache)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out_w, out_loss = _zoom_like_step(static_w, directions, images, originals, logits_orig, cache)
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out_w, eager_w)
    torch.testing.assert_close(out_loss, eager_loss)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU")
def test_projected_sign_step_replays_in_a_cuda_graph():
    gen = torch.Generator().manual_seed(1)
    origin = torch.rand(8, 3, 32, 32, generator=gen).cuda()
    grad = torch.randn(8, 3, 32, 32, generator=gen).cuda()
    x = origin.clone()
    step = torch.full((8,), 0.01, device="cuda")
    ops.projected_sign_step(x, grad, origin, step, 0.02, out=x)  # warm-up
    x.copy_(origin)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        ops.projected_sign_step(x, grad, origin, step, 0.02, out=x)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    want = origin
    for _ in range(3):
        want = ops.reference.projected_sign_step(want, grad, origin, step, 0.02)
    torch.testing.assert_close(x, want)
