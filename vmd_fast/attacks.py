"""Pixel-space baselines of SIA: FGSM and PGD on the fused projected sign step.

Signatures follow torchattacks (``PGD(model, eps=8/255, alpha=2/255, steps=10,
random_start=True)(images, labels)``) so that attack code can swap them in; the update
``x <- clip(Pi_{B(x0, eps)}(x + alpha sign(grad)), 0, 1)`` is one fused kernel
(:func:`vmd_fast.ops.projected_sign_step`) instead of five elementwise ops.

The loss ascended is, by default, the one that moves the model away from ``labels``:
cross-entropy for (N, K) logits, binary cross-entropy for one logit. Without ``labels``,
the model's own predictions on the clean images are used. A
:class:`vmd_fast.diagnose.TargetAdapter` can stand for the model: the attack then
minimises its ``objective`` (the same L_target SIA and ZOOM use, keypoints and
segmentation included), unless ``loss``, ``labels`` or ``targeted`` are given. A user's
loss goes through :class:`LossAdapter`, which :func:`vmd_fast.sia.attack` takes too.
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from vmd_fast import ops
from vmd_fast.diagnose.targets import TargetAdapter

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_loss(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample loss to *ascend*: CE for (N, K) logits (K > 1), BCE for (N, 1) / (N,)."""
    if outputs.dim() == 2 and outputs.shape[1] > 1:
        return F.cross_entropy(outputs.float(), labels.long(), reduction="none")
    logits = outputs.reshape(outputs.shape[0]).float()
    return F.binary_cross_entropy_with_logits(logits, labels.reshape(-1).float(), reduction="none")


def predicted_labels(outputs: torch.Tensor) -> torch.Tensor:
    """The model's own labels: argmax of (N, K) logits, ``logit > 0`` for one logit; any
    other output (keypoints, heatmaps, masks) is its own reference, detached."""
    if outputs.dim() == 2 and outputs.shape[1] > 1:
        return outputs.argmax(dim=1)
    if outputs.dim() == 1 or (outputs.dim() == 2 and outputs.shape[1] == 1):
        return (outputs.reshape(outputs.shape[0]) > 0).float()
    return outputs.detach()


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ValueError(f"images must be a (N, C, H, W) tensor, got {getattr(images, 'shape', type(images))}")
    if not images.is_floating_point():
        raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or Inf")
    if images.min() < 0 or images.max() > 1:
        raise ValueError("images must lie in [0, 1]")


class LossAdapter(TargetAdapter):
    """A target whose attack objective is a user's loss, in torchattacks' convention.

    The attack ascends ``loss(outputs, labels)`` (descends it when ``targeted``), where
    ``labels`` are the given ones or the model's own predictions on the clean images
    (:func:`predicted_labels`). Whether a prediction counts as changed (``flipped``,
    ``change``) still comes from ``target``'s adapter, so a custom loss changes how an
    attack searches, not how its success is judged.

    Args:
        target: a model or a :class:`~vmd_fast.diagnose.TargetAdapter` (its ``outputs``,
            ``flipped``, ``change`` and ``describe`` are kept; a plain model gets only
            ``outputs``).
        loss: ``loss(outputs, labels) -> (N,)``, one value per image; default CE for (N, K)
            logits, BCE for one logit (:func:`default_loss`).
        labels: (N, ...) labels of the clean images, or None for the predictions.
        targeted: move towards ``labels`` instead of away from them.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
        >>> x = torch.rand(2, 3, 2, 2)
        >>> margin = lambda out, y: out.gather(1, y[:, None])[:, 0] * -1.0
        >>> adv = pgd(LossAdapter(model, margin), x, eps=0.1, alpha=0.05, steps=2)
        >>> bool((adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """

    def __init__(self, target, loss: Optional[LossFn] = None, labels: Optional[torch.Tensor] = None,
                 targeted: bool = False):
        if loss is not None and not callable(loss):
            raise TypeError(f"loss must be a callable loss(outputs, labels) -> (N,), got {type(loss).__name__}")
        self.base = target if isinstance(target, TargetAdapter) else None
        super().__init__(self.base.model if self.base is not None else target)
        self.task = self.base.task if self.base is not None else "custom"
        self.loss, self.labels, self.sign = loss or default_loss, labels, (1.0 if targeted else -1.0)

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.base.outputs(x) if self.base is not None else self.model(x)

    def reference(self, outputs, generator=None):
        ref = dict(self.base.reference(outputs, generator)) if self.base is not None else {}
        labels = predicted_labels(outputs) if self.labels is None else self.labels
        if not isinstance(labels, torch.Tensor) or labels.dim() == 0 or labels.shape[0] != outputs.shape[0]:
            raise ValueError(f"labels must have one entry per image (N={outputs.shape[0]}), "
                             f"got {tuple(getattr(labels, 'shape', ())) or type(labels).__name__}")
        if self.labels is not None and labels.is_floating_point() and not torch.isfinite(labels).all():
            raise ValueError("labels contain NaN or Inf")
        ref["loss_labels"] = labels.detach().to(outputs.device)
        return ref

    def objective(self, outputs, ref):
        value = self.loss(outputs, ref["loss_labels"])
        if not isinstance(value, torch.Tensor) or value.shape != (outputs.shape[0],):
            raise ValueError(f"loss must return one value per image, shape ({outputs.shape[0]},), "
                             f"got {tuple(getattr(value, 'shape', ())) or type(value).__name__}")
        # Adapters' objectives are minimised: an untargeted attack ascends the loss.
        return self.sign * value

    def _base(self, what: str) -> TargetAdapter:
        if self.base is None:
            raise TypeError(f"{what} needs a TargetAdapter target, got a plain {type(self.model).__name__}")
        return self.base

    def change(self, outputs, ref):
        return self._base("change").change(outputs, ref)

    def flipped(self, outputs, ref):
        return self._base("flipped").flipped(outputs, ref)

    def describe(self, outputs):
        return self._base("describe").describe(outputs)


