"""Target adapters: how SIA and ZOOM talk to the model under diagnosis, whatever its task.

A diagnosis needs four things from a target model, each per sample so that a batch of
images x attributes is one computation:

* ``outputs(x)``: the differentiable prediction (logits, keypoint coordinates, ...);
* ``reference(outputs)``: what the model predicted on the original images (detached),
  plus the goal the attack steers towards (the flipped label, random keypoints);
* ``objective(outputs, ref)``: the per-sample ``L_target`` to *minimise* (thesis Eq. 2.1
  for SIA, Eq. 3.5/3.6 for ZOOM);
* ``change(outputs, ref)``: ``|f(x) - f(x_hat)|``, whose mean over images is the
  sensitivity ``h_i`` of thesis ch. 3, and ``flipped(outputs, ref)``: whether the
  prediction counts as changed (flip rate, flip resistance).

Adapters are chosen by :func:`adapter_for` from ``model.task`` (the zoo's models carry it)
or from the output shape. A user-written adapter is one small subclass of
:class:`TargetAdapter`.
"""

from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

Reference = Dict[str, torch.Tensor]

TASKS = ("binary", "multiclass", "attributes", "keypoints", "segmentation")


class TargetAdapter:
    """Base class of the target adapters (see the module docstring for the contract).

    Args:
        model: the target ``nn.Module``; it is put in eval mode by the caller, not here.

    Every method takes and returns tensors whose first dimension is the batch ``N``; a
    reference is a dict of such tensors, so :func:`repeat_reference` can lay it out for
    ``N x A`` rows (images x attributes).
    """

    task = "custom"

    def __init__(self, model: nn.Module):
        self.model = model

    def outputs(self, x: torch.Tensor) -> torch.Tensor:
        """The model's differentiable prediction for images ``x`` (N, 3, H, W)."""
        return self.model(x)

    def reference(self, outputs: torch.Tensor, generator: Optional[torch.Generator] = None) -> Reference:
        raise NotImplementedError

    def objective(self, outputs: torch.Tensor, ref: Reference) -> torch.Tensor:
        raise NotImplementedError

    def change(self, outputs: torch.Tensor, ref: Reference) -> torch.Tensor:
        raise NotImplementedError

    def flipped(self, outputs: torch.Tensor, ref: Reference) -> torch.Tensor:
        raise NotImplementedError

    def describe(self, outputs: torch.Tensor) -> torch.Tensor:
        """One number per sample for reports (a probability, a displacement); (N,)."""
        raise NotImplementedError


def target_name(target) -> str:
    """A model's name for reports: the zoo's name when it came from the zoo, else its class."""
    model = target.model if isinstance(target, TargetAdapter) else target
    info = getattr(model, "zoo_info", None) or {}
    return str(info.get("name") or type(model).__name__)


def target_label(target) -> Optional[str]:
    """The attribute a binary target classifies ("smiling"), when the model says it:
    ``model.label``, or its single ``labels`` entry (the zoo's models carry them)."""
    model = target.model if isinstance(target, TargetAdapter) else target
    info = getattr(model, "zoo_info", None) or {}
    label = getattr(model, "label", None) or info.get("label")
    labels = getattr(model, "labels", None) or info.get("labels") or (info.get("config") or {}).get("labels")
    if label is None and getattr(model, "task", info.get("task")) == "binary" and labels and len(labels) == 1:
        label = labels[0]
    return label if isinstance(label, str) else None


def repeat_reference(ref: Reference, repeats: int) -> Reference:
    """Each row of ``ref`` repeated ``repeats`` times in place (row i -> rows i*r .. i*r+r-1).

    Example:
        >>> ref = {"prob": torch.tensor([0.2, 0.9])}
        >>> repeat_reference(ref, 2)["prob"]
        tensor([0.2000, 0.2000, 0.9000, 0.9000])
    """
    return {key: value.repeat_interleave(repeats, dim=0) for key, value in ref.items()}


