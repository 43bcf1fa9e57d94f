r"""AttGAN checkpoints of the common PyTorch implementation (elvisyjlin/AttGAN-PyTorch) as
an :class:`~vmd_fast.models.editor.AttributeEditor` for SIA.

That implementation saves ``{"G": generator.state_dict(), "D": ..., "optim_G": ...}``
(``saveG``: only ``"G"``) with keys ``enc_layers.{i}.layers.0.weight`` (4x4 stride-2
convolution), ``enc_layers.{i}.layers.1.*`` (batch norm), ``dec_layers.{i}.layers.0.weight``
(4x4 stride-2 transposed convolution), ``dec_layers.{i}.layers.1.*`` (batch norm) and the
last ``dec_layers.{L-1}.layers.0.weight`` / ``.bias`` (to RGB, tanh).

What maps (AttGAN -> :class:`AttGANEditor`, a subclass of ``AttributeEditor``):

- ``enc_layers.{i}.layers.{0,1}.*`` -> ``encoder.{i}.{0,1}.*``;
- ``dec_layers.{i}.layers.{0,1}.*`` -> ``decoder.{i}.{0,1}.*`` and the last block's
  ``layers.0.*`` -> ``decoder.{L-1}.*``; the input channels of decoder blocks after the
  first are reordered from AttGAN's ``[features, shortcut, attributes]`` to the package's
  ``[features, attributes, shortcut]``; the last layer's weight and bias are doubled, so
  the package's sigmoid gives :math:`(\tanh(y) + 1) / 2`, AttGAN's output mapped to [0, 1];
- ``shortcut_layers``, ``inject_layers``, channel widths and the image size are read from
  the weights' shapes (the image size from ``--size``: 128 for the released models).

What the subclass changes so that it computes AttGAN: the encoder's leaky ReLU slope is
AttGAN's 0.01 (``nn.LeakyReLU()``), not the package's 0.2; the decoder's widths are
AttGAN's (``dec_dim * 2**(L-1-i)``, twice the encoder's at the same resolution by default,
which the package's ``EditorConfig`` cannot express); attributes :math:`a \in [0, 1]` enter
as AttGAN's test-time code ``(2a - 1) * thres_int`` (``thres_int = 0.5``).

Not supported (refused): instance / switch / no normalisation (``enc_norm_fn`` or
``dec_norm_fn`` other than ``batchnorm``) and checkpoints without ``"G"``.
"""

from __future__ import annotations

import re
from typing import Dict, Sequence

import torch
from torch import nn

from vmd_fast.io.models import LoadError, read_state_dict
from vmd_fast.models.editor import AttributeEditor, EditorConfig


class AttGANEditor(AttributeEditor):
    """An :class:`AttributeEditor` with AttGAN-PyTorch's widths, slope and attribute code.

    Args:
        config: attributes, encoder ``channels``, ``shortcut_layers``, ``inject_layers``,
            ``resolution``.
        decoder_channels: output channels of every decoder block but the last (RGB).
        thres_int: AttGAN's attribute intensity: the decoder reads ``(2a - 1) * thres_int``.
        negative_slope: the encoder's leaky ReLU slope (AttGAN: 0.01).
    """

    def __init__(self, config: EditorConfig, decoder_channels: Sequence[int], thres_int: float = 0.5,
                 negative_slope: float = 0.01):
        super().__init__(config, decoder_channels)
        self.thres_int = thres_int
        for block in self.encoder:
            block[2] = nn.LeakyReLU(negative_slope)

    def decode(self, h: Sequence[torch.Tensor], a: torch.Tensor) -> torch.Tensor:
        """Feature pyramid and attributes ``a`` (N, A) in [0, 1] to images (N, 3, H, W) in [0, 1]."""
        return super().decode(h, (a * 2 - 1) * self.thres_int)


_ENC = re.compile(r"^enc_layers\.(\d+)\.layers\.(\d+)\.(.+)$")
_DEC = re.compile(r"^dec_layers\.(\d+)\.layers\.(\d+)\.(.+)$")


