r"""A small style-based generator with the StyleGAN2 structure and an explicit StyleSpace.

The network follows Karras et al., "Analyzing and Improving the Image Quality of StyleGAN"
(StyleGAN2, config F, skip generator) at toy scale, and is laid out like
``training/networks.py`` of NVlabs' stylegan2-ada-pytorch, one class per block:

- :class:`MappingNetwork`: an MLP :math:`z \mapsto w`;
- every synthesis layer owns an affine map :math:`A_\ell: w \mapsto s_\ell` (one style per
  input channel). The concatenation of all :math:`s_\ell`, toRGB layers included, is the
  StyleSpace of Wu et al., "StyleSpace Analysis" (2021), which ZOOM edits (thesis 3.3.2);
- :class:`SynthesisLayer`: a modulated and demodulated 3x3 convolution (StyleGAN2 Eq. 1-3),
  optionally preceded by 2x upsampling, then bias and leaky ReLU;
- :class:`ToRGBLayer`: a modulated 1x1 convolution without demodulation;
- :class:`SynthesisBlock`: one resolution (conv0 with upsampling, conv1, toRGB) of the skip
  architecture, in which the RGB outputs of all resolutions are upsampled and summed;
- :class:`SynthesisNetwork`: a learned 4x4 constant up to ``resolution`` (64).

Differences from StyleGAN2, and why:

- no per-pixel noise inputs, so that an image is a deterministic function of its styles
  (ZOOM compares edits of the same styles and must not see noise as an attribute);
- the convolutions that upsample read a nearest-neighbour 2x upsampled input (the 3x3
  kernel then learns the interpolation) instead of the transposed convolution with the
  [1,3,3,1] FIR filter (``upfirdn2d``); on a CPU budget this fits sharp edges faster. The
  RGB skip path upsamples bilinearly;
- :math:`z` is not normalised to the unit sphere but read through fixed features
  (:class:`LatentFeatures`: :math:`\Phi(z)` and one-hot codes of declared discrete
  coordinates): the package's generator regresses the procedural renderer (see
  :mod:`vmd_fast.zoo.recipes.generator`), where every coordinate of :math:`z` carries one of
  the renderer's random choices;
- the modulated convolution uses the non-fused form (scale the input by the styles, one
  shared convolution, scale the output by the demodulation coefficients), which is the
  same function as the grouped-convolution form and faster on a CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GeneratorConfig:
    """Architecture of :class:`Generator`.

    Args:
        z_dim: dimension of the latent code :math:`z`.
        w_dim: dimension of the intermediate latent :math:`w` (StyleGAN2: 512).
        mapping_layers: number of fully connected layers of the mapping MLP (StyleGAN2: 8).
        mapping_lr_multiplier: equalised-learning-rate multiplier of the mapping MLP
            (StyleGAN2: 0.01, which slows the mapping relative to the synthesis network).
        resolution: output resolution, a power of two >= 8.
        channels: feature channels per resolution from 4x4 upwards
            (``len(channels) == log2(resolution) - 1``).
        img_channels: channels of the output image.
        latent_levels: per coordinate of :math:`z`, 0 for a continuous one or the number of
            levels ``K >= 2`` of a discrete one (see :class:`LatentFeatures`); empty means
            every coordinate is continuous.
    """

    z_dim: int = 64
    w_dim: int = 256
    mapping_layers: int = 4
    mapping_lr_multiplier: float = 0.01
    resolution: int = 64
    channels: Sequence[int] = (256, 256, 128, 64, 32)
    img_channels: int = 3
    latent_levels: Sequence[int] = ()

    def __post_init__(self):
        log2 = int(math.log2(self.resolution))
        if self.resolution != 2**log2 or log2 < 3:
            raise ValueError(f"resolution must be a power of two >= 8, got {self.resolution}")
        if len(self.channels) != log2 - 1:
            raise ValueError(
                f"channels needs {log2 - 1} entries (4x4 to {self.resolution}x{self.resolution}), "
                f"got {len(self.channels)}"
            )
        self.channels = tuple(int(c) for c in self.channels)
        self.latent_levels = tuple(int(k) for k in self.latent_levels)
        if self.latent_levels and len(self.latent_levels) != self.z_dim:
            raise ValueError(
                f"latent_levels needs one entry per z coordinate ({self.z_dim}), "
                f"got {len(self.latent_levels)}"
            )
        if any(k == 1 or k < 0 for k in self.latent_levels):
            raise ValueError(f"latent_levels must be 0 (continuous) or >= 2, got {self.latent_levels}")


class FullyConnectedLayer(nn.Module):
    """Linear layer with equalised learning rate (StyleGAN, Karras et al. 2018, 4.1).

    Weights are stored as :math:`\\mathcal N(0, 1/\\text{lr\\_mul}^2)` and rescaled at run time by
    :math:`\\text{lr\\_mul}/\\sqrt{\\text{in}}`, so Adam's step size is the same for every layer.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: bool = False,
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.bias_gain)
        if self.activation:
            x = F.leaky_relu(x, 0.2) * math.sqrt(2)
        return x


