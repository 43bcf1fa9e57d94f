"""SIA, the Semantic Image Attack (thesis ch. 2, Algorithm 1), batched on the fused step.

An attribute-conditional editor ``G(x, a) = Dec(Enc(x), a)`` (AttGAN structure) and a
target ``f``. For T steps, jointly (thesis Eq. 2.1)::

    a <- Pi_{B(a0, eps_a)}(a + eta sign(grad_a L(f(G(x, a)))))
    x <- Pi_{B(x0, eps_x)}(x + eta sign(grad_x L(f(G(x, a)))))

with attributes kept in [0, 1] and images in [0, 1]; the adversary is
``x_hat = G(x_T, a_T)`` and the sensitivity of attribute i is ``mean_n |a_T - a_0|``
(Eq. 2.2). ``L`` is the target adapter's objective (thesis: BCE to the flipped label for
binary classifiers, CE for multi-class, MSE to random points for keypoint detectors), so
SIA, ZOOM and the pixel baselines attack the same thing. Each update is one call of the
fused :func:`vmd_fast.ops.projected_sign_step` over the whole batch.

Ablations (Table 2.6): ``mode="image"`` (I: attributes fixed), ``"attribute"`` (A: image
fixed), ``"partial_image"`` (A + PI: the image is updated in the first
``partial_steps`` steps only), ``"partial_attribute"`` (I + PA), ``"full"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from tqdm.auto import tqdm

from vmd_fast import distributed, ops
from vmd_fast.attacks import LossAdapter, LossFn
from vmd_fast.diagnose.metrics import psnr, sdar
from vmd_fast.diagnose.result import DiagnosisResult
from vmd_fast.diagnose.targets import TargetAdapter, adapter_for, repeat_reference, target_label, target_name
from vmd_fast.io.prefetch import DevicePrefetcher, row_batches

MODES = ("full", "image", "attribute", "partial_image", "partial_attribute")


@dataclass
class SIAConfig:
    """SIA's settings, with the thesis's defaults (sec. 2.4.1 and 2.4.2).

    Args:
        eps_x: L_inf radius of the image perturbation (1.5/255).
        eps_a: L_inf radius of the attribute perturbation; 1.0 lets every attribute
            roam all of [0, 1], as the thesis does for attributes other than the target's.
        step: the sign step eta (0.25/255); both spaces take it unless
            ``step_attributes`` is given.
        step_attributes: the attribute codes' own sign step, or None for ``step``. The
            attributes move at most ``steps * step_attributes``: at the thesis's 200 steps
            of 0.25/255 that is 0.196 of their [0, 1] range (Table 2.1 also runs 4/255).
        steps: T (200).
        mode: one of ``MODES``.
        partial_steps: how many first steps the "partial" space is updated (20).
        protect: attributes that mean the same as the target's label (e.g. "smiling" for
            a smile classifier), held within ``eps_protect`` of their start so the attack
            cannot simply change the true label.
        eps_protect: their radius (a small constant, thesis 2.4.2).
        cuda_graph: on CUDA, capture one step in a CUDA graph and replay it.
    """

    eps_x: float = 1.5 / 255
    eps_a: float = 1.0
    step: float = 0.25 / 255
    step_attributes: Optional[float] = None
    steps: int = 200
    mode: str = "full"
    partial_steps: int = 20
    protect: Sequence[str] = ()
    eps_protect: float = 0.05
    cuda_graph: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        for name in ("eps_x", "eps_a", "step", "eps_protect", "step_attributes"):
            value = getattr(self, name)
            if value is None and name == "step_attributes":
                continue
            if not isinstance(value, (int, float)) or value < 0 or value != value:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be a positive integer, got {self.steps!r}")
        if not isinstance(self.partial_steps, int) or self.partial_steps < 0:
            raise ValueError(f"partial_steps must be an integer >= 0, got {self.partial_steps!r}")


@dataclass
class SIAAttack:
    """The outcome of :func:`attack` for a batch of N images over A attributes.

    Args:
        adversarial: (N, 3, H, W) ``x_hat = G(x_T, a_T)``.
        x_T: (N, 3, H, W) the perturbed input images.
        a_0, a_T: (N, A) the attributes before and after.
        success: (N,) bool, whether ``x_hat`` flips the target's prediction of ``x``.
        attributes: the A attribute names.
        psnr, ssim: (N,) image quality of ``x_hat`` against ``x``.
    """

    adversarial: torch.Tensor
    x_T: torch.Tensor
    a_0: torch.Tensor
    a_T: torch.Tensor
    success: torch.Tensor
    attributes: List[str]
    psnr: torch.Tensor
    ssim: torch.Tensor
    config: SIAConfig = field(default_factory=SIAConfig)

    @property
    def changes(self) -> torch.Tensor:
        """(N, A) ``|a_T - a_0|``."""
        return (self.a_T - self.a_0).abs()

    @property
    def sensitivity(self) -> Dict[str, float]:
        """attribute -> ``mean_n |a_T - a_0|`` (thesis Eq. 2.2)."""
        return {name: float(v) for name, v in zip(self.attributes, self.changes.double().mean(dim=0))}

    @property
    def success_rate(self) -> float:
        return float(self.success.float().mean())


def image_ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N,) SSIM of x against y with the standard 11-tap window, narrowed for small images."""
    side = min(x.shape[-2:])
    window = min(11, side if side % 2 else side - 1)
    if window < 3:
        return torch.full((x.shape[0],), float("nan"), device=x.device)
    return ops.ssim(x.float(), y.float(), win_size=window, size_average=False)


def _editor_attributes(editor: nn.Module, a: torch.Tensor) -> List[str]:
    names = list(getattr(editor, "attributes", []) or [])
    if not names:
        names = [f"attribute_{i}" for i in range(a.shape[1])]
    if len(names) != a.shape[1]:
        raise ValueError(f"a must have one column per editor attribute ({len(names)}), got shape {tuple(a.shape)}")
    return names


def _edit(editor: nn.Module, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    if hasattr(editor, "encode") and hasattr(editor, "decode"):
        return editor.decode(editor.encode(x), a)
    return editor(x, a)


def _check_inputs(x: torch.Tensor, a: Optional[torch.Tensor]) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        raise ValueError(f"x must be a (N, 3, H, W) tensor, got {getattr(x, 'shape', type(x))}")
    if a is None:
        raise ValueError("a must hold the (N, A) attributes of x in [0, 1] (vmd_fast.sia.diagnose takes them from the embedded world)")
    if a.dim() != 2 or a.shape[0] != x.shape[0]:
        raise ValueError(f"a must have shape (N={x.shape[0]}, A), got {tuple(a.shape)}")
    if a.device != x.device:
        raise ValueError(f"a must be on the device of x ({x.device}), got {a.device}")
    for name, t in (("x", x), ("a", a)):
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or Inf")
        if t.min() < 0 or t.max() > 1:
            raise ValueError(f"{name} must lie in [0, 1]")


def _target_adapter(target, example: torch.Tensor, loss: Optional[LossFn]) -> TargetAdapter:
    """``target``'s adapter, searching with the user's ``loss`` when one is given."""
    adapter = target if isinstance(target, TargetAdapter) else adapter_for(target, example=example)
    return adapter if loss is None else LossAdapter(adapter, loss)


def _seeded(seed: Optional[int], generator: Optional[torch.Generator]) -> Optional[torch.Generator]:
    if seed is None:
        return generator
    if generator is not None:
        raise ValueError("give seed or generator, not both")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    return torch.Generator().manual_seed(seed)


class _SIALoop:
    """The T steps of Eq. 2.1 on static buffers ``x``, ``a`` (updated in place).

    One step (editor, target, objective, gradients, fused projected sign steps) is a
    function of the buffers only, so on CUDA it is captured once per combination of the
    spaces it updates and replayed, with no host synchronisation in the loop.
    """

    def __init__(self, adapter, editor, ref, x0, a0, cfg: SIAConfig, protect: torch.Tensor):
        self.adapter, self.editor, self.ref, self.x0, self.a0, self.cfg, self.protect = adapter, editor, ref, x0, a0, cfg, protect
        self.x, self.a = x0.clone(), a0.clone()
        self.graphs: Dict[tuple, torch.cuda.CUDAGraph] = {}

    def updates(self, step: int) -> tuple:
        mode, partial = self.cfg.mode, step < self.cfg.partial_steps
        update_x = mode in ("full", "image", "partial_attribute") or (mode == "partial_image" and partial)
        update_a = mode in ("full", "attribute", "partial_image") or (mode == "partial_attribute" and partial)
        return update_x, update_a

    def step(self, update_x: bool, update_a: bool) -> None:
        cfg = self.cfg
        x_var = self.x.detach().requires_grad_(update_x)
        a_var = self.a.detach().requires_grad_(update_a)
        loss = self.adapter.objective(self.adapter.outputs(_edit(self.editor, x_var, a_var)), self.ref).sum()
        wrt = [v for v, on in ((x_var, update_x), (a_var, update_a)) if on]
        grads = list(torch.autograd.grad(loss, wrt))
        # Descend the objective: the fused step moves along +sign(grad).
        if update_x:
            ops.projected_sign_step(self.x, grads.pop(0).neg_(), self.x0, cfg.step, cfg.eps_x, 0.0, 1.0, out=self.x)
        if update_a:
            step_a = cfg.step if cfg.step_attributes is None else cfg.step_attributes
            ops.projected_sign_step(self.a, grads.pop(0).neg_(), self.a0, step_a, cfg.eps_a, 0.0, 1.0, out=self.a)
            if self.protect.numel():
                kept = self.a0[:, self.protect]
                self.a[:, self.protect] = self.a[:, self.protect].clamp(kept - cfg.eps_protect, kept + cfg.eps_protect)

    def _graph(self, updates: tuple) -> "torch.cuda.CUDAGraph":
        if updates not in self.graphs:
            saved = (self.x.clone(), self.a.clone())
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph
                    self.step(*updates)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.step(*updates)
            self.x.copy_(saved[0])
            self.a.copy_(saved[1])
            self.graphs[updates] = graph
        return self.graphs[updates]

    def run(self, use_graph: bool) -> None:
        with ops.value_checks(False):  # inputs were checked; no host syncs inside the loop
            for step in range(self.cfg.steps):
                updates = self.updates(step)
                if not any(updates):
                    continue
                if use_graph:
                    self._graph(updates).replay()
                else:
                    self.step(*updates)


def attack(
    target,
    x: torch.Tensor,
    a: Optional[torch.Tensor] = None,
    editor: Optional[nn.Module] = None,
    config: Optional[SIAConfig] = None,
    generator: Optional[torch.Generator] = None,
    loss: Optional[LossFn] = None,
    seed: Optional[int] = None,
    **overrides,
) -> SIAAttack:
    """Run SIA (Algorithm 1) on a whole batch.

    Args:
        target: the model under attack (its task from ``target.task`` or the output shape)
            or a :class:`~vmd_fast.diagnose.TargetAdapter`.
        x: (N, 3, H, W) images in [0, 1].
        a: (N, A) their attributes in [0, 1], in the editor's attribute order.
        editor: the attribute editor (``encode`` / ``decode`` or ``editor(x, a)``);
            default: the zoo's ``"editor"``.
        config: :class:`SIAConfig`; keyword ``overrides`` replace its fields
            (``steps=50, mode="image"``).
        generator: seeds the keypoint adapter's random target points.
        loss: your own per-image loss ``loss(outputs, labels) -> (N,)`` to ascend instead of
            the adapter's objective, ``labels`` being the target's predictions on ``x``
            (torchattacks' convention, as in :func:`vmd_fast.attacks.pgd`; see
            :class:`vmd_fast.attacks.LossAdapter`). Success is still judged by the adapter.
        seed: the same as ``generator=torch.Generator().manual_seed(seed)``.

    Returns:
        :class:`SIAAttack`.

    Example:
        >>> from vmd_fast import zoo
        >>> target, editor = zoo.load("eyeglasses_classifier"), zoo.load("editor")
        >>> x, a = _world_images(2, editor.attributes, seed=0)
        >>> # A Carlini-Wagner-style margin: push the logit past the boundary by 2, then stop.
        >>> margin = lambda out, y: torch.where(y > 0, -out[:, 0], out[:, 0]).clamp(max=2.0)
        >>> result = attack(target, x, a, editor=editor, steps=3, loss=margin, seed=0)
        >>> result.a_T.shape, result.success.shape
        (torch.Size([2, 12]), torch.Size([2]))
    """
    cfg = config or SIAConfig()
    if overrides:
        cfg = SIAConfig(**{**cfg.__dict__, **overrides})
    if editor is None:
        from vmd_fast import zoo

        editor = zoo.load("editor", device=x.device)
    _check_inputs(x, a)
    names = _editor_attributes(editor, a)
    unknown = [p for p in cfg.protect if p not in names]
    if unknown:
        raise ValueError(f"protect names attributes the editor does not have: {unknown} (it has {names})")
    generator = _seeded(seed, generator)
    adapter = _target_adapter(target, x, loss)
    x0, a0 = x.detach().clone(), a.detach().clone()
    with torch.no_grad():
        ref = adapter.reference(adapter.outputs(x0), generator=generator)
    protect = torch.tensor([names.index(p) for p in cfg.protect], dtype=torch.long, device=x.device)
    loop = _SIALoop(adapter, editor, ref, x0, a0, cfg, protect)
    loop.run(use_graph=cfg.cuda_graph and x.device.type == "cuda")
    x_t, a_t = loop.x, loop.a
    with torch.no_grad():
        adversarial = _edit(editor, x_t, a_t).clamp(0, 1)
        success = adapter.flipped(adapter.outputs(adversarial), ref)
        quality_ssim = image_ssim(adversarial, x0)
    return SIAAttack(
        adversarial=adversarial, x_T=x_t, a_0=a0, a_T=a_t, success=success, attributes=names,
        psnr=psnr(adversarial, x0), ssim=quality_ssim, config=cfg,
    )


def _world_images(n: int, names: Sequence[str], seed: int, rows: slice = slice(None)) -> tuple:
    """Faces ``rows`` of ``n`` seeded faces of the embedded world, and their attributes in
    ``names`` order (all ``n`` are sampled, so a face does not depend on ``rows``), on the
    host: :func:`diagnose` moves them to the device a batch at a time."""
    from vmd_fast.domains import faces

    params = faces.sample_params(n, generator=torch.Generator().manual_seed(seed))[rows]
    return faces.render(params).images, faces.attribute_vector(params, names)


def diagnose(
    target,
    n_images: int = 64,
    editor: Optional[nn.Module] = None,
    images: Optional[torch.Tensor] = None,
    attributes: Optional[torch.Tensor] = None,
    config: Optional[SIAConfig] = None,
    batch_size: int = 64,
    seed: int = 0,
    device=None,
    progress: bool = True,
    loss: Optional[LossFn] = None,
    **overrides,
) -> DiagnosisResult:
    """SIA model diagnosis: Algorithm 1 over many images, reported like ZOOM.

    ``changes`` are ``|a_T - a_0|`` (so ``.sensitivity`` is Eq. 2.2); the single-attribute
    counterfactual of attribute i is ``G(x_0, a_0 with a_i := a_T,i)`` and ``flipped``
    says whether it alone flips the target; ``multi`` holds the joint adversary
    ``G(x_T, a_T)`` (its ``flipped`` is the attack's success).

    Args:
        target: the model or a :class:`~vmd_fast.diagnose.TargetAdapter`.
        n_images: faces rendered from the embedded world (seeded by ``seed``) when
            ``images`` is not given.
        editor: default: the zoo's ``"editor"``.
        images, attributes: your own (N, 3, H, W) images and (N, A) attributes in [0, 1],
            on any device: host tensors are pinned a batch at a time and copied to
            ``device`` one batch ahead of the attack (:class:`vmd_fast.io.prefetch.DevicePrefetcher`).
        config, overrides: :class:`SIAConfig` and field overrides.
        loss: a per-image loss to ascend instead of the adapter's objective, as in
            :func:`attack`; the report's ``config["loss"]`` names it.
        batch_size: images attacked together.
        seed: seeds the rendered faces and, with ``seed + b``, batch b's keypoint targets.

    Returns:
        :class:`~vmd_fast.diagnose.DiagnosisResult` with ``method="sia"`` and metrics
        ``attack_success_rate``, ``psnr``, ``ssim``, ``sdar``.

    When :mod:`torch.distributed` is initialised (``torchrun``), each rank attacks (and
    renders) one contiguous block of the batches (:func:`vmd_fast.distributed.shard`),
    and the per-image rows are gathered in image order: every rank returns the
    single-process result.
    """
    cfg = config or SIAConfig()
    if overrides:
        cfg = SIAConfig(**{**cfg.__dict__, **overrides})
    if editor is None:
        from vmd_fast import zoo

        editor = zoo.load("editor", device=device or "cpu")
    device = torch.device(device) if device is not None else next(iter(editor.parameters()), torch.empty(0)).device
    names = list(getattr(editor, "attributes", []) or [])
    if images is None and not names:
        raise ValueError("the editor has no `attributes` names: pass images= and attributes=")
    if images is not None and attributes is None:
        raise ValueError("attributes (N, A) must be given with images")
    total = n_images if images is None else images.shape[0]
    batches = list(range(0, total, batch_size))
    mine = distributed.shard(len(batches))  # this rank's global batch indices
    lo = batches[mine.start] if mine else 0
    hi = min(total, batches[mine.stop - 1] + batch_size) if mine else 1  # an empty rank keeps one example image
    if images is None:
        images, attributes = _world_images(n_images, names, seed, rows=slice(lo, hi))
    else:
        images, attributes = images[lo:hi], attributes[lo:hi]
    batch_rows = DevicePrefetcher(row_batches(images, attributes, batch_size=batch_size), device)
    label = target_label(target)
    if not cfg.protect and label in names:
        # The attribute the target classifies is its ground truth: hold it (thesis 2.4.2).
        cfg = SIAConfig(**{**cfg.__dict__, "protect": (label,)})
    adapter = _target_adapter(target, images[:1].to(device), loss)
    parts: Dict[str, List[torch.Tensor]] = {k: [] for k in ("x0", "a0", "aT", "adv", "success", "joint_change", "single", "single_change", "single_flip", "psnr", "ssim")}
    bar = tqdm(zip(mine, batch_rows), total=len(mine), desc="SIA", unit="batch",
               disable=not (progress and distributed.is_main()))
    for b, (x, a) in bar:
        # Seeded by the global batch index, so that a batch is the same on any rank.
        result = attack(adapter, x, a, editor=editor, config=cfg, generator=torch.Generator().manual_seed(seed + b))
        with torch.no_grad(), ops.value_checks(False):
            # change() and flipped() compare with the clean prediction only (keypoint goals unused).
            ref = adapter.reference(adapter.outputs(x), generator=torch.Generator().manual_seed(seed))
            joint_change = adapter.change(adapter.outputs(result.adversarial), ref)
            n, n_attr = a.shape
            # One counterfactual per attribute: only a_i moved to its attacked value.
            edited = a.repeat_interleave(n_attr, 0)
            rows = torch.arange(n * n_attr, device=a.device)
            edited[rows, rows % n_attr] = result.a_T.repeat_interleave(n_attr, 0)[rows, rows % n_attr]
            singles = _edit(editor, x.repeat_interleave(n_attr, 0), edited).clamp(0, 1)
            out = adapter.outputs(singles)
            rep = repeat_reference(ref, n_attr)
            single_change = adapter.change(out, rep).reshape(n, n_attr)
            single_flip = adapter.flipped(out, rep).reshape(n, n_attr)
        for key, value in (("x0", x), ("a0", result.a_0), ("aT", result.a_T), ("adv", result.adversarial),
                           ("success", result.success), ("joint_change", joint_change),
                           ("single", singles.reshape(n, n_attr, *x.shape[1:])), ("single_change", single_change),
                           ("single_flip", single_flip), ("psnr", result.psnr), ("ssim", result.ssim)):
            value = value.detach().cpu()
            parts[key].append(value.float() if value.is_floating_point() else value)  # float32, also under autocast
    cat = distributed.gather_rows({k: torch.cat(v) for k, v in parts.items() if v})
    codes = cat["aT"] - cat["a0"]
    changes = codes.abs()
    finite_psnr = cat["psnr"][torch.isfinite(cat["psnr"])]
    return DiagnosisResult(
        method="sia", target=target_name(adapter), task=adapter.task,
        attributes=names or [f"attribute_{i}" for i in range(codes.shape[1])],
        changes=changes, flipped=cat["single_flip"], originals=cat["x0"], counterfactuals=cat["single"], codes=codes,
        multi={"counterfactuals": cat["adv"], "codes": codes, "flipped": cat["success"], "changes": cat["joint_change"]},
        config={**cfg.__dict__, "protect": list(cfg.protect), "n_images": int(total), "seed": seed,
                "loss": None if loss is None else getattr(loss, "__name__", type(loss).__name__)},
        metrics={"attack_success_rate": float(cat["success"].float().mean()),
                 "psnr": float(finite_psnr.mean()) if finite_psnr.numel() else float("inf"),
                 "ssim": float(cat["ssim"].nanmean()), "sdar": sdar(changes.double().mean(0)),
                 "single_attribute_change": {n: float(v) for n, v in zip(names, cat["single_change"].mean(0))}},
    )



def spt_attack(
    target,
    x: torch.Tensor,
    a: torch.Tensor,
    editor: Optional[nn.Module] = None,
    steps: int = 200,
    lr: float = 0.01,
    eps_a: float = 1.0,
    protect: Sequence[str] = (),
    eps_protect: float = 0.05,
    generator: Optional[torch.Generator] = None,
    loss: Optional[LossFn] = None,
    seed: Optional[int] = None,
) -> SIAAttack:
    """SPT-style semantic attack (Joshi et al. 2019): attributes only, optimised with RMSProp.

    The baseline SIA's ablation compares against (thesis Table 2.6 note): the image is not
    perturbed, and the attribute update is RMSProp on the target's objective instead of
    SIA's sign step; attributes stay in [0, 1] and within ``eps_a`` of their start.

    Args:
        target, x, a, editor, protect, eps_protect, generator, loss, seed: as in :func:`attack`.
        steps: optimiser steps.
        lr: RMSProp's learning rate.
        eps_a: L_inf radius of the attribute change.

    Returns:
        :class:`SIAAttack` (``x_T`` is ``x``).
    """
    if editor is None:
        from vmd_fast import zoo

        editor = zoo.load("editor", device=x.device)
    _check_inputs(x, a)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    names = _editor_attributes(editor, a)
    generator = _seeded(seed, generator)
    adapter = _target_adapter(target, x, loss)
    x0, a0 = x.detach().clone(), a.detach().clone()
    with torch.no_grad():
        ref = adapter.reference(adapter.outputs(x0), generator=generator)
    keep = torch.tensor([names.index(p) for p in protect], dtype=torch.long, device=x.device)
    a_var = a0.clone().requires_grad_()
    optimiser = torch.optim.RMSprop([a_var], lr=lr)
    h = editor.encode(x0) if hasattr(editor, "encode") else None
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        edited = editor.decode(h, a_var) if h is not None else editor(x0, a_var)
        adapter.objective(adapter.outputs(edited), ref).sum().backward()
        optimiser.step()
        with torch.no_grad():
            a_var.copy_(torch.min(torch.max(a_var, a0 - eps_a), a0 + eps_a).clamp(0, 1))
            if keep.numel():
                a_var[:, keep] = a_var[:, keep].clamp(a0[:, keep] - eps_protect, a0[:, keep] + eps_protect)
    a_t = a_var.detach()
    with torch.no_grad():
        adversarial = _edit(editor, x0, a_t).clamp(0, 1)
        success = adapter.flipped(adapter.outputs(adversarial), ref)
    return SIAAttack(adversarial=adversarial, x_T=x0, a_0=a0, a_T=a_t, success=success, attributes=names,
                     psnr=psnr(adversarial, x0), ssim=image_ssim(adversarial, x0),
                     config=SIAConfig(mode="attribute", steps=steps, eps_a=eps_a, protect=tuple(protect),
                                      eps_protect=eps_protect))