def _binary_logits(outputs: torch.Tensor, name: str = "outputs") -> torch.Tensor:
    if outputs.dim() == 2 and outputs.shape[1] == 1:
        return outputs[:, 0]
    if outputs.dim() == 1:
        return outputs
    raise ValueError(f"{name} of a binary target must have shape (N, 1) or (N,), got {tuple(outputs.shape)}")


class BinaryAdapter(TargetAdapter):
    """A single-logit binary classifier (sigmoid).

    ``L_target = BCE(f(x_hat), 1 - f(x))`` (thesis Eq. 3.5, the soft flipped label);
    change ``|sigma(z_hat) - sigma(z)|``; flipped when the thresholded label changes.

    Example:
        >>> adapter = BinaryAdapter(nn.Identity())
        >>> ref = adapter.reference(torch.tensor([[2.0], [-1.0]]))
        >>> adapter.flipped(torch.tensor([[-0.5], [-3.0]]), ref)
        tensor([ True, False])
    """

    task = "binary"

    def __init__(self, model: nn.Module, threshold: float = 0.5):
        super().__init__(model)
        self.threshold = threshold

    def reference(self, outputs, generator=None):
        prob = torch.sigmoid(_binary_logits(outputs).detach().float())
        return {"prob": prob, "label": prob > self.threshold}

    def objective(self, outputs, ref):
        logits = _binary_logits(outputs).float()
        return F.binary_cross_entropy_with_logits(logits, 1.0 - ref["prob"], reduction="none")

    def change(self, outputs, ref):
        return (torch.sigmoid(_binary_logits(outputs).float()) - ref["prob"]).abs()

    def flipped(self, outputs, ref):
        return (torch.sigmoid(_binary_logits(outputs).float()) > self.threshold) != ref["label"]

    def describe(self, outputs):
        return torch.sigmoid(_binary_logits(outputs).float())


class MultiClassAdapter(TargetAdapter):
    """A softmax classifier over K classes, (N, K) logits.

    Untargeted: ``L_target = -log(1 - p_y(x_hat))`` drives the probability of the
    originally predicted class ``y`` to zero (for K = 2 it is the binary loss with a hard
    label); change ``|p_y(x) - p_y(x_hat)|``; flipped when the argmax changes.
    """

    task = "multiclass"

    def reference(self, outputs, generator=None):
        if outputs.dim() != 2:
            raise ValueError(f"outputs of a multiclass target must have shape (N, K), got {tuple(outputs.shape)}")
        probs = outputs.detach().float().softmax(dim=1)
        label = probs.argmax(dim=1)
        return {"label": label, "prob": probs.gather(1, label[:, None])[:, 0]}

    def objective(self, outputs, ref):
        logits = outputs.float()
        own = F.one_hot(ref["label"], logits.shape[1]).bool()
        # log(1 - p_y) = logsumexp over the other classes - logsumexp over all, stably.
        others = logits.masked_fill(own, float("-inf")).logsumexp(dim=1)
        return logits.logsumexp(dim=1) - others

    def change(self, outputs, ref):
        p_y = outputs.float().softmax(dim=1).gather(1, ref["label"][:, None])[:, 0]
        return (p_y - ref["prob"]).abs()

    def flipped(self, outputs, ref):
        return outputs.argmax(dim=1) != ref["label"]

    def describe(self, outputs):
        return outputs.float().softmax(dim=1).amax(dim=1)


