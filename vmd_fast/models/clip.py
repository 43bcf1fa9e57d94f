r"""A small open_clip CLIP for 64x64 images, and its standard tokenizer.

:func:`build_clip` returns a plain :class:`open_clip.model.CLIP` (CLIP's modified ResNet as the
vision tower and a causal text transformer, Radford et al. 2021) sized for the package's
64x64 synthetic faces,
so every open_clip API (``encode_image``, ``encode_text``, ``logit_scale``, ``get_logits``)
and every code path written for real open_clip checkpoints works on it unchanged.

**Text.** :func:`tokenizer` is open_clip's standard byte-pair :class:`SimpleTokenizer`
(vocabulary 49408, the BPE merges shipped inside open_clip, no download) with the standard
context length 77, so the model's token embedding is the full ``(49408, text_width)``
table. That table dominates the weights; ``text_width`` is kept small for that reason.

**Vision tower.** open_clip's ``ModifiedResNet`` (three-convolution stem, anti-aliased
bottleneck blocks, attention pooling) with narrow stages. A ViT trained from scratch on the
renders collapsed to the uniform solution of the contrastive loss (all embeddings alike);
the ResNet's batch normalisation keeps the image embeddings apart from the first step.

**Images.** The package's CLIP is trained on pixels in [0, 1] without normalisation: its
``visual.preprocess_cfg`` says ``mean = (0, 0, 0)``, ``std = (1, 1, 1)``, ``size = 64``, and
``encode_image`` takes :math:`(N, 3, 64, 64)` images in [0, 1] as they come from the
renderer or the generator. :func:`normalize_images` applies any model's own
``preprocess_cfg`` (resize and normalise, differentiably), so code that must also work with
real open_clip checkpoints calls ``model.encode_image(normalize_images(x, model))``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, set_model_preprocess_cfg
from open_clip.tokenizer import DEFAULT_CONTEXT_LENGTH, SimpleTokenizer
from open_clip.transform import PreprocessCfg

IMAGE_MEAN = (0.0, 0.0, 0.0)
IMAGE_STD = (1.0, 1.0, 1.0)


@dataclass
class CLIPConfig:
    """Architecture of the package's CLIP (fields map onto open_clip's configs).

    Args:
        embed_dim: dimension of the joint image-text embedding.
        image_size: input resolution of the vision tower.
        vision_layers: bottleneck blocks in each of the four stages of the ``ModifiedResNet``.
        vision_width: channels of its stem; stage ``i`` has ``width * 2**i`` planes (x4 out).
        vision_head_width: channels per head of its attention pooling.
        text_width, text_layers, text_heads: the text transformer (``CLIPTextCfg``).
        context_length: tokens per caption (open_clip's standard 77).
    """

    embed_dim: int = 128
    image_size: int = 64
    vision_layers: Sequence[int] = (1, 1, 1, 1)
    vision_width: int = 16
    vision_head_width: int = 64
    text_width: int = 96
    text_layers: int = 3
    text_heads: int = 3
    context_length: int = DEFAULT_CONTEXT_LENGTH


def build_clip(config: CLIPConfig) -> CLIP:
    """An untrained :class:`open_clip.model.CLIP` of the given size, expecting [0, 1] pixels.

    Example:
        >>> model = build_clip(CLIPConfig())
        >>> image = model.encode_image(torch.rand(2, 3, 64, 64))
        >>> text = model.encode_text(tokenizer()(["a face with eyeglasses", "a face"]))
        >>> image.shape, text.shape
        (torch.Size([2, 128]), torch.Size([2, 128]))
    """
    vision = CLIPVisionCfg(
        layers=tuple(config.vision_layers),
        width=config.vision_width,
        head_width=config.vision_head_width,
        image_size=config.image_size,
    )
    text = CLIPTextCfg(
        context_length=config.context_length,
        width=config.text_width,
        heads=config.text_heads,
        layers=config.text_layers,
    )
    model = CLIP(config.embed_dim, vision, text)
    preprocess = PreprocessCfg(size=config.image_size, mean=IMAGE_MEAN, std=IMAGE_STD)
    set_model_preprocess_cfg(model, asdict(preprocess))
    return model


def tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> SimpleTokenizer:
    """open_clip's standard BPE tokenizer: ``tok(list_of_str) -> (N, context_length)`` int64."""
    return SimpleTokenizer(context_length=context_length)


def normalize_images(x: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Resize and normalise images in [0, 1] as ``model``'s vision tower expects.

    Uses ``model.visual.preprocess_cfg`` (set by open_clip for real checkpoints and by
    :func:`build_clip` here); bilinear resizing keeps the function differentiable.

    Args:
        x: images in [0, 1], shape :math:`(N, 3, H, W)`.
        model: an open_clip model.

    Returns:
        shape :math:`(N, 3, S, S)` with ``S`` the model's input size.
    """
    cfg = model.visual.preprocess_cfg
    size = cfg["size"]
    size = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(cfg["mean"])[None, :, None, None]
    std = x.new_tensor(cfg["std"])[None, :, None, None]
    return (x - mean) / std
