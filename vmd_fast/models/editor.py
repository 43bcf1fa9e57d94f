r"""An attribute-conditional image editor with the AttGAN structure, for SIA.

He et al., "AttGAN: Facial Attribute Editing by Only Changing What You Want" (2019):
an encoder :math:`\text{Enc}` maps an image to a latent feature pyramid, a decoder
:math:`\text{Dec}` maps it back conditioned on an attribute vector :math:`a \in [0,1]^A`
tiled into feature maps, and the edit is :math:`G(x, a) = \text{Dec}(\text{Enc}(x), a)`.
SIA (thesis ch. 2, Algorithm 1) optimises :math:`x` and :math:`a` jointly through
:math:`G`, so both paths must carry gradients.

Layout, as in AttGAN's reference code (``shortcut_layers``, ``inject_layers``):

- :class:`EncoderBlock`: 4x4 stride-2 convolution, batch norm, leaky ReLU; the encoder keeps
  every block's output (the skip features), from :math:`(N, c_1, H/2, W/2)` down to the
  bottleneck :math:`(N, c_L, H/2^L, W/2^L)`;
- :class:`DecoderBlock`: 4x4 stride-2 transposed convolution, batch norm, ReLU;
- the decoder's first block reads the bottleneck concatenated with the tiled attributes;
  the next ``shortcut_layers`` blocks also read the encoder feature of their resolution
  (skip connection), and the next ``inject_layers`` blocks the tiled attributes again;
- the last block outputs RGB through a sigmoid, so :math:`G(x, a) \in [0, 1]`.

The package's editor is trained by supervision on the renderer's counterfactual pairs,
not adversarially (see :mod:`vmd_fast.zoo.recipes.editor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn


@dataclass
class EditorConfig:
    """Architecture of :class:`AttributeEditor`.

    Args:
        attributes: names of the attributes the decoder is conditioned on (the columns of
            ``a``), e.g. ``vmd_fast.domains.faces.EDITOR_ATTRIBUTES``.
        channels: encoder channels per stride-2 block (the decoder mirrors them).
        shortcut_layers: number of decoder blocks that also read the encoder feature of
            their resolution (AttGAN: 1).
        inject_layers: number of decoder blocks after the first that read the tiled
            attributes again (AttGAN: 0 or 1).
        resolution: input and output resolution.
    """

    attributes: Sequence[str] = ()
    channels: Sequence[int] = (32, 64, 128, 256)
    shortcut_layers: int = 2
    inject_layers: int = 2
    resolution: int = 64

    def __post_init__(self):
        self.attributes = tuple(self.attributes)
        self.channels = tuple(int(c) for c in self.channels)
        if not self.attributes:
            raise ValueError("the editor needs at least one attribute name")
        if self.resolution % 2 ** len(self.channels):
            raise ValueError(
                f"resolution {self.resolution} is not divisible by 2^{len(self.channels)}"
            )
        if not 0 <= self.shortcut_layers < len(self.channels):
            raise ValueError(f"shortcut_layers must be in [0, {len(self.channels) - 1}]")
        if not 0 <= self.inject_layers < len(self.channels):
            raise ValueError(f"inject_layers must be in [0, {len(self.channels) - 1}]")


class EncoderBlock(nn.Sequential):
    """``(N, C_in, H, W) -> (N, C_out, H/2, W/2)``: conv 4x4 stride 2, BN, leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.LeakyReLU(0.2),
        )