def attgan_architecture(state: Dict[str, torch.Tensor], attributes: Sequence[str], resolution: int) -> dict:
    """Keyword arguments of :class:`AttGANEditor` read from an AttGAN ``G`` state dict."""
    enc = sorted({int(m.group(1)) for m in map(_ENC.match, state) if m})
    dec = sorted({int(m.group(1)) for m in map(_DEC.match, state) if m})
    if not enc or not dec:
        raise LoadError("no enc_layers.*/dec_layers.* weights: not an AttGAN-PyTorch generator")
    if len(dec) != len(enc):
        raise LoadError(f"{len(enc)} encoder and {len(dec)} decoder layers; only mirrored AttGANs are supported")
    if "enc_layers.0.layers.1.running_mean" not in state or "dec_layers.0.layers.1.running_mean" not in state:
        raise LoadError("only AttGANs with batch normalisation (enc_norm_fn = dec_norm_fn = 'batchnorm') are supported")
    channels = [int(state[f"enc_layers.{i}.layers.0.weight"].shape[0]) for i in enc]
    decoder_channels = [int(state[f"dec_layers.{i}.layers.0.weight"].shape[1]) for i in dec[:-1]]
    num_attributes = int(state["dec_layers.0.layers.0.weight"].shape[0]) - channels[-1]
    if num_attributes != len(attributes):
        raise LoadError(f"the checkpoint was trained on {num_attributes} attributes, but {len(attributes)} were named "
                        f"({', '.join(attributes)})")
    # Block i >= 1 reads [x, shortcut?, attributes?]: its extra input width says which.
    shortcut = inject = 0
    for i in dec[1:]:
        extra = int(state[f"dec_layers.{i}.layers.0.weight"].shape[0]) - decoder_channels[i - 1]
        skip = channels[len(channels) - 1 - i]
        with_skip, with_attributes = extra in (skip, skip + num_attributes), extra in (num_attributes, skip + num_attributes)
        if extra and not (with_skip or with_attributes):
            raise LoadError(f"dec_layers.{i} reads {extra} extra channels, which matches no shortcut/inject layout")
        shortcut += int(with_skip and shortcut == i - 1)
        inject += int(with_attributes and inject == i - 1)
    config = EditorConfig(attributes=tuple(attributes), channels=channels, shortcut_layers=shortcut,
                          inject_layers=inject, resolution=resolution)
    return dict(config=config, decoder_channels=decoder_channels)


def convert_attgan_state_dict(state: Dict[str, torch.Tensor], config: EditorConfig,
                              decoder_channels: Sequence[int]) -> Dict[str, torch.Tensor]:
    """AttGAN-PyTorch ``G`` parameter names and layouts -> :class:`AttGANEditor`'s."""
    out = {}
    last = len(config.channels) - 1
    num_attributes = len(config.attributes)
    for key, value in state.items():
        m = _ENC.match(key)
        if m:
            out[f"encoder.{m.group(1)}.{m.group(2)}.{m.group(3)}"] = value
            continue
        m = _DEC.match(key)
        if not m:
            continue  # e.g. a discriminator's keys in a combined dict
        i, layer, name = int(m.group(1)), m.group(2), m.group(3)
        if layer == "0" and name == "weight" and 1 <= i:
            features = decoder_channels[i - 1]
            skip = config.channels[last - i] if i <= config.shortcut_layers else 0
            attrs = num_attributes if i <= config.inject_layers else 0
            x, s, a = value[:features], value[features:features + skip], value[features + skip:features + skip + attrs]
            value = torch.cat([x, a, s], dim=0)  # AttGAN [x, skip, a] -> the package's [x, a, skip]
        if i == last:
            if layer != "0":
                raise LoadError(f"unexpected AttGAN parameter {key!r}")
            out[f"decoder.{i}.{name}"] = value * 2  # sigmoid(2y) = (tanh(y) + 1) / 2
        else:
            out[f"decoder.{i}.{layer}.{name}"] = value
    return out


def load_attgan(path: str, attributes: Sequence[str], resolution: int = 128, thres_int: float = 0.5,
                argument: str = "--editor") -> AttGANEditor:
    """An AttGAN-PyTorch checkpoint as an editor for SIA (read with ``weights_only=True``).

    Args:
        path: the ``.pth`` written by AttGAN-PyTorch (a dict with ``"G"``), or a bare ``G``
            state dict (``.pth`` or ``.safetensors``).
        attributes: the attribute names in the checkpoint's order (AttGAN's
            ``--attrs``, e.g. ``Bald,Bangs,Black_Hair,...``).
        resolution: the image size the model was trained at (``--img_size``).
        thres_int: AttGAN's ``--thres_int``.

    Returns:
        :class:`AttGANEditor` in eval mode.
    """
    raw = _read_generator(path, argument)
    try:
        arch = attgan_architecture(raw, attributes, resolution)
        state = convert_attgan_state_dict(raw, **arch)
    except (LoadError, ValueError) as err:
        raise LoadError(f"{argument} {path!r}: {err}") from None
    editor = AttGANEditor(**arch, thres_int=thres_int)
    try:
        editor.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[:2])
        raise LoadError(f"{argument} {path!r} does not map onto the editor: {detail}") from None
    return editor.eval().requires_grad_(False)


def _read_generator(path: str, argument: str) -> Dict[str, torch.Tensor]:
    import os

    from vmd_fast.io.models import refuse_remote

    refuse_remote(path, argument)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file")
    if path.endswith(".safetensors"):
        return read_state_dict(path, argument)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise LoadError(f"{argument} {path!r} is not a file torch.load(weights_only=True) accepts: "
                        f"{str(err).splitlines()[0]}") from None
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("G"), dict):
        checkpoint = checkpoint["G"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise LoadError(f"{argument} {path!r} holds neither {{'G': state_dict}} nor a state dict")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint
