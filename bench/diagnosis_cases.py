"""End-to-end diagnosis loops for bench/test_diagnosis_bench.py: vmd_fast's batched SIA and
ZOOM against faithful re-implementations of the reference code's loops, on the zoo's
architectures (shipped weights when present; the cost of a step does not depend on them).

* ZOOM reference: the official code's shape, one image and one attribute at a time, batch
  size 1, eager PyTorch, SSIM from pytorch_msssim when installed (else vmd_fast's
  pure-PyTorch reference), the CLIP term as a soft cross-entropy of softmaxes.
* SIA reference: Algorithm 1 for the whole batch written as a plain PyTorch loop
  (the update as the chain of elementwise ops an attack loop writes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vmd_fast import sia, zoom
from vmd_fast.diagnose import BinaryAdapter, repeat_reference
from vmd_fast.ops import reference


def zoo_model(name: str, device) -> torch.nn.Module:
    """The shipped model when its asset exists, else the recipe's architecture (untrained)."""
    from vmd_fast import zoo
    from vmd_fast.zoo.registry import get_recipe

    if name in {info["name"] for info in zoo.list()}:
        return zoo.load(name, device=device)
    recipe = get_recipe(name)
    return recipe.build(recipe.config).to(device).eval().requires_grad_(False)


@dataclass
class ZoomWorld:
    G: torch.nn.Module
    clip: torch.nn.Module
    target: torch.nn.Module
    ds: torch.Tensor  # (A, C) directions
    text: torch.Tensor  # (2, D) consistency prompts, temperature folded in


def zoom_world(device, n_attributes: int) -> ZoomWorld:
    G, clip = zoo_model("generator", device), zoo_model("clip", device)
    target = zoo_model("smile_classifier", device)
    gen = torch.Generator().manual_seed(0)
    ds = F.normalize(torch.randn(n_attributes, sum(G.style_space_dims), generator=gen), dim=1).to(device)
    text = zoom.clip_text_features(clip, ["a photo of a face with a smile", "a photo of a face without a smile"]) / 0.07
    return ZoomWorld(G, clip, target, ds, text)


def _styles(world: ZoomWorld, n: int, device) -> torch.Tensor:
    z = torch.randn(n, world.G.z_dim, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        return world.G.flatten_styles(world.G.mapping_to_styles(z))


def zoom_batched(world: ZoomWorld, n_images: int, steps: int, device) -> Callable[[], None]:
    """vmd_fast's search: all images x attributes in one batch, fused ops (CUDA graph on GPU)."""
    cfg = zoom.ZoomConfig(steps=steps, consistency_temperature=1.0)
    s0 = _styles(world, n_images, device)
    A = world.ds.shape[0]
    adapter = BinaryAdapter(world.target)
    with torch.no_grad():
        x0 = world.G.synthesize(world.G.unflatten_styles(s0))
        ref = repeat_reference(adapter.reference(adapter.outputs(x0)), A)
        logits = (zoom.clip_image_features(world.clip, x0) @ world.text.T).repeat_interleave(A, 0)
    from vmd_fast import ops

    ssim_ref = ops.SSIMReference(x0)
    basis = world.ds.repeat(n_images, 1)[:, None, :].contiguous()

    def run():
        search = zoom._Search(world.G, adapter, ref, ssim_ref, world.clip, world.text, cfg,
                              s0.repeat_interleave(A, 0), basis, logits)
        search.run(0, steps, use_graph=(torch.device(device).type == "cuda"))
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    return run


def _ssim_fn():
    try:
        from pytorch_msssim import ssim

        return lambda x, y: ssim(x, y, data_range=1.0, size_average=True)
    except ImportError:
        return lambda x, y: reference.ssim(x, y, data_range=1.0, size_average=True)


def zoom_reference(world: ZoomWorld, n_images: int, steps: int, device, alpha=1.0, beta=1.0, gamma=0.5,
                   lr=0.2, eps=30.0) -> Callable[[], None]:
    """The reference loop: for each image, for each attribute, ``steps`` batch-1 updates of one w."""
    s0 = _styles(world, n_images, device)
    ssim = _ssim_fn()

    def run():
        for n in range(n_images):
            s = s0[n : n + 1]
            with torch.no_grad():
                x0 = world.G.synthesize(world.G.unflatten_styles(s))
                p0 = torch.sigmoid(world.target(x0))
                q0 = (zoom.clip_image_features(world.clip, x0) @ world.text.T).softmax(dim=-1)
            for a in range(world.ds.shape[0]):
                w = torch.zeros(1, 1, device=device)
                for _ in range(steps):
                    w.requires_grad_(True)
                    x = world.G.synthesize(world.G.unflatten_styles(s + w * world.ds[a : a + 1]))
                    loss = alpha * F.binary_cross_entropy_with_logits(world.target(x), 1 - p0)
                    loss = loss + beta * (1 - ssim(x, x0))
                    logp = (zoom.clip_image_features(world.clip, x) @ world.text.T).log_softmax(dim=-1)
                    loss = loss + gamma * -(q0 * logp).sum()
                    (grad,) = torch.autograd.grad(loss, w)
                    w = (w - lr * grad).clamp(-eps, eps).detach()
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    return run


def sia_world(device):
    editor = zoo_model("editor", device)
    target = zoo_model("smile_classifier", device)
    return editor, target


def _sia_inputs(editor, n: int, device):
    gen = torch.Generator().manual_seed(2)
    x = torch.rand(n, 3, 64, 64, generator=gen).to(device)
    a = torch.rand(n, len(editor.attributes), generator=gen).to(device)
    return x, a


def sia_fused(editor, target, n: int, steps: int, device) -> Callable[[], None]:
    x, a = _sia_inputs(editor, n, device)

    def run():
        sia.attack(target, x, a, editor=editor, steps=steps)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    return run


def sia_plain(editor, target, n: int, steps: int, device, eta=0.25 / 255, eps_x=1.5 / 255, eps_a=1.0) -> Callable[[], None]:
    """Algorithm 1 as a plain PyTorch loop over the same batch."""
    x0, a0 = _sia_inputs(editor, n, device)

    def run():
        with torch.no_grad():
            p0 = torch.sigmoid(target(x0))
        x, a = x0.clone(), a0.clone()
        for _ in range(steps):
            xv, av = x.clone().requires_grad_(), a.clone().requires_grad_()
            loss = F.binary_cross_entropy_with_logits(target(editor.decode(editor.encode(xv), av)), 1 - p0)
            gx, ga = torch.autograd.grad(loss, [xv, av])
            a = torch.min(torch.max(a - eta * ga.sign(), a0 - eps_a), a0 + eps_a).clamp(0, 1)
            x = torch.min(torch.max(x - eta * gx.sign(), x0 - eps_x), x0 + eps_x).clamp(0, 1)
        with torch.no_grad():
            editor.decode(editor.encode(x), a)
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()

    return run
