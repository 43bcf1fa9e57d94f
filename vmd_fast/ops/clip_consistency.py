r"""ZOOM's CLIP attribute-consistency loss (thesis Eq. 3.8), fused forward and backward.

.. math::
    \mathcal L_{attr} = -\sum_k \mathrm{softmax}(z^{orig}/T)_k\,
                         \log \mathrm{softmax}(z^{edit}/T)_k

where :math:`z` are CLIP image-text logits (one row per image, one column per prompt).
The forward pass computes the loss and, when autograd needs them, the gradients in the
same sweep, so the backward pass is a single scaling.
"""

from __future__ import annotations

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

REDUCTIONS = ("mean", "sum", "none")
_GRAD_EDIT, _GRAD_ORIG = 1, 2  # csrc/ops/clip_consistency.h


def clip_consistency(
    image_logits_edit: torch.Tensor,
    image_logits_orig: torch.Tensor,
    temperature: float = 1.0,
    reduction: str = "mean",
    *,
    backend: str = "auto",
) -> torch.Tensor:
    r"""Soft cross-entropy between the CLIP distributions of edits and their originals.

    Differentiable with respect to both inputs (ZOOM treats the originals as constants:
    pass them detached).

    Args:
        image_logits_edit: logits of the edited images, shape :math:`(*, K)`.
        image_logits_orig: logits of the originals, same shape, dtype and device.
        temperature: :math:`T > 0` dividing both logits. Default: 1.
        reduction: ``"mean"`` (default) or ``"sum"`` over the rows, or ``"none"`` for the
            per-row losses of shape :math:`(*)`.
        backend: ``"auto"``, ``"cuda"``, ``"cpp"`` or ``"torch"``.

    Returns:
        The loss, a scalar or :math:`(*)`, dtype of the inputs.

    Example:
        >>> z = torch.tensor([[2.0, 0.0, -1.0]])
        >>> clip_consistency(z, z)  # the entropy of softmax(z)
        tensor(0.5243)
    """
    check_tensor(image_logits_edit, "image_logits_edit")
    if image_logits_edit.dim() == 0:
        raise ValueError("image_logits_edit must have shape (*, K), got a 0-dim tensor")
    check_like(image_logits_orig, image_logits_edit, "image_logits_orig", "image_logits_edit")
    if image_logits_edit.shape[-1] == 0:
        raise ValueError("image_logits_edit must have at least one class (last dimension)")
    temperature = check_number(temperature, "temperature", minimum=0.0, strict=True)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_finite(image_logits_edit, "image_logits_edit")
    check_finite(image_logits_orig, "image_logits_orig")
    if not use_compiled(backend, image_logits_edit.device):
        return reference.clip_consistency(image_logits_edit, image_logits_orig, temperature, reduction)
    batch_shape = image_logits_edit.shape[:-1]
    k = image_logits_edit.shape[-1]
    edit = image_logits_edit.reshape(-1, k)
    orig = image_logits_orig.reshape(-1, k)
    grad_mode = 0
    if torch.is_grad_enabled():
        grad_mode = (_GRAD_EDIT if edit.requires_grad else 0) | (_GRAD_ORIG if orig.requires_grad else 0)
    loss, _, _ = torch.ops.vmd_fast.clip_consistency_forward(edit, orig, temperature, grad_mode)
    loss = loss.to(image_logits_edit.dtype)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss.reshape(batch_shape)


def _setup_context(ctx, inputs, output):
    edit, orig, temperature, _ = inputs
    _, grad_edit, grad_orig = output
    ctx.mark_non_differentiable(grad_edit, grad_orig)
    # The gradient outputs never receive gradients: skip autograd's zero-filled stand-ins.
    ctx.set_materialize_grads(False)
    ctx.temperature = temperature
    ctx.save_for_backward(edit, orig, grad_edit, grad_orig)


def _backward(ctx, grad_loss, _grad_edit, _grad_orig):
    if grad_loss is None:
        return None, None, None, None
    edit, orig, grad_edit, grad_orig = ctx.saved_tensors
    want_edit, want_orig = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    if (want_edit and grad_edit.numel() == 0) or (want_orig and grad_orig.numel() == 0):
        # The forward ran without computing them (e.g. a direct op call).
        mode = (_GRAD_EDIT if want_edit else 0) | (_GRAD_ORIG if want_orig else 0)
        _, grad_edit, grad_orig = torch.ops.vmd_fast.clip_consistency_forward(edit, orig, ctx.temperature, mode)
    scale = grad_loss.unsqueeze(1)
    result_edit = (scale * grad_edit).to(edit.dtype) if want_edit else None
    result_orig = (scale * grad_orig).to(orig.dtype) if want_orig else None
    return result_edit, result_orig, None, None


if has_compiled_ops():

    @torch.library.register_fake("vmd_fast::clip_consistency_forward")
    def _(edit, orig, temperature, grad_mode):
        acc = torch.float64 if edit.dtype == torch.float64 else torch.float32
        grad_edit = torch.empty_like(edit, memory_format=torch.contiguous_format) if grad_mode & _GRAD_EDIT else edit.new_empty((0,))
        grad_orig = torch.empty_like(orig, memory_format=torch.contiguous_format) if grad_mode & _GRAD_ORIG else orig.new_empty((0,))
        return edit.new_empty((edit.shape[0],), dtype=acc), grad_edit, grad_orig

    torch.library.register_autograd(
        "vmd_fast::clip_consistency_forward", _backward, setup_context=_setup_context
    )

    # Under autocast: a soft cross-entropy, run in float32 like autocast's own losses, on
    # inputs cast to float32 (the edit's logits may come back bf16, the original's not).
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast("vmd_fast::clip_consistency_forward", _device, torch.float32)