class AttributesAdapter(TargetAdapter):
    """A multi-label classifier, (N, A) independent logits.

    Args:
        index: diagnose one label (its column) only; ``None``: all labels together, the
            loss and change averaged over labels and a flip meaning any label flipped.
    """

    task = "attributes"

    def __init__(self, model: nn.Module, index: Optional[int] = None, threshold: float = 0.5):
        super().__init__(model)
        self.index = index
        self.threshold = threshold

    def _logits(self, outputs):
        if outputs.dim() != 2:
            raise ValueError(f"outputs of an attributes target must have shape (N, A), got {tuple(outputs.shape)}")
        logits = outputs.float()
        return logits[:, self.index : self.index + 1] if self.index is not None else logits

    def reference(self, outputs, generator=None):
        prob = torch.sigmoid(self._logits(outputs.detach()))
        return {"prob": prob, "label": prob > self.threshold}

    def objective(self, outputs, ref):
        loss = F.binary_cross_entropy_with_logits(self._logits(outputs), 1.0 - ref["prob"], reduction="none")
        return loss.mean(dim=1)

    def change(self, outputs, ref):
        return (torch.sigmoid(self._logits(outputs)) - ref["prob"]).abs().mean(dim=1)

    def flipped(self, outputs, ref):
        return ((torch.sigmoid(self._logits(outputs)) > self.threshold) != ref["label"]).any(dim=1)

    def describe(self, outputs):
        return torch.sigmoid(self._logits(outputs)).mean(dim=1)