class DecoderBlock(nn.Sequential):
    """``(N, C_in, H, W) -> (N, C_out, 2H, 2W)``: transposed conv 4x4 stride 2, BN, ReLU."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )


def tile_attributes(a: torch.Tensor, size: int) -> torch.Tensor:
    """``(N, A) -> (N, A, size, size)``: the attribute vector as constant feature maps."""
    return a[:, :, None, None].expand(-1, -1, size, size)


class AttributeEditor(nn.Module):
    r"""AttGAN-style editor :math:`G(x, a) = \text{Dec}(\text{Enc}(x), a)`.

    Args:
        config: the architecture (:class:`EditorConfig`).
        decoder_channels: output channels of every decoder block but the last (RGB);
            default: the encoder's channels in reverse, as in AttGAN's reference code.

    Example:
        >>> E = AttributeEditor(EditorConfig(attributes=("smiling", "hat"), channels=(8, 16),
        ...                                   shortcut_layers=1, inject_layers=1))
        >>> x = torch.rand(2, 3, 64, 64)
        >>> h = E.encode(x)
        >>> [tuple(f.shape) for f in h]
        [(2, 8, 32, 32), (2, 16, 16, 16)]
        >>> E.decode(h, torch.tensor([[1.0, 0.0], [0.0, 1.0]])).shape
        torch.Size([2, 3, 64, 64])
    """

    def __init__(self, config: EditorConfig, decoder_channels: Optional[Sequence[int]] = None):
        super().__init__()
        self.config = config
        self.attributes = list(config.attributes)
        self.resolution = config.resolution
        channels = config.channels
        num_blocks = len(channels)
        num_attributes = len(self.attributes)

        encoder, in_channels = [], 3
        for out_channels in channels:
            encoder.append(EncoderBlock(in_channels, out_channels))
            in_channels = out_channels
        self.encoder = nn.ModuleList(encoder)

        # Decoder block i upsamples to the resolution of encoder block L-2-i (the last one
        # to the image). Its input: the previous output (or the bottleneck), plus the
        # attributes (first block, and the `inject_layers` after it), plus the encoder
        # feature of the same resolution (the first `shortcut_layers` blocks after it).
        if decoder_channels is None:
            decoder_channels = list(reversed(channels[:-1]))
        if len(decoder_channels) != num_blocks - 1:
            raise ValueError(
                f"decoder_channels needs {num_blocks - 1} entries, got {list(decoder_channels)}"
            )
        decoder_out = list(decoder_channels) + [3]
        decoder, in_channels = [], channels[-1]
        for i, out_channels in enumerate(decoder_out):
            width = in_channels
            if i <= config.inject_layers:
                width += num_attributes
            if 1 <= i <= config.shortcut_layers:
                width += channels[num_blocks - 1 - i]
            if i == num_blocks - 1:
                decoder.append(nn.ConvTranspose2d(width, out_channels, 4, stride=2, padding=1))
            else:
                decoder.append(DecoderBlock(width, out_channels))
            in_channels = out_channels
        self.decoder = nn.ModuleList(decoder)

    def encode(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Images to the encoder's feature pyramid.

        Args:
            x: images in [0, 1], shape :math:`(N, 3, H, W)`.

        Returns:
            one tensor per encoder block, the ``i``-th of shape
            :math:`(N, c_i, H/2^{i+1}, W/2^{i+1})`; the last is the bottleneck.
        """
        assert x.ndim == 4 and x.shape[1:] == (3, self.resolution, self.resolution), x.shape
        h = x * 2 - 1
        features = []
        for block in self.encoder:
            h = block(h)
            features.append(h)
        return features

    def decode(self, h: Sequence[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        """Feature pyramid and attributes to an image.

        Args:
            h: as returned by :meth:`encode`.
            a: attributes in [0, 1], shape :math:`(N, A)`, columns :attr:`attributes`.

        Returns:
            images in [0, 1], shape :math:`(N, 3, H, W)`.
        """
        n = h[-1].shape[0]
        assert len(h) == len(self.encoder), (len(h), len(self.encoder))
        assert a.shape == (n, len(self.attributes)), (a.shape, n, len(self.attributes))
        a = a.to(h[-1].dtype)
        x = h[-1]
        last = len(self.decoder) - 1
        for i, block in enumerate(self.decoder):
            inputs = [x]
            if i <= self.config.inject_layers:
                inputs.append(tile_attributes(a, x.shape[-1]))
            if 1 <= i <= self.config.shortcut_layers:
                inputs.append(h[last - i])
            x = block(torch.cat(inputs, dim=1))
        return torch.sigmoid(x)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """The edit :math:`G(x, a)`: ``(N, 3, H, W), (N, A) -> (N, 3, H, W)``."""
        return self.decode(self.encode(x), a)