class _Objective:
    """The per-sample objective to descend: the adapter's, or ``loss`` away from ``labels``."""

    def __init__(self, model, images, labels, loss: Optional[LossFn], targeted: bool):
        custom = loss is not None or labels is not None or targeted
        if isinstance(model, TargetAdapter) and not custom:
            self.adapter = model
        else:
            self.adapter = LossAdapter(model, loss, labels, targeted)
        with torch.no_grad():
            self.ref = self.adapter.reference(self.adapter.outputs(images))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter.objective(self.adapter.outputs(x), self.ref)


def _descent_step(objective: _Objective, x: torch.Tensor, origin: torch.Tensor, alpha, eps) -> None:
    x_var = x.detach().requires_grad_()
    (grad,) = torch.autograd.grad(objective(x_var).sum(), x_var)
    # projected_sign_step moves along +sign(grad): pass the descent direction.
    ops.projected_sign_step(x, grad.neg_(), origin, alpha, eps, 0.0, 1.0, out=x)


def fgsm(
    model: Union[nn.Module, TargetAdapter],
    images: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    eps: float = 8 / 255,
    loss: Optional[LossFn] = None,
    targeted: bool = False,
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al.): one step of size ``eps``.

    Args:
        model: the target (logits out), or a :class:`~vmd_fast.diagnose.TargetAdapter`
            (whose objective is used unless ``loss``, ``labels`` or ``targeted`` is given).
        images: (N, C, H, W) in [0, 1].
        labels: (N,) class indices or 0/1 labels; ``None``: the model's predictions.
        eps: the L_inf budget (and step).
        loss: per-sample loss ``loss(outputs, labels) -> (N,)``; default CE / BCE.
        targeted: move towards ``labels`` instead of away from them.

    Returns:
        (N, C, H, W) adversarial images.

    Example:
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
        >>> x = torch.rand(2, 3, 2, 2)
        >>> adv = fgsm(model, x, eps=0.1)
        >>> bool((adv - x).abs().max() <= 0.1 + 1e-6)
        True
    """
    return pgd(model, images, labels, eps=eps, alpha=eps, steps=1, random_start=False, loss=loss, targeted=targeted)


def pgd(
    model: Union[nn.Module, TargetAdapter],
    images: torch.Tensor,
    labels: Optional[torch.Tensor] = None,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    random_start: bool = True,
    loss: Optional[LossFn] = None,
    targeted: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al.) with the fused projected sign step.

    Args:
        model, images, labels, loss, targeted: as in :func:`fgsm`.
        eps: the L_inf budget around ``images``.
        alpha: the step size.
        steps: the number of steps.
        random_start: start from a uniform point of the eps-ball (seeded by ``generator``).

    Returns:
        (N, C, H, W) adversarial images.
    """
    _check_images(images)
    for name, value in (("eps", eps), ("alpha", alpha)):
        if not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    origin = images.detach().clone()
    objective = _Objective(model, origin, labels, loss, targeted)
    x = origin.clone()
    if random_start:
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype).to(x.device)
        x = (x + (2 * noise - 1) * eps).clamp(0, 1)
    with ops.value_checks(False):  # inputs were checked above; the loop stays sync-free
        for _ in range(steps):
            _descent_step(objective, x, origin, alpha, eps)
    return x


class FGSM:
    """torchattacks-style FGSM: ``FGSM(model, eps)(images, labels)``."""

    def __init__(self, model, eps: float = 8 / 255):
        self.model, self.eps = model, eps

    def __call__(self, images, labels=None):
        return fgsm(self.model, images, labels, eps=self.eps)


class PGD:
    """torchattacks-style PGD: ``PGD(model, eps, alpha, steps, random_start)(images, labels)``."""

    def __init__(self, model, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10,
                 random_start: bool = True, seed: Optional[int] = None):
        self.model, self.eps, self.alpha, self.steps, self.random_start = model, eps, alpha, steps, random_start
        self.seed = seed

    def __call__(self, images, labels=None):
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        return pgd(self.model, images, labels, eps=self.eps, alpha=self.alpha, steps=self.steps,
                   random_start=self.random_start, generator=generator)