def latent_to_uniform(z: torch.Tensor) -> torch.Tensor:
    r"""The standard normal CDF :math:`\Phi` per coordinate, kept below 1: ``(N, D) -> (N, D)``.

    Maps :math:`z \sim \mathcal N(0, I)` onto :math:`U[0, 1)^D` (float32 rounds
    :math:`\Phi(z)` to 1 for :math:`z > 5.4`; those values are moved just below 1).

    Example:
        >>> latent_to_uniform(torch.tensor([[0.0, -40.0, 40.0]]))
        tensor([[0.5000, 0.0000, 1.0000]])
        >>> bool(latent_to_uniform(torch.tensor([[40.0]])) < 1)
        True
    """
    return torch.special.ndtr(z).clamp(max=1 - 2**-24)


class LatentFeatures(nn.Module):
    r"""Fixed, parameter-free input features of the mapping MLP: ``(N, z_dim) -> (N, F)``.

    Every coordinate becomes :math:`2\Phi(z_i) - 1 \in (-1, 1)`; a coordinate with
    :math:`K \ge 2` levels also contributes the one-hot code (as :math:`\pm 1`) of its level
    :math:`\lfloor K\,\Phi(z_i) \rfloor`, so ``F = z_dim + sum(K)``. When :math:`z` drives
    a procedural renderer whose binary and categorical choices are such levels, the MLP
    reads each choice as one clean input instead of having to learn a sharp threshold on
    :math:`z`, which a regression objective learns slowly.

    Example:
        >>> features = LatentFeatures([0, 2])
        >>> features(torch.tensor([[0.0, -1.0]]))
        tensor([[ 0.0000, -0.6827,  1.0000, -1.0000]])
    """

    def __init__(self, levels: Sequence[int]):
        super().__init__()
        self.discrete = [(i, k) for i, k in enumerate(levels) if k >= 2]
        self.out_features = len(levels) + sum(k for _, k in self.discrete)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        u = latent_to_uniform(z)
        features = [u * 2 - 1]
        for i, k in self.discrete:
            level = (u[:, i] * k).long().clamp(max=k - 1)
            features.append(F.one_hot(level, k).to(z.dtype) * 2 - 1)
        return torch.cat(features, dim=1)


