"""ZOOM, zero-shot model diagnosis in a StyleGAN style space steered by CLIP (thesis ch. 3).

The pieces, in the thesis's order:

1. **Relevance matrix** ``M`` (StyleCLIP global directions, thesis 3.3.2): how CLIP's image
   embedding moves when each style channel is mutated by ``+-alpha sigma_c``; built in
   batches of (images x channels) edits with the fused :func:`vmd_fast.ops.relevance_accumulate`
   and cached on disk under the generator's and CLIP's checksums
   (:func:`relevance_matrix`).
2. **Edit directions** for any attribute prompts: ``dt = CLIP_text(p + a) - CLIP_text(p)``
   (Eq. 3.1), ``ds = (M dt) 1(|M dt| >= lambda)`` scaled by the channel std and normalised
   (Eq. 3.2), all attributes in one :func:`vmd_fast.ops.relevance_directions` call.
3. **Counterfactuals**: ``x_hat = G(s + sum_i w_i ds_i)`` (Eq. 3.3) minimising
   ``alpha L_target + beta (1 - SSIM(x_hat, x)) + gamma CE(CLIP(x_hat), CLIP(x))`` (Eq. 3.4)
   with ``w <- clamp(w - eta grad_w, -eps, eps)`` (fused :func:`vmd_fast.ops.clamp_gd_step`),
   SSIM against cached reference statistics and the fused CLIP-consistency loss. All
   images x attributes are one batch (single-attribute mode: one ``w_i`` per row), or all
   attributes of an image together (multi-attribute mode).
4. **Sensitivity** ``h_i = E |f(x) - f(x_hat_i)|`` per attribute, flip rates and flip
   resistance after k steps (FR-25, FR-100, Table 3.3), in a
   :class:`vmd_fast.diagnose.DiagnosisResult`.

On CUDA the inner step (generator, target, losses, gradient, update) is captured once in a
CUDA graph and replayed; on every device the run checkpoints after each batch of images
(and every ``checkpoint_every`` steps) and resumes to the same result.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from vmd_fast import distributed, ops
from vmd_fast.diagnose.result import DiagnosisResult
from vmd_fast.diagnose.targets import TargetAdapter, adapter_for, repeat_reference, target_label, target_name

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------
# The generator and CLIP, as ZOOM uses them


def _model_checksum(module: nn.Module) -> str:
    """The zoo's sha256 when the module came from the zoo, else a hash of its weights."""
    info = getattr(module, "zoo_info", None)
    if isinstance(info, dict) and info.get("sha256"):
        return str(info["sha256"])
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # 0-dim too
    return digest.hexdigest()


def _module_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def clip_image_features(clip: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Unit-norm CLIP image embeddings of images in [0, 1], (N, D).

    Uses ``vmd_fast.models.clip.normalize_images`` when the model carries open_clip's
    preprocessing configuration, so that any open_clip model works the same way.
    """
    if hasattr(getattr(clip, "visual", None), "preprocess_cfg"):
        from vmd_fast.models.clip import normalize_images

        x = normalize_images(x, clip)
    return nn.functional.normalize(clip.encode_image(x).float(), dim=-1)


def clip_text_features(clip: nn.Module, prompts: Sequence[str], tokenizer: Optional[Callable] = None) -> torch.Tensor:
    """Unit-norm CLIP text embeddings of ``prompts``, (P, D)."""
    if tokenizer is None:
        from vmd_fast.models.clip import tokenizer as default_tokenizer

        tokenizer = default_tokenizer()
    tokens = tokenizer(list(prompts)).to(_module_device(clip))
    with torch.no_grad():
        return nn.functional.normalize(clip.encode_text(tokens).float(), dim=-1)


# ---------------------------------------------------------------------------------------
# 1. The relevance matrix


@dataclass
class RelevanceConfig:
    """How :func:`relevance_matrix` probes the style space (StyleCLIP's defaults where it has them).

    Args:
        n_images: style codes each channel is mutated on (the expectation over images).
        strength: the mutation ``+-strength * sigma_c`` (StyleCLIP: 5).
        stats_images: samples for the per-channel mean and std of the style space.
        batch_size: edited images per forward pass (memory bound).
        seed: seeds the style codes.
    """

    n_images: int = 8
    strength: float = 5.0
    stats_images: int = 2000
    batch_size: int = 256
    seed: int = 0


def style_statistics(G: nn.Module, n: int = 2000, seed: int = 0, batch_size: int = 500) -> Dict[str, torch.Tensor]:
    """Mean and std of every style channel over ``n`` samples: ``{"mean": (C,), "std": (C,)}``.

    Streamed: each batch's mean and sum of squared deviations are merged into running
    ones (Chan et al.'s pairwise update, in float64), so the memory is one batch of
    ``(batch_size, C)`` styles whatever ``n`` (an FFHQ-1024 style space has ~9,000 channels).
    """
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2 (a std needs two samples), got {n!r}")
    device = _module_device(G)
    gen = torch.Generator().manual_seed(seed)
    count, mean, m2 = 0, None, None
    with torch.no_grad():
        for start in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - start), G.z_dim, generator=gen).to(device)
            flat = G.flatten_styles(G.mapping_to_styles(z)).double()  # (B, C)
            b_mean = flat.mean(0)
            b_m2 = (flat - b_mean).square_().sum(0)
            if mean is None:
                count, mean, m2 = flat.shape[0], b_mean, b_m2
                continue
            total = count + flat.shape[0]
            delta = b_mean - mean
            mean = mean + delta * (flat.shape[0] / total)
            m2 = m2 + b_m2 + delta.square() * (count * flat.shape[0] / total)
            count = total
    return {"mean": mean.float(), "std": (m2 / (count - 1)).sqrt().float()}


def _relevance_cache_path(cache_dir: str, G, clip, config: RelevanceConfig) -> str:
    key = json.dumps({"G": _model_checksum(G), "clip": _model_checksum(clip), **asdict(config)}, sort_keys=True)
    return os.path.join(cache_dir, f"relevance-{hashlib.sha256(key.encode()).hexdigest()[:20]}.safetensors")


def relevance_matrix(
    G: nn.Module,
    clip: nn.Module,
    config: Optional[RelevanceConfig] = None,
    cache_dir: Optional[str] = None,
    progress: bool = True,
) -> Dict[str, torch.Tensor]:
    """The StyleCLIP relevance matrix of ``G``'s style space for ``clip``.

    For each of ``n_images`` style codes and every channel c, the images
    ``G(s +- strength sigma_c 1_c)`` are embedded by CLIP and the normalised difference is
    accumulated into row c (:func:`vmd_fast.ops.relevance_accumulate`, sparse form);
    rows are normalised at the end. Streamed over batches of ``batch_size`` edits, so the
    memory is bounded whatever the number of channels. Under ``torchrun`` the batches of
    probes are split between the ranks and ``M`` is summed over them (the same matrix up
    to the float32 rounding of that sum); rank 0 writes the cache.

    Args:
        G: the style generator (``mapping_to_styles``, ``synthesize``, ``flatten_styles``,
            ``unflatten_styles``, ``z_dim``).
        clip: an open_clip-style model (``encode_image``).
        config: :class:`RelevanceConfig`.
        cache_dir: where to keep the result, keyed by both models' checksums and the
            config; a later call with the same key loads it instead of recomputing.

    Returns:
        ``{"M": (C, D), "mean": (C,), "std": (C,)}`` (float32, on ``G``'s device).
    """
    from safetensors.torch import load_file, save_file

    cfg = config or RelevanceConfig()
    device = _module_device(G)
    path = _relevance_cache_path(cache_dir, G, clip, cfg) if cache_dir else None
    if path and os.path.exists(path):
        log.info("relevance matrix loaded from %s", path)
        return {k: v.to(device) for k, v in load_file(path).items()}
    stats = style_statistics(G, cfg.stats_images, cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    with torch.no_grad():
        z = torch.randn(cfg.n_images, G.z_dim, generator=gen).to(device)
        base = G.flatten_styles(G.mapping_to_styles(z))  # (n, C)
        channels = base.shape[1]
        dim = clip_image_features(clip, G.synthesize(G.unflatten_styles(base[:1]))).shape[1]
        M = torch.zeros(channels, dim, device=device)
        pairs = cfg.n_images * channels  # (image, channel) probes, channel-major within an image
        per_batch = max(1, cfg.batch_size // 2)
        mine = distributed.shard(-(-pairs // per_batch))
        bar = tqdm(total=max(0, min(pairs, mine.stop * per_batch) - mine.start * per_batch), desc="relevance matrix",
                   unit="probe", disable=not (progress and distributed.is_main()))
        for start in (k * per_batch for k in mine):
            idx = torch.arange(start, min(start + per_batch, pairs), device=device)
            image, channel = idx // channels, idx % channels
            shift = cfg.strength * stats["std"].to(device)[channel]
            edits = base[image].repeat(2, 1)  # (2B, C): the + edits, then the - edits
            rows = torch.arange(idx.numel(), device=device)
            edits[rows, channel] += shift
            edits[rows + idx.numel(), channel] -= shift
            feats = clip_image_features(clip, G.synthesize(G.unflatten_styles(edits)))
            delta = feats[: idx.numel()] - feats[idx.numel():]
            ops.relevance_accumulate(M, torch.ones(idx.numel(), device=device), delta, channel_index=channel)
            bar.update(idx.numel())
        bar.close()
        if distributed.is_distributed():
            torch.distributed.all_reduce(M)
        result = {"M": ops.normalize_relevance(M), "mean": stats["mean"].to(device), "std": stats["std"].to(device)}
    if path and distributed.is_main():
        os.makedirs(cache_dir, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in result.items()}, path)
        log.info("relevance matrix cached in %s", path)
    return result


# ---------------------------------------------------------------------------------------
# 2. Edit directions


WORLD_PROMPTS = {
    "eyeglasses": "eyeglasses", "smiling": "a smile", "mouth_open": "an open mouth", "beard": "a beard",
    "moustache": "a moustache", "bangs": "bangs", "lipstick": "lipstick", "hat": "a hat",
    "earrings": "earrings", "heavy_makeup": "heavy makeup", "grey_hair": "grey hair",
}
"""The embedded world's binary attributes and the prompts ZOOM diagnoses them with."""

DEFAULT_ATTRIBUTES = tuple(WORLD_PROMPTS.values())
"""Attribute prompts of the embedded world's faces (the ZOOM default of the command line)."""

_VERBATIM = ("with ", "without ", "wearing ", "who ", "in ", "on ", "that ", "not ")


def attribute_prompt(attribute: str, prefix: str = "a photo of a face", template: Optional[str] = None) -> str:
    """The prompt ``p + a`` of Eq. 3.1 for one attribute.

    With no ``template``, a bare attribute reads "<prefix> with <attribute>" and a phrase
    that already starts with a preposition or verb ("wearing a hat") follows the prefix as is.

    Example:
        >>> attribute_prompt("eyeglasses"), attribute_prompt("wearing a hat", prefix="a face")
        ('a photo of a face with eyeglasses', 'a face wearing a hat')
    """
    if template is not None:
        return template.format(prefix=prefix, attribute=attribute)
    if attribute.lower().startswith(_VERBATIM):
        return f"{prefix} {attribute}"
    return f"{prefix} with {attribute}"


def text_directions(
    clip: nn.Module,
    attributes: Sequence[str],
    prefix: str = "a photo of a face",
    template: Optional[str] = None,
    tokenizer: Optional[Callable] = None,
) -> torch.Tensor:
    """``dt_i = CLIP_text(p + a_i) - CLIP_text(p)``, normalised (thesis Eq. 3.1); (A, D).

    Prompts are written by :func:`attribute_prompt`; e.g. with the thesis's prefix,
    ``text_directions(clip, ["eyeglasses"], prefix="a face")`` uses "a face with
    eyeglasses" minus "a face".
    """
    prompts = [attribute_prompt(a, prefix, template) for a in attributes]
    feats = clip_text_features(clip, [prefix] + prompts, tokenizer)
    return nn.functional.normalize(feats[1:] - feats[:1], dim=-1)


class ClipScorer:
    """A zero-shot CLIP annotator: images -> (N, A) probabilities that each attribute is there.

    For attribute ``a`` the score is CLIP's softmax over a "present" and an "absent" text
    embedding at the model's own temperature; each side may be a prompt ensemble (its
    unit embeddings averaged, as in open_clip's zero-shot classifiers). ZOOM's thesis uses
    CLIP this way as a "super annotator" to check that its edits are decoupled
    (Fig. 3.6, :meth:`vmd_fast.diagnose.DiagnosisResult.decoupling`).

    Args:
        clip: an open_clip-style model (``encode_image``, ``encode_text``, ``logit_scale``).
        attributes: the attribute names or phrases (the score columns).
        prefix, template: how the default prompts are written: "<prefix> with <a>"
            (:func:`attribute_prompt`) against "<prefix> without <a>".
        prompts: per attribute, ``(present, absent)``, each a prompt or a list of prompts;
            replaces the default prompts.
        tokenizer: as in :func:`clip_text_features`.

    Example:
        >>> scorer = ClipScorer.for_world(zoo.load("clip"), ["a beard", "mouth_open"])  # doctest: +SKIP
        >>> scorer(images).shape                                                       # doctest: +SKIP
        torch.Size([N, 2])
    """

    name = "CLIP zero-shot"

    def __init__(self, clip: nn.Module, attributes: Sequence[str], prefix: str = "a photo of a face",
                 template: Optional[str] = None, prompts: Optional[Sequence] = None,
                 tokenizer: Optional[Callable] = None):
        self.attributes = list(attributes)
        if not self.attributes or not all(isinstance(a, str) and a.strip() for a in self.attributes):
            raise ValueError(f"attributes must be a non-empty list of phrases, got {attributes!r}")
        if prompts is None:
            prompts = [self.default_prompts(a, prefix, template) for a in self.attributes]
        prompts = [tuple(pair) for pair in prompts]
        if len(prompts) != len(self.attributes) or any(len(pair) != 2 for pair in prompts):
            raise ValueError(f"prompts needs one (present, absent) pair per attribute ({len(self.attributes)})")
        self.clip = clip
        self.prompts = [tuple([side] if isinstance(side, str) else list(side) for side in pair) for pair in prompts]
        sides = []
        for side in (0, 1):
            for pair in self.prompts:
                feats = clip_text_features(clip, pair[side], tokenizer)
                sides.append(nn.functional.normalize(feats.mean(0), dim=0))
        self.text = torch.stack(sides)  # (2A, D): every present embedding, then every absent one
        scale = getattr(clip, "logit_scale", None)
        self.scale = float(scale.exp()) if isinstance(scale, torch.Tensor) else 100.0

    @staticmethod
    def default_prompts(attribute: str, prefix: str = "a photo of a face", template: Optional[str] = None):
        """``("<prefix> with <a>", "<prefix> without <a>")``, the first by :func:`attribute_prompt`."""
        return attribute_prompt(attribute, prefix, template), f"{prefix} without {attribute}"

    @classmethod
    def for_world(cls, clip: nn.Module, attributes: Sequence[str], tokenizer: Optional[Callable] = None) -> "ClipScorer":
        """The annotator of the embedded world: attributes named as the world names them
        ("mouth_open") or as ZOOM prompts them (:data:`WORLD_PROMPTS`, "an open mouth") are
        asked with the held-out zero-shot prompts the zoo's CLIP was checked on
        (``vmd_fast.zoo.recipes.clip.zero_shot_prompts``); any other with the defaults."""
        from vmd_fast.zoo.recipes.clip import HELD_OUT_PHRASES, zero_shot_prompts

        by_prompt = {prompt: name for name, prompt in WORLD_PROMPTS.items()}
        prompts = []
        for a in attributes:
            name = a if a in HELD_OUT_PHRASES or a == "male" else by_prompt.get(a)
            prompts.append(zero_shot_prompts(name) if name else cls.default_prompts(a))
        return cls(clip, attributes, prompts=prompts, tokenizer=tokenizer)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from vmd_fast.ops._backend import check_finite, check_tensor

        check_tensor(images, "images", ndim=4)
        if images.shape[1] != 3:
            raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
        check_finite(images, "images")
        a = len(self.attributes)
        with torch.no_grad():
            logits = self.scale * clip_image_features(self.clip, images) @ self.text.to(images.device).T  # (N, 2A)
            return torch.softmax(torch.stack([logits[:, :a], logits[:, a:]], dim=-1), dim=-1)[..., 0]


def check_max_channels(value, name: str = "max_channels") -> None:
    """Raise a ``ValueError`` naming ``name`` unless ``value`` is a positive int or None."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{name} must be a positive integer or None, got {value!r}")


def global_directions(
    relevance: Dict[str, torch.Tensor],
    dt: torch.Tensor,
    threshold: float = 0.05,
    max_channels: Optional[int] = None,
) -> torch.Tensor:
    """Unit-norm style-space edit directions for text directions ``dt`` (thesis Eq. 3.2).

    ``(M dt) 1(|M dt| >= lambda_i)`` scaled by the channel std, normalised per attribute,
    through the fused ``relevance_directions``. ``lambda_i`` is ``threshold``, raised for
    attribute i to its ``max_channels``-th largest ``|M dt|`` when more channels than that
    pass (so each direction keeps at most ``max_channels`` channels, up to ties within a
    relative 1e-5, which absorbs the fused op's own rounding of ``M dt``). An
    attribute that no channel passes ``threshold`` for is retried with half of it, and so
    on (logged), so that no direction is silently zero.

    Args:
        relevance: :func:`relevance_matrix`'s ``{"M": (C, D), "std": (C,)}``.
        dt: (A, D) CLIP text directions.
        threshold: lambda of Eq. 3.2, a cosine in [0, 1].
        max_channels: keep at most this many channels per attribute; ``None``: no cap
            (the thesis's rule).

    Returns:
        (A, C) directions.
    """
    check_max_channels(max_channels)
    M, std = relevance["M"], relevance["std"]
    dt = dt.to(M.device, M.dtype)
    lam = torch.full((dt.shape[0],), float(threshold), dtype=torch.float64)
    if max_channels is not None and max_channels < M.shape[0]:
        # |M dt| (A, C) from the fused op itself, which also checks dt against M by name;
        # a channel of zero std cannot move, so it does not count towards the cap.
        r = ops.relevance_directions(M, dt, 0.0, normalize="none", channel_scale=(std != 0).to(M.dtype)).abs()
        kth = r.topk(max_channels, dim=1).values[:, -1].double().cpu() * (1 - 1e-5)
        lam = torch.maximum(lam, kth)

    def directions(rows: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(rows), M.shape[0], dtype=M.dtype, device=M.device)
        for value in torch.unique(lam[rows]).tolist():  # one fused call per distinct lambda
            same = (lam[rows] == value).nonzero().flatten()
            out[same.to(M.device)] = ops.relevance_directions(
                M, dt[rows[same].to(M.device)], value, normalize="l2", channel_scale=std)
        return out

    everything = torch.arange(dt.shape[0])
    ds = directions(everything)
    empty = (ds.abs().sum(dim=1) == 0).cpu()
    while bool(empty.any()) and float(lam[empty].max()) > 1e-6:
        log.info("no style channel passes the threshold %.4g for %d attribute(s); trying half of it",
                 float(lam[empty].max()), int(empty.sum()))
        lam[empty] /= 2
        rows = everything[empty]
        ds[rows.to(M.device)] = directions(rows)
        empty = (ds.abs().sum(dim=1) == 0).cpu()
    return ds


# ---------------------------------------------------------------------------------------
# 3. Counterfactual search


@dataclass
class ZoomConfig:
    """ZOOM's settings (thesis Eq. 3.4 and 3.10; Table 3.3 uses eta = 0.2, eps = 30).

    Args:
        alpha, beta, gamma: weights of L_target, L_struct = 1 - SSIM and L_attr (CLIP
            consistency of the target's own attribute).
        steps: optimisation steps per counterfactual.
        lr: eta of ``w <- clamp(w - eta grad, -eps, eps)``.
        eps: bound of every edit strength w_i.
        threshold: lambda of Eq. 3.2.
        max_channels: keep at most this many style channels per edit direction (the
            most relevant ones; :func:`global_directions`). ``None`` is the thesis's
            lambda-only rule. The default 64 is what passes the planted-bias and head-pose
            checks on the embedded world (docs/diagnosis.md, "Channels per direction").
        prefix, template: how attribute prompts are written (Eq. 3.1, :func:`attribute_prompt`).
        consistency_prompts: CLIP prompts of the target's own attribute for L_attr (e.g.
            ("a face that is smiling", "a face that is not smiling")); default: built from
            the target's ``label`` / ``zoo_info["label"]`` when it has one, else L_attr is off.
        consistency_temperature: softmax temperature of the CLIP logits in L_attr.
        rows_per_batch: image x attribute rows optimised together.
        multi: also search one multi-attribute counterfactual per image.
        checkpoint_every: steps between in-batch checkpoints (when a checkpoint is given).
        cuda_graph: capture the inner step in a CUDA graph on CUDA devices.
        flip_steps: steps at which flip resistance is reported (FR-k).
        seed: seeds the images (z) and the keypoint targets.
    """

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.5
    steps: int = 100
    lr: float = 0.2
    eps: float = 30.0
    threshold: float = 0.05
    max_channels: Optional[int] = 64
    prefix: str = "a photo of a face"
    template: Optional[str] = None
    consistency_prompts: Optional[Sequence[str]] = None
    consistency_temperature: float = 0.07
    rows_per_batch: int = 256
    multi: bool = True
    checkpoint_every: int = 25
    cuda_graph: bool = True
    flip_steps: Sequence[int] = (25, 100)
    seed: int = 0

    def __post_init__(self):
        for name in ("alpha", "beta", "gamma", "lr", "eps", "threshold", "consistency_temperature"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        for name in ("steps", "rows_per_batch", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        check_max_channels(self.max_channels)


class _Search:
    """One batch of counterfactual searches: rows of (style code, edit directions).

    ``s0`` (R, C) original styles, ``basis`` (R, K, C) the K directions each row may move
    along, ``w`` (R, K) their strengths; ``x_hat = G(s0 + w basis)``.
    """

    def __init__(self, G, adapter, ref, ssim_ref, clip, text, cfg: ZoomConfig, s0, basis, orig_logits):
        self.G, self.adapter, self.ref, self.ssim_ref, self.clip, self.text, self.cfg = G, adapter, ref, ssim_ref, clip, text, cfg
        self.s0, self.basis, self.orig_logits = s0, basis, orig_logits
        rows = s0.shape[0]
        self.w = torch.zeros(rows, basis.shape[1], device=s0.device)
        # The first step at which each row flipped (steps + 1: never), tracked without syncs.
        self.first_flip = torch.full((rows,), cfg.steps + 1, dtype=torch.long, device=s0.device)
        self.step_index = torch.zeros((), dtype=torch.long, device=s0.device)
        self.graph = None

    def images(self, w: torch.Tensor) -> torch.Tensor:
        styles = self.s0 + torch.einsum("rk,rkc->rc", w, self.basis)
        return self.G.synthesize(self.G.unflatten_styles(styles))

    def _loss_and_flip(self, w):
        x_hat = self.images(w)
        outputs = self.adapter.outputs(x_hat)
        loss = self.cfg.alpha * self.adapter.objective(outputs, self.ref)
        if self.cfg.beta:
            loss = loss + self.cfg.beta * (1 - self.ssim_ref.ssim(x_hat, size_average=False))
        if self.cfg.gamma and self.text is not None:
            logits = clip_image_features(self.clip, x_hat) @ self.text.T
            loss = loss + self.cfg.gamma * ops.clip_consistency(
                logits, self.orig_logits, self.cfg.consistency_temperature, reduction="none"
            )
        return loss, self.adapter.flipped(outputs.detach(), self.ref)

    def _step(self):
        w = self.w.detach().requires_grad_()
        loss, flipped = self._loss_and_flip(w)
        (grad,) = torch.autograd.grad(loss.sum(), w)
        self.first_flip.copy_(torch.where(flipped & (self.first_flip > self.step_index), self.step_index, self.first_flip))
        ops.clamp_gd_step(self.w, grad, self.cfg.lr, self.cfg.eps, out=self.w)
        self.step_index += 1

    def _capture(self):
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        saved = (self.w.clone(), self.first_flip.clone(), self.step_index.clone())
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm up the allocator and the autotuners outside the graph
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        for target, value in zip((self.w, self.first_flip, self.step_index), saved):
            target.copy_(value)

    def run(self, start: int, stop: int, use_graph: bool) -> None:
        with ops.value_checks(False):
            if use_graph and self.graph is None:
                self._capture()
            for _ in range(start, stop):
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self._step()

    def finish(self):
        """Final images, outputs, changes and flips at the current w."""
        with torch.no_grad(), ops.value_checks(False):
            x_hat = self.images(self.w)
            outputs = self.adapter.outputs(x_hat)
            flipped = self.adapter.flipped(outputs, self.ref)
            first = torch.where(flipped & (self.first_flip > self.cfg.steps), torch.full_like(self.first_flip, self.cfg.steps), self.first_flip)
            return x_hat, self.adapter.change(outputs, self.ref), flipped, first


def _consistency_prompts(target, cfg: ZoomConfig) -> Optional[List[str]]:
    if cfg.consistency_prompts is not None:
        return list(cfg.consistency_prompts)
    label = target_label(target)
    if label is None:
        return None
    try:  # the embedded world's own wording of its attributes, when the label is one of them
        from vmd_fast.zoo.recipes.clip import HELD_OUT_PHRASES

        present, absent = HELD_OUT_PHRASES[label]
        return [f"{cfg.prefix} {present}", f"{cfg.prefix} {absent}"]
    except (ImportError, KeyError):
        phrase = label.replace("_", " ")
        return [attribute_prompt(phrase, cfg.prefix), f"{cfg.prefix} without {phrase}"]


_SEARCH_OUTPUTS = ("images", "change", "flipped", "first_flip", "w")


class _Checkpoint:
    """Per-batch results and the in-batch search state, in one safetensors + JSON pair."""

    def __init__(self, directory: Optional[str], key: str):
        self.directory, self.key = directory, key
        if directory:
            os.makedirs(directory, exist_ok=True)

    def _paths(self):
        return os.path.join(self.directory, "zoom-checkpoint.json"), os.path.join(self.directory, "zoom-checkpoint.safetensors")

    def load(self):
        from safetensors.torch import load_file

        if not self.directory or not os.path.exists(self._paths()[0]):
            return None, {}
        with open(self._paths()[0], encoding="utf-8") as f:
            meta = json.load(f)
        if meta.get("key") != self.key:
            raise ValueError(
                f"the checkpoint in {self.directory!r} belongs to a different run (other target, "
                "models, attributes or settings); use another directory or delete it"
            )
        return meta, load_file(self._paths()[1])

    def save(self, meta: dict, tensors: Dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save_file

        if not self.directory:
            return
        json_path, tensor_path = self._paths()
        # Write to temporary names, then rename: an interruption never leaves half a file.
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tensor_path + ".tmp")
        with open(json_path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({**meta, "key": self.key}, f)
        os.replace(tensor_path + ".tmp", tensor_path)
        os.replace(json_path + ".tmp", json_path)


def diagnose(
    target,
    attributes: Sequence[str],
    n_images: int = 64,
    generator: Optional[nn.Module] = None,
    clip: Optional[nn.Module] = None,
    config: Optional[ZoomConfig] = None,
    relevance: Optional[Dict[str, torch.Tensor]] = None,
    relevance_config: Optional[RelevanceConfig] = None,
    cache_dir: Optional[str] = None,
    checkpoint: Optional[str] = None,
    device=None,
    progress: bool = True,
    tokenizer: Optional[Callable] = None,
    **overrides,
) -> DiagnosisResult:
    """Diagnose ``target`` along the attribute prompts ``attributes`` (thesis ch. 3).

    Args:
        target: the model (task from ``target.task`` or its output shape) or a
            :class:`~vmd_fast.diagnose.TargetAdapter`.
        attributes: attribute phrases, e.g. ``["eyeglasses", "a hat", "a beard"]``.
        n_images: images sampled from the generator (seeded by ``config.seed``).
        generator, clip: default: the zoo's ``"generator"`` and ``"clip"``.
        config: :class:`ZoomConfig`; keyword ``overrides`` replace its fields
            (``steps=25, alpha=2.0``).
        relevance: a precomputed ``relevance_matrix(...)``; default: computed (and cached
            in ``cache_dir``).
        checkpoint: a directory for the checkpoint; an interrupted run given the same
            directory resumes where it stopped and gives the same result (under
            ``torchrun``, each rank keeps its own ``rank-R-of-W`` subdirectory).
        device: where to run (default: the generator's device, or CUDA when available and
            the models are loaded here).

    Returns:
        :class:`~vmd_fast.diagnose.DiagnosisResult` (``method="zoom"``): per-image,
        per-attribute changes and flips, the counterfactuals, ``codes`` = the final w_i,
        the multi-attribute counterfactuals, and ``metrics`` with FR-k.

    When :mod:`torch.distributed` is initialised (``torchrun``), each rank searches one
    contiguous block of the batches of images (:func:`vmd_fast.distributed.shard`) with
    the latents and per-batch seeds a single process would use, and the per-image rows
    are gathered in image order: every rank returns the single-process result.
    """
    cfg = config or ZoomConfig()
    if overrides:
        cfg = ZoomConfig(**{**asdict(cfg), **overrides})
    attributes = list(attributes)
    if not attributes or not all(isinstance(a, str) and a.strip() for a in attributes):
        raise ValueError(f"attributes must be a non-empty list of prompts, got {attributes!r}")
    if len(set(attributes)) != len(attributes):
        raise ValueError(f"attributes must be distinct, got {attributes!r}")
    if not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if generator is None or clip is None:
        from vmd_fast import zoo

        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        generator = generator if generator is not None else zoo.load("generator", device=dev)
        clip = clip if clip is not None else zoo.load("clip", device=dev)
    device = torch.device(device) if device is not None else _module_device(generator)
    model = target.model if isinstance(target, TargetAdapter) else target
    for name, module in (("generator", generator), ("clip", clip), ("target", model)):
        if _module_device(module) != device:
            raise ValueError(f"{name} must be on {device}, got {_module_device(module)} (move it with .to(device))")

    if relevance is None:
        relevance = relevance_matrix(generator, clip, relevance_config, cache_dir=cache_dir, progress=progress)
    dt = text_directions(clip, attributes, cfg.prefix, cfg.template, tokenizer)
    ds = global_directions(relevance, dt, cfg.threshold, cfg.max_channels)  # (A, C)
    prompts = _consistency_prompts(target, cfg)
    text = clip_text_features(clip, prompts, tokenizer) * (1.0 / cfg.consistency_temperature) if prompts else None
    # The temperature is folded into the logits; clip_consistency then runs at 1.
    cfg_loop = ZoomConfig(**{**asdict(cfg), "consistency_temperature": 1.0})

    gen = torch.Generator().manual_seed(cfg.seed)
    z_all = torch.randn(n_images, generator.z_dim, generator=gen)
    n_attr = len(attributes)
    images_per_batch = max(1, cfg.rows_per_batch // n_attr)
    key = hashlib.sha256(json.dumps({
        "target": _model_checksum(model), "G": _model_checksum(generator), "clip": _model_checksum(clip),
        "attributes": attributes, "n_images": n_images, "config": asdict(cfg),
    }, sort_keys=True, default=str).encode()).hexdigest()
    distributed.check_same(key, "models, attributes or settings")
    if checkpoint and distributed.is_distributed():
        checkpoint = os.path.join(checkpoint, f"rank-{distributed.get_rank()}-of-{distributed.get_world_size()}")
    store = _Checkpoint(checkpoint, key)
    meta, saved = store.load()
    done = {k: v for k, v in saved.items() if not k.startswith(("search.", "partial."))}
    first_batch = meta.get("batches_done", 0) if meta else 0
    use_graph = cfg.cuda_graph and device.type == "cuda"
    batches = list(range(0, n_images, images_per_batch))
    mine = list(distributed.shard(len(batches)))  # this rank's global batch indices
    adapter = target if isinstance(target, TargetAdapter) else adapter_for(target)

    bar = tqdm(total=len(mine) * cfg.steps * (2 if cfg.multi else 1), desc="ZOOM", unit="step",
               disable=not (progress and distributed.is_main()), initial=first_batch * cfg.steps * (2 if cfg.multi else 1))
    for j in range(first_batch, len(mine)):
        b = mine[j]  # the global batch index seeds the batch, as in a single process
        start = batches[b]
        z = z_all[start : start + images_per_batch].to(device)
        n = z.shape[0]
        with torch.no_grad():
            s0 = generator.flatten_styles(generator.mapping_to_styles(z))  # (n, C)
            x0 = generator.synthesize(generator.unflatten_styles(s0))
            ref = adapter.reference(adapter.outputs(x0), generator=torch.Generator().manual_seed(cfg.seed + 1 + b))
            orig_logits = clip_image_features(clip, x0) @ text.T if text is not None else None
        ssim_ref = ops.SSIMReference(x0)
        modes = [("single", repeat_reference(ref, n_attr), s0.repeat_interleave(n_attr, 0),
                  ds.repeat(n, 1)[:, None, :], orig_logits.repeat_interleave(n_attr, 0) if orig_logits is not None else None)]
        if cfg.multi:
            modes.append(("multi", ref, s0, ds[None].expand(n, n_attr, ds.shape[1]), orig_logits))
        outputs: Dict[str, Dict[str, torch.Tensor]] = {}
        resume = meta if meta and meta.get("batch") == j else None
        for mode, mode_ref, mode_s0, basis, logits in modes:
            if resume and mode in resume.get("finished_modes", []):
                outputs[mode] = {k: saved[f"partial.{mode}.{k}"].to(device) for k in _SEARCH_OUTPUTS}
                continue
            search = _Search(generator, adapter, mode_ref, ssim_ref, clip, text, cfg_loop, mode_s0, basis.contiguous(), logits)
            step0 = 0
            if resume and resume.get("mode") == mode:
                search.w.copy_(saved["search.w"].to(device))
                search.first_flip.copy_(saved["search.first_flip"].to(device))
                step0 = int(resume["step"])
                search.step_index.fill_(step0)
            for chunk in range(step0, cfg.steps, cfg.checkpoint_every):
                stop = min(cfg.steps, chunk + cfg.checkpoint_every)
                search.run(chunk, stop, use_graph)
                bar.update(stop - chunk)
                if stop < cfg.steps:
                    partial = {f"partial.{m}.{k}": v for m, out in outputs.items() for k, v in out.items()}
                    store.save({"batches_done": j, "batch": j, "mode": mode, "step": stop, "finished_modes": list(outputs)},
                               {**done, **partial, "search.w": search.w, "search.first_flip": search.first_flip})
            x_hat, change, flipped, first = search.finish()
            outputs[mode] = dict(zip(_SEARCH_OUTPUTS, (x_hat, change, flipped.to(torch.uint8), first, search.w.detach().clone())))
        batch_tensors = {"originals": x0, "single.images": outputs["single"]["images"].reshape(n, n_attr, *x0.shape[1:]),
                         "single.change": outputs["single"]["change"].reshape(n, n_attr),
                         "single.flipped": outputs["single"]["flipped"].reshape(n, n_attr),
                         "single.first_flip": outputs["single"]["first_flip"].reshape(n, n_attr),
                         "single.w": outputs["single"]["w"].reshape(n, n_attr)}
        if cfg.multi:
            batch_tensors.update({"multi.images": outputs["multi"]["images"], "multi.change": outputs["multi"]["change"],
                                  "multi.flipped": outputs["multi"]["flipped"],
                                  "multi.first_flip": outputs["multi"]["first_flip"], "multi.w": outputs["multi"]["w"]})
        for k, v in batch_tensors.items():
            v = v.detach().cpu()
            v = v.float() if v.is_floating_point() else v  # float32 results, also from a bf16 autocast run
            done[k] = torch.cat([done[k], v]) if k in done else v
        store.save({"batches_done": j + 1}, done)
    bar.close()
    done = distributed.gather_rows(done)

    flip_metrics = {}
    for k in cfg.flip_steps:
        if k <= cfg.steps:
            # Resisted k steps: not flipped at any of w_0 .. w_k.
            flip_metrics[f"single_FR-{k}"] = float((done["single.first_flip"] > k).float().mean())
            if cfg.multi:
                flip_metrics[f"multi_FR-{k}"] = float((done["multi.first_flip"] > k).float().mean())
    multi = None
    if cfg.multi:
        multi = {"counterfactuals": done["multi.images"], "codes": done["multi.w"], "flipped": done["multi.flipped"].bool(),
                 "changes": done["multi.change"]}
    return DiagnosisResult(
        method="zoom", target=target_name(target), task=adapter.task, attributes=attributes,
        changes=done["single.change"], flipped=done["single.flipped"].bool(), originals=done["originals"],
        counterfactuals=done["single.images"], codes=done["single.w"], multi=multi,
        config={**asdict(cfg), "n_images": n_images, "consistency_prompts": prompts, "device": str(device),
                "cuda_graph_used": use_graph},
        metrics=flip_metrics,
    )