def soft_argmax(heatmaps: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Differentiable keypoint coordinates from heatmaps.

    Args:
        heatmaps: (N, K, H, W) scores (higher = more likely).
        temperature: softmax temperature over the H*W positions.

    Returns:
        (N, K, 2) expected (x, y) in heatmap pixels (pixel centres at integers).

    Example:
        >>> h = torch.full((1, 1, 5, 5), -50.0); h[0, 0, 1, 3] = 50.0
        >>> soft_argmax(h).round()
        tensor([[[3., 1.]]])
    """
    n, k, h, w = heatmaps.shape
    weights = (heatmaps.float().reshape(n, k, h * w) / temperature).softmax(dim=-1).reshape(n, k, h, w)
    ys = torch.arange(h, device=heatmaps.device, dtype=weights.dtype)
    xs = torch.arange(w, device=heatmaps.device, dtype=weights.dtype)
    x = (weights.sum(dim=2) * xs).sum(dim=-1)
    y = (weights.sum(dim=3) * ys).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


class KeypointAdapter(TargetAdapter):
    """A landmark detector producing heatmaps (N, K, H', W') (or coordinates (N, K, 2)).

    ``outputs`` are the keypoints in input pixels (soft-argmax of the heatmaps, rescaled
    to the image). ``L_target`` is the MSE to random target points (thesis Eq. 3.6),
    drawn uniformly inside the central ``spread`` of the image from the seeded generator;
    change is the mean landmark displacement in pixels; flipped when it exceeds
    ``flip_pixels``.
    """

    task = "keypoints"

    def __init__(self, model: nn.Module, flip_pixels: float = 3.0, spread: float = 0.8):
        super().__init__(model)
        self.flip_pixels = flip_pixels
        self.spread = spread
        self.image_size: Optional[tuple] = None  # (H, W) of the last images seen

    def outputs(self, x):
        self.image_size = tuple(x.shape[-2:])
        out = self.model(x)
        if out.dim() == 3 and out.shape[-1] == 2:
            return out.float()
        if out.dim() != 4:
            raise ValueError(
                f"a keypoint target must return heatmaps (N, K, H, W) or points (N, K, 2), got {tuple(out.shape)}"
            )
        scale_x = x.shape[-1] / out.shape[-1]
        scale_y = x.shape[-2] / out.shape[-2]
        points = soft_argmax(out)
        # Heatmap pixel centres map to the centres of the input's blocks of pixels.
        return torch.stack([(points[..., 0] + 0.5) * scale_x - 0.5, (points[..., 1] + 0.5) * scale_y - 0.5], dim=-1)

    def reference(self, outputs, generator=None):
        if self.image_size is None:
            raise RuntimeError("KeypointAdapter.reference needs outputs() to have seen the images first")
        points = outputs.detach().float()
        extent = points.new_tensor([self.image_size[1], self.image_size[0]])
        u = torch.rand(points.shape, generator=generator, dtype=points.dtype).to(points.device)
        goal = ((1 - self.spread) / 2 + self.spread * u) * extent
        return {"points": points, "goal": goal, "extent": extent.expand(points.shape[0], 2)}

    def objective(self, outputs, ref):
        return (((outputs.float() - ref["goal"]) / ref["extent"][:, None, :]) ** 2).mean(dim=(1, 2))

    def change(self, outputs, ref):
        return (outputs.float() - ref["points"]).norm(dim=-1).mean(dim=1)

    def flipped(self, outputs, ref):
        return self.change(outputs, ref) > self.flip_pixels

    def describe(self, outputs):
        return outputs.float().mean(dim=(1, 2))


class SegmentationAdapter(TargetAdapter):
    """A segmenter, (N, P, H, W) logits.

    ``L_target`` drives the probability of every pixel's original label to zero
    (``-log(1 - p)`` averaged over pixels); change is the fraction of pixels whose label
    flips; flipped when that fraction exceeds ``flip_fraction``.
    """

    task = "segmentation"

    def __init__(self, model: nn.Module, flip_fraction: float = 0.1):
        super().__init__(model)
        self.flip_fraction = flip_fraction

    def reference(self, outputs, generator=None):
        if outputs.dim() != 4:
            raise ValueError(f"outputs of a segmentation target must have shape (N, P, H, W), got {tuple(outputs.shape)}")
        return {"label": outputs.detach().argmax(dim=1)}

    def objective(self, outputs, ref):
        logits = outputs.float()
        own = F.one_hot(ref["label"], logits.shape[1]).permute(0, 3, 1, 2).bool()
        others = logits.masked_fill(own, float("-inf")).logsumexp(dim=1)
        return (logits.logsumexp(dim=1) - others).mean(dim=(1, 2))

    def change(self, outputs, ref):
        return (outputs.argmax(dim=1) != ref["label"]).float().mean(dim=(1, 2))

    def flipped(self, outputs, ref):
        return self.change(outputs, ref) > self.flip_fraction

    def describe(self, outputs):
        return outputs.float().softmax(dim=1).amax(dim=1).mean(dim=(1, 2))


ADAPTERS = {
    "binary": BinaryAdapter,
    "multiclass": MultiClassAdapter,
    "attributes": AttributesAdapter,
    "keypoints": KeypointAdapter,
    "segmentation": SegmentationAdapter,
}


def adapter_for(model, task: Optional[str] = None, example: Optional[torch.Tensor] = None) -> TargetAdapter:
    """The adapter for ``model``: ``task`` if given, else ``model.task``, else the output shape.

    Args:
        model: an ``nn.Module``, or a :class:`TargetAdapter` (returned as is).
        task: one of ``"binary"``, ``"multiclass"``, ``"attributes"``, ``"keypoints"``,
            ``"segmentation"``.
        example: images (N, 3, H, W) to infer the task from the output shape when neither
            ``task`` nor ``model.task`` says it: (N, 1) binary, (N, K) multiclass, (N, P, H, W)
            at the input size segmentation, other (N, K, h, w) keypoint heatmaps.

    Example:
        >>> adapter_for(nn.Linear(4, 1), task="binary").task
        'binary'
    """
    if isinstance(model, TargetAdapter):
        return model
    task = task or getattr(model, "task", None)
    if task is None:
        if example is None:
            raise ValueError(
                "the target's task is unknown: pass task= (one of "
                f"{', '.join(TASKS)}) or give the model a `task` attribute"
            )
        with torch.no_grad():
            out = model(example[:1])
        task = _task_from_shape(out, example)
    if task not in ADAPTERS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    return ADAPTERS[task](model)


def _task_from_shape(out: torch.Tensor, example: torch.Tensor) -> str:
    if out.dim() == 1 or (out.dim() == 2 and out.shape[1] == 1):
        return "binary"
    if out.dim() == 2:
        return "multiclass"
    if out.dim() == 3 and out.shape[-1] == 2:
        return "keypoints"
    if out.dim() == 4:
        return "segmentation" if out.shape[-2:] == example.shape[-2:] else "keypoints"
    raise ValueError(
        f"the target's output shape {tuple(out.shape)} matches no adapter; pass task= or write a TargetAdapter"
    )