class MappingNetwork(nn.Module):
    """The mapping MLP :math:`z \\mapsto w`: ``(N, z_dim) -> (N, w_dim)``.

    Its input is :class:`LatentFeatures` of :math:`z` (no learned parameters there).
    """

    def __init__(self, latent_levels: Sequence[int], w_dim: int, num_layers: int,
                 lr_multiplier: float):
        super().__init__()
        self.features = LatentFeatures(latent_levels)
        dims = [self.features.out_features] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(dims[i], dims[i + 1], activation=True, lr_multiplier=lr_multiplier)
            for i in range(num_layers)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.features(z)
        for layer in self.layers:
            x = layer(x)
        return x


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    demodulate: bool = True,
    up: bool = False,
) -> torch.Tensor:
    """Modulated (and demodulated) convolution, StyleGAN2 Eq. 1-3, in its non-fused form.

    :math:`w'_{ijk} = s_i w_{ijk}`, :math:`w''_{ijk} = w'_{ijk} / \\sqrt{\\sum_{i,k} w'^2_{ijk}
    + \\epsilon}`; computed as ``conv(x * s) * d`` with the per-sample demodulation
    coefficients ``d``, which equals the grouped convolution with per-sample weights.

    Args:
        x: input features, shape :math:`(N, C_{in}, H, W)`.
        weight: shared kernel, shape :math:`(C_{out}, C_{in}, k, k)`, k odd.
        styles: per-sample styles, shape :math:`(N, C_{in})`.
        demodulate: divide by the output channel's norm (False for toRGB).
        up: upsample ``x`` by 2 (nearest neighbour) before the convolution.

    Returns:
        shape :math:`(N, C_{out}, H', W')` with ``H' = 2H`` if ``up`` else ``H``.
    """
    n, c_in = x.shape[:2]
    assert styles.shape == (n, c_in), (styles.shape, x.shape)
    assert weight.shape[1] == c_in, (weight.shape, x.shape)
    x = x * styles[:, :, None, None]
    if up:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
    x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
    if demodulate:
        # (N, C_out): sum over C_in and the kernel of (s_i w_ijk)^2.
        dcoefs = (weight.square().sum(dim=(2, 3))[None] * styles.square()[:, None, :]).sum(dim=2)
        x = x * (dcoefs + 1e-8).rsqrt()[:, :, None, None]
    return x


class SynthesisLayer(nn.Module):
    """Affine style, modulated 3x3 convolution (optionally 2x up), bias, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, up: bool = False):
        super().__init__()
        self.up = up
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    @property
    def style_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, style, demodulate=True, up=self.up)
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)


class ToRGBLayer(nn.Module):
    """Affine style and modulated 1x1 convolution to RGB, without demodulation."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int):
        super().__init__()
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(img_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(img_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    @property
    def style_dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = modulated_conv2d(x, self.weight, style * self.weight_gain, demodulate=False)
        return x + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator: ``(conv0 with 2x up,) conv1, toRGB``.

    The 4x4 block starts from a learned constant and has no conv0. ``forward`` takes the
    block's styles in the order of :attr:`layers` and returns the features and the running
    RGB image (the previous image upsampled plus this block's toRGB output).
    """

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int,
                 img_channels: int):
        super().__init__()
        self.resolution = resolution
        layers = {}
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            layers["conv0"] = SynthesisLayer(in_channels, out_channels, w_dim, up=True)
        layers["conv1"] = SynthesisLayer(out_channels, out_channels, w_dim)
        layers["torgb"] = ToRGBLayer(out_channels, img_channels, w_dim)
        self.layers = nn.ModuleDict(layers)

    def forward(self, x, img, styles: Sequence[torch.Tensor]):
        assert len(styles) == len(self.layers)
        if "conv0" in self.layers:
            x = self.layers["conv0"](x, styles[0])
        else:
            x = self.const[None].expand(styles[0].shape[0], -1, -1, -1)
        x = self.layers["conv1"](x, styles[-2])
        assert x.shape[-1] == self.resolution, (x.shape, self.resolution)
        rgb = self.layers["torgb"](x, styles[-1])
        if img is not None:
            img = F.interpolate(img, scale_factor=2, mode="bilinear", align_corners=False)
            rgb = rgb + img
        return x, rgb


class SynthesisNetwork(nn.Module):
    """Styles -> image: a learned 4x4 constant up to ``resolution`` (skip architecture).

    Its output is not clamped (the training loss needs the raw values); see
    :meth:`Generator.synthesize` for the clamped image.
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.resolution = config.resolution
        blocks = []
        in_channels = 0
        for i, out_channels in enumerate(config.channels):
            res = 4 * 2**i
            blocks.append(SynthesisBlock(in_channels, out_channels, config.w_dim, res,
                                         config.img_channels))
            in_channels = out_channels
        self.blocks = nn.ModuleList(blocks)

    def style_layers(self) -> List[tuple]:
        """``(name, layer)`` for every styled layer, in StyleSpace order (e.g. ``"b8.conv0"``)."""
        return [
            (f"b{block.resolution}.{key}", layer)
            for block in self.blocks
            for key, layer in block.layers.items()
        ]

    def pyramid(self, styles: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        """The running RGB image after every block: ``(N, 3, 4, 4)`` up to ``(N, 3, R, R)``.

        The skip architecture sums upsampled RGB outputs, so the image after block ``b``
        is the generator's own coarse version of the final image; a loss on every level
        (multi-scale supervision) teaches the coarse blocks the layout first.
        """
        x = img = None
        images = []
        start = 0
        for block in self.blocks:
            count = len(block.layers)
            x, img = block(x, img, styles[start:start + count])
            images.append(img)
            start += count
        assert start == len(styles), (start, len(styles))
        return images

    def forward(self, styles: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.pyramid(styles)[-1]


class Generator(nn.Module):
    r"""Style-based generator: :math:`z \to w \to s = (A_\ell(w))_\ell \to x`.

    ZOOM edits the StyleSpace :math:`s` directly: ``styles = G.mapping_to_styles(z)``,
    change some channels, ``x = G.synthesize(styles)``.

    Args:
        config: the architecture (:class:`GeneratorConfig`).

    Example:
        >>> G = Generator(GeneratorConfig(z_dim=8, w_dim=16, channels=(16, 16, 8, 8, 4)))
        >>> z = torch.randn(2, G.z_dim, generator=torch.Generator().manual_seed(0))
        >>> styles = G.mapping_to_styles(z)
        >>> [s.shape[1] for s in styles] == G.style_space_dims
        True
        >>> G.flatten_styles(styles).shape
        torch.Size([2, 152])
        >>> G.synthesize(styles).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, config: GeneratorConfig):
        super().__init__()
        self.config = config
        self.z_dim = config.z_dim
        self.w_dim = config.w_dim
        self.img_resolution = config.resolution
        self.img_channels = config.img_channels
        levels = config.latent_levels or (0,) * config.z_dim
        self.mapping = MappingNetwork(levels, config.w_dim, config.mapping_layers,
                                      config.mapping_lr_multiplier)
        self.synthesis = SynthesisNetwork(config)
        named = self.synthesis.style_layers()
        self.style_names: List[str] = [name for name, _ in named]
        self.style_space_dims: List[int] = [layer.style_dim for _, layer in named]

    @property
    def num_style_channels(self) -> int:
        """Total StyleSpace dimension :math:`\\sum_\\ell C_\\ell`."""
        return sum(self.style_space_dims)

    def mapping_to_styles(self, z: torch.Tensor) -> List[torch.Tensor]:
        """Latent codes to the StyleSpace.

        Args:
            z: shape :math:`(N, z\\_dim)`.

        Returns:
            one tensor per styled layer (order :attr:`style_names`), the ``l``-th of shape
            :math:`(N, C_l)` with ``C_l = style_space_dims[l]``.
        """
        assert z.ndim == 2 and z.shape[1] == self.z_dim, (z.shape, self.z_dim)
        w = self.mapping(z)  # (N, w_dim)
        return [layer.affine(w) for _, layer in self.synthesis.style_layers()]

    def synthesize(self, styles: Sequence[torch.Tensor]) -> torch.Tensor:
        """StyleSpace to images in [0, 1].

        Args:
            styles: as returned by :meth:`mapping_to_styles` (or :meth:`unflatten_styles`).

        Returns:
            shape :math:`(N, 3, 64, 64)`, clamped to [0, 1] (differentiable inside).
        """
        assert len(styles) == len(self.style_space_dims), (len(styles), len(self.style_space_dims))
        for s, dim in zip(styles, self.style_space_dims):
            assert s.ndim == 2 and s.shape[1] == dim, (s.shape, dim)
        return self.synthesis(styles).clamp(0, 1)

    def flatten_styles(self, styles: Sequence[torch.Tensor]) -> torch.Tensor:
        """List of per-layer styles -> one tensor of shape :math:`(N, \\sum_l C_l)`."""
        return torch.cat(list(styles), dim=1)

    def unflatten_styles(self, flat: torch.Tensor) -> List[torch.Tensor]:
        """Inverse of :meth:`flatten_styles`: :math:`(N, \\sum_l C_l)` -> list of :math:`(N, C_l)`."""
        assert flat.ndim == 2 and flat.shape[1] == self.num_style_channels, flat.shape
        return list(torch.split(flat, self.style_space_dims, dim=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``synthesize(mapping_to_styles(z))``: :math:`(N, z\\_dim) \\to (N, 3, 64, 64)`."""
        return self.synthesize(self.mapping_to_styles(z))
