r"""StyleGAN2-ADA ``.pkl`` generators, read without executing anything from the file.

The official pickles (NVlabs' stylegan2-ada-pytorch, also the converted StyleGAN2 FFHQ
ones) hold a dict with ``G``, ``D``, ``G_ema``, ``augment_pipe`` and
``training_set_kwargs``; every network in it is a ``torch_utils.persistence``-wrapped
class whose pickle carries *the source code of its module*, which the official loader
``exec``\ s. :func:`restricted_load` never does: it allow-lists what rebuilds tensors and
containers (``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter``, storages
through ``torch.load(weights_only=True)``, ``collections.OrderedDict``, ``set``,
``dnnlib.util.EasyDict`` as a plain dict, numpy scalars and dtypes, torch dtypes), turns
each persistent network into a :class:`PersistentStub` holding its class name and
attribute state, and refuses every other global with :class:`UnsafePickleError`.

:func:`load_stylegan2_pkl` maps ``G_ema`` onto :class:`StyleGAN2ADAGenerator`, a
:class:`vmd_fast.models.stylegan.Generator` whose layers compute what the official
layers compute, with the StyleSpace exposed the same way (``mapping_to_styles``,
``synthesize``, ``style_names``, ``style_space_dims``).

What maps one to one (official name -> ``StyleGAN2ADAGenerator`` name):

==========================================  ===============================================
``mapping.fc{i}.weight`` / ``.bias``        ``mapping.layers.{i}.weight`` / ``.bias``
``mapping.w_avg``                           ``w_avg`` (truncation)
``synthesis.b{R}.const``                    ``synthesis.blocks.{k}.const``
``synthesis.b{R}.conv0|conv1.affine.*``     ``synthesis.blocks.{k}.layers.conv0|conv1.affine.*``
``synthesis.b{R}.conv0|conv1.weight|bias``  ``synthesis.blocks.{k}.layers.conv0|conv1.weight|bias``
``...conv0|conv1.noise_strength|noise_const`` ``...layers.conv0|conv1.noise_strength|noise_const``
``synthesis.b{R}.torgb.*``                  ``synthesis.blocks.{k}.layers.torgb.*``
==========================================  ===============================================

with ``k = log2(R) - 2``. Where the package's own generator differs from the official
one (no noise, nearest-neighbour upsampling inside the convolution, bilinear RGB skip,
its ``LatentFeatures`` input, output in [0, 1]), the layers here are subclasses that
compute the official function instead: :math:`z / \mathrm{rms}(z)` into the mapping,
transposed 3x3 convolution followed by the [1, 3, 3, 1] FIR filter for ``conv0``,
the same filter for the RGB skip, ``noise_const * noise_strength`` added after
demodulation (``noise_mode="const"``, the official default of ``generate.py``, or
``"none"``), ``conv_clamp``, and ``synthesize`` returns ``(img + 1) / 2`` clamped to [0, 1].

Not supported (refused with a message): conditional generators (``c_dim > 0``,
``mapping.embed``), the ``resnet`` and ``orig`` synthesis architectures, StyleGAN3
(``synthesis.L{i}_...``) and random noise (``noise_mode="random"`` would make an image
a random function of its styles, which ZOOM cannot use). Mixed precision is not
reproduced: the official layers at the ``num_fp16_res`` highest resolutions run in
float16, these in float32, so outputs differ by float16 rounding there.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import re
import zipfile
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vmd_fast.io.models import LoadError, refuse_remote
from vmd_fast.models.stylegan import (
    Generator,
    GeneratorConfig,
    SynthesisBlock,
    SynthesisLayer,
    ToRGBLayer,
)

NOISE_MODES = ("const", "none")


class UnsafePickleError(LoadError, pickle.UnpicklingError):
    """The pickle asks for a global that is not on the allow-list (it could run code)."""


# --- the restricted unpickler ------------------------------------------------------------
class PersistentStub:
    """What a ``torch_utils.persistence``-wrapped network becomes: its name and its state.

    Attributes:
        class_name: the official class (``"Generator"``, ``"SynthesisLayer"``, ...).
        state: its attribute dict as pickled (``_parameters``, ``_buffers``, ``_modules``,
            ``_init_kwargs``, ``resolution``, ``conv_clamp``, ...).
    """

    def __init__(self, class_name: str, state: dict):
        self.class_name = class_name
        self.state = state

    def __setstate__(self, state):  # a torch.nn module stub rebuilt by NEWOBJ + BUILD
        self.state = state

    def __getattr__(self, name):
        state = self.__dict__.get("state") or {}
        for group in ("_parameters", "_buffers", "_modules"):
            if name in (state.get(group) or {}):
                return state[group][name]
        if name in state:
            return state[name]
        raise AttributeError(f"{self.__dict__.get('class_name', 'stub')} has no attribute {name!r}")

    def state_dict(self, prefix: str = "") -> Dict[str, torch.Tensor]:
        """Parameters and buffers of this network and its children, like ``nn.Module.state_dict``."""
        out: Dict[str, torch.Tensor] = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if isinstance(value, torch.Tensor):
                    out[prefix + name] = value.detach()
        for name, child in (self.state.get("_modules") or {}).items():
            if isinstance(child, PersistentStub):
                out.update(child.state_dict(f"{prefix}{name}."))
        return out

    def __repr__(self):
        return f"PersistentStub({self.class_name})"


def _module_stub(qualified: str) -> type:
    """A stub class standing for a plain ``torch.nn`` module class found in the pickle
    (rebuilt by ``__new__`` and ``__setstate__`` only, so no torch.nn code runs)."""
    name = qualified.rsplit(".", 1)[-1]
    return type(f"ModuleStub[{name}]", (PersistentStub,), {"class_name": name, "state": {}})


class EasyDictStub(dict):
    """``dnnlib.util.EasyDict`` read back as a plain dict (no attribute magic, no code)."""


def _reconstruct_persistent_stub(meta):
    """Stands in for ``torch_utils.persistence._reconstruct_persistent_obj``: never executes
    ``meta['module_src']``; returns a :class:`PersistentStub`."""
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
        raise UnsafePickleError("a torch_utils.persistence record without type 'class' and a class_name")
    state = meta.get("state") or {}
    if not isinstance(state, dict):
        raise UnsafePickleError(f"the state of persistent {meta['class_name']} is not a dict")
    return PersistentStub(meta["class_name"], dict(state))


def _load_storage_from_bytes(data: bytes):
    """``torch.storage._load_from_bytes`` through PyTorch's own restricted unpickler."""
    if not isinstance(data, (bytes, bytearray)):
        raise UnsafePickleError("a storage record whose payload is not bytes")
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _is_storage(value) -> bool:
    return isinstance(value, (torch.TypedStorage, torch.UntypedStorage))


def _rebuild_tensor(storage, offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    if not _is_storage(storage):
        raise UnsafePickleError(f"_rebuild_tensor_v2 given a {type(storage).__name__}, not a storage")
    return torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, collections.OrderedDict())


def _rebuild_parameter(data, requires_grad, backward_hooks, *state):
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError(f"_rebuild_parameter given a {type(data).__name__}, not a tensor")
    return nn.Parameter(data, requires_grad=bool(requires_grad))


def _numpy_scalar(dtype, data=None):
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise UnsafePickleError(f"numpy scalar of dtype {dtype!r} refused (only plain numeric dtypes)")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(name, align=False, copy=False):
    import numpy as np

    dtype = np.dtype(name)
    if dtype.hasobject:
        raise UnsafePickleError("numpy object dtype refused")
    return dtype


def _latin1_bytes(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes: str + latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("_codecs.encode is allowed only to turn a str into latin-1 bytes")
    return text.encode("latin1")


_ALLOWED = {
    ("_codecs", "encode"): _latin1_bytes,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_stub,
    ("dnnlib.util", "EasyDict"): EasyDictStub,
    ("dnnlib", "EasyDict"): EasyDictStub,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allow-listed globals (see the module docstring)."""

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module.startswith("torch.nn.modules.") and re.fullmatch(r"[A-Z][A-Za-z0-9_]*", name):
            return _module_stub(f"{module}.{name}")
        raise UnsafePickleError(
            f"refused to load the global {module}.{name}: it is not a tensor, container or "
            "StyleGAN network record, and loading it could run code from the file"
        )

    def persistent_load(self, pid):
        raise UnsafePickleError(f"persistent id {pid!r} refused (a torch.save file is not a StyleGAN pickle)")


def restricted_load(path: str, argument: str = "--generator"):
    """Unpickle ``path`` with :class:`RestrictedUnpickler` (nothing from the file runs).

    Args:
        path: a local ``.pkl`` file.
        argument: the command-line flag it came from, for messages.

    Returns:
        the unpickled object; persistent networks are :class:`PersistentStub`.

    Raises:
        UnsafePickleError: the file asks for a global that is not allow-listed.
    """
    refuse_remote(path, argument)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file")
    if zipfile.is_zipfile(path):
        raise LoadError(f"{argument} {path!r} is a torch.save archive, not a StyleGAN2-ADA pickle")
    with open(path, "rb") as f:
        try:
            return RestrictedUnpickler(f).load()
        except UnsafePickleError as err:
            raise UnsafePickleError(f"{argument} {path!r}: {err}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError) as err:
            raise LoadError(f"{argument} {path!r} is not a readable pickle ({type(err).__name__}: {err})") from None


# --- the official StyleGAN2 layers on the package's generator ----------------------------
def setup_filter(taps: Sequence[float] = (1, 3, 3, 1)) -> torch.Tensor:
    """The normalised 2-D FIR filter of ``upfirdn2d.setup_filter``: (k, k), sums to 1."""
    f = torch.as_tensor(taps, dtype=torch.float32)
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, up: int = 1, padding: Sequence[int] = (0, 0, 0, 0),
              gain: float = 1.0) -> torch.Tensor:
    """Upsample by zero insertion, pad ``(x0, x1, y0, y1)``, filter with ``f * gain``: (N, C, H, W).

    The reference semantics of NVlabs' ``upfirdn2d`` for a symmetric 2-D filter.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, list(padding))
    weight = (f * gain).to(x.dtype).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, weight, groups=c)


def upsample2d(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """2x upsampling of the RGB skip path, ``upfirdn2d.upsample2d``: (N, C, H, W) -> (N, C, 2H, 2W)."""
    k = f.shape[-1]
    return upfirdn2d(x, f, up=2, padding=((k + 1) // 2, (k - 2) // 2, (k + 1) // 2, (k - 2) // 2), gain=4)


class NormalizeSecondMoment(nn.Module):
    """The official mapping's input, :math:`z / \\sqrt{\\mathrm{mean}(z^2) + 10^{-8}}`: (N, D) -> (N, D)."""

    def __init__(self, z_dim: int):
        super().__init__()
        self.out_features = z_dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()


class OfficialSynthesisLayer(SynthesisLayer):
    """:class:`SynthesisLayer` computing the official one: FIR-filtered transposed
    convolution when upsampling, constant noise, optional clamp."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, up: bool = False,
                 use_noise: bool = True, conv_clamp: Optional[float] = None):
        super().__init__(in_channels, out_channels, w_dim, up=up)
        self.resolution, self.use_noise, self.conv_clamp = resolution, use_noise, conv_clamp
        self.noise_mode = "const"
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        if use_noise:
            self.register_buffer("noise_const", torch.zeros(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        n, c_in = x.shape[:2]
        assert style.shape == (n, c_in), (style.shape, x.shape)
        weight = self.weight
        x = x * style[:, :, None, None]
        if self.up:
            # conv2d_resample(up=2, padding=1): transposed stride-2 conv, then the FIR filter.
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = upfirdn2d(x, self.resample_filter, padding=(1, 1, 1, 1), gain=4)
        else:
            x = F.conv2d(x, weight, padding=weight.shape[-1] // 2)
        dcoefs = (weight.square().sum(dim=(2, 3))[None] * style.square()[:, None, :]).sum(dim=2)  # (N, C_out)
        x = x * (dcoefs + 1e-8).rsqrt()[:, :, None, None]
        assert x.shape[-1] == self.resolution, (x.shape, self.resolution)
        if self.use_noise and self.noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        x = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * math.sqrt(2)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class OfficialToRGBLayer(ToRGBLayer):
    """:class:`ToRGBLayer` with the official optional clamp of its output."""

    def __init__(self, in_channels: int, img_channels: int, w_dim: int, conv_clamp: Optional[float] = None):
        super().__init__(in_channels, img_channels, w_dim)
        self.conv_clamp = conv_clamp

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = super().forward(x, style)
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class OfficialSynthesisBlock(SynthesisBlock):
    """:class:`SynthesisBlock` with the official layers and the FIR-upsampled RGB skip."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int,
                 use_noise: bool = True, conv_clamp: Optional[float] = None):
        super().__init__(in_channels, out_channels, w_dim, resolution, img_channels)
        layers = {}
        if in_channels:
            layers["conv0"] = OfficialSynthesisLayer(in_channels, out_channels, w_dim, resolution, True, use_noise, conv_clamp)
        layers["conv1"] = OfficialSynthesisLayer(out_channels, out_channels, w_dim, resolution, False, use_noise, conv_clamp)
        layers["torgb"] = OfficialToRGBLayer(out_channels, img_channels, w_dim, conv_clamp)
        self.layers = nn.ModuleDict(layers)
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(self, x, img, styles: Sequence[torch.Tensor]):
        assert len(styles) == len(self.layers)
        if "conv0" in self.layers:
            x = self.layers["conv0"](x, styles[0])
        else:
            x = self.const[None].expand(styles[0].shape[0], -1, -1, -1)
        x = self.layers["conv1"](x, styles[-2])
        rgb = self.layers["torgb"](x, styles[-1])
        if img is not None:
            rgb = rgb + upsample2d(img, self.resample_filter)
        return x, rgb


class StyleGAN2ADAGenerator(Generator):
    r"""A :class:`~vmd_fast.models.stylegan.Generator` that computes an official
    StyleGAN2-ADA generator (see the module docstring for what maps and what does not).

    ``mapping_to_styles(z)`` gives the StyleSpace (one (N, C_l) tensor per styled layer,
    ``style_names`` ``"b4.conv1"``, ``"b4.torgb"``, ``"b8.conv0"``, ...), ``synthesize``
    the image in [0, 1]; ``synthesis(styles)`` is the official output in [-1, 1].

    Args:
        config: the architecture; ``latent_levels`` must be empty.
        use_noise: whether the synthesis layers have noise inputs.
        conv_clamp: the official ``conv_clamp`` (``None``: no clamping).
        truncation_psi: :math:`w \leftarrow \bar w + \psi (w - \bar w)` in
            ``mapping_to_styles`` (1: none).
        noise_mode: ``"const"`` (the stored ``noise_const``) or ``"none"``.
    """

    def __init__(self, config: GeneratorConfig, use_noise: bool = True, conv_clamp: Optional[float] = None,
                 truncation_psi: float = 1.0, noise_mode: str = "const"):
        if config.latent_levels:
            raise ValueError("an official StyleGAN2 generator has no latent_levels")
        super().__init__(config)
        self.mapping.features = NormalizeSecondMoment(config.z_dim)
        in_channels = 0
        for i, out_channels in enumerate(config.channels):
            self.synthesis.blocks[i] = OfficialSynthesisBlock(in_channels, out_channels, config.w_dim, 4 * 2**i,
                                                              config.img_channels, use_noise, conv_clamp)
            in_channels = out_channels
        self.register_buffer("w_avg", torch.zeros(config.w_dim))
        self.truncation_psi = truncation_psi
        self.set_noise_mode(noise_mode)
        named = self.synthesis.style_layers()
        self.style_names = [name for name, _ in named]
        self.style_space_dims = [layer.style_dim for _, layer in named]

    def set_noise_mode(self, mode: str) -> None:
        """``"const"``: add the stored noise (deterministic); ``"none"``: no noise."""
        if mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, got {mode!r} (random noise is not supported)")
        self.noise_mode = mode
        for _, layer in self.synthesis.style_layers():
            if isinstance(layer, OfficialSynthesisLayer):
                layer.noise_mode = mode

    def mapping_to_styles(self, z: torch.Tensor, truncation_psi: Optional[float] = None) -> List[torch.Tensor]:
        """Latent codes (N, z_dim) to the StyleSpace, with the truncation trick when psi != 1."""
        assert z.ndim == 2 and z.shape[1] == self.z_dim, (z.shape, self.z_dim)
        psi = self.truncation_psi if truncation_psi is None else truncation_psi
        w = self.mapping(z)  # (N, w_dim)
        if psi != 1:
            w = self.w_avg.lerp(w, psi)
        return [layer.affine(w) for _, layer in self.synthesis.style_layers()]

    def synthesize(self, styles: Sequence[torch.Tensor]) -> torch.Tensor:
        """StyleSpace to images in [0, 1]: the official output mapped by ``(x + 1) / 2``: (N, 3, R, R)."""
        assert len(styles) == len(self.style_space_dims), (len(styles), len(self.style_space_dims))
        for s, dim in zip(styles, self.style_space_dims):
            assert s.ndim == 2 and s.shape[1] == dim, (s.shape, dim)
        return (self.synthesis(styles) * 0.5 + 0.5).clamp(0, 1)


# --- the converter ------------------------------------------------------------------------
_MAPPING = re.compile(r"^mapping\.fc(\d+)\.(weight|bias)$")
_SYNTHESIS = re.compile(r"^synthesis\.b(\d+)\.(const|conv0\.|conv1\.|torgb\.)(.*)$")


def convert_official_state_dict(official: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official StyleGAN2-ADA generator parameter names -> :class:`StyleGAN2ADAGenerator` names.

    ``resample_filter`` buffers are dropped (the [1, 3, 3, 1] filter is rebuilt; see
    :func:`official_architecture`, which checks it).

    Args:
        official: ``G_ema``'s state dict (``mapping.fc0.weight``, ``synthesis.b4.const``, ...).

    Returns:
        the same tensors under the package's names.

    Example:
        >>> sorted(convert_official_state_dict({"mapping.fc1.bias": torch.zeros(2),
        ...                                     "synthesis.b8.conv0.affine.weight": torch.zeros(2, 2)}))
        ['mapping.layers.1.bias', 'synthesis.blocks.1.layers.conv0.affine.weight']
    """
    out = {}
    for key, value in official.items():
        if key.endswith("resample_filter"):
            continue
        if key == "mapping.w_avg":
            out["w_avg"] = value
            continue
        m = _MAPPING.match(key)
        if m:
            out[f"mapping.layers.{m.group(1)}.{m.group(2)}"] = value
            continue
        m = _SYNTHESIS.match(key)
        if m:
            block = int(math.log2(int(m.group(1)))) - 2
            if m.group(2) == "const":
                if m.group(3):
                    raise LoadError(f"unexpected generator parameter {key!r}")
                out[f"synthesis.blocks.{block}.const"] = value
            else:
                out[f"synthesis.blocks.{block}.layers.{m.group(2)}{m.group(3)}"] = value
            continue
        if key.startswith("mapping.embed"):
            raise LoadError("the generator is conditional (mapping.embed, c_dim > 0); only unconditional ones are supported")
        if re.match(r"^synthesis\.b\d+\.skip\.", key):
            raise LoadError("the generator uses the 'resnet' synthesis architecture; only 'skip' (the default) is supported")
        if re.match(r"^synthesis\.(input|L\d+_)", key):
            raise LoadError("this is a StyleGAN3 generator; only StyleGAN2 / StyleGAN2-ADA generators are supported")
        raise LoadError(f"unexpected generator parameter {key!r}")
    return out


def official_architecture(G: PersistentStub) -> dict:
    """Keyword arguments of :class:`StyleGAN2ADAGenerator` read from an unpickled ``G_ema``."""
    state = G.state_dict()
    if G.state.get("c_dim"):
        raise LoadError(f"the generator is conditional (c_dim = {G.state['c_dim']}); only unconditional ones are supported")
    fcs = sorted(int(m.group(1)) for m in map(_MAPPING.match, state) if m and m.group(2) == "weight")
    if not fcs or "synthesis.b4.const" not in state:
        raise LoadError("G_ema has no mapping.fc*/synthesis.b4.const parameters: not a StyleGAN2 generator")
    resolutions = sorted({int(m.group(1)) for m in map(_SYNTHESIS.match, state) if m})
    channels = [int(state[f"synthesis.b{r}.conv1.weight"].shape[0]) for r in resolutions]
    img_channels = int(state[f"synthesis.b{resolutions[-1]}.torgb.weight"].shape[0])
    mapping = G.mapping
    fc0 = mapping.fc0
    z_dim = int(state["mapping.fc0.weight"].shape[1])
    lr_multiplier = float(fc0.state.get("weight_gain", 0.01 / math.sqrt(z_dim))) * math.sqrt(z_dim)
    for key, value in state.items():
        if key.endswith("resample_filter") and not torch.allclose(value.float(), setup_filter()):
            raise LoadError(f"{key} is not the [1, 3, 3, 1] filter; other filters are not supported")
    synthesis = G.synthesis
    arch = getattr(synthesis, f"b{resolutions[-1]}").state.get("architecture", "skip")
    if arch != "skip":
        raise LoadError(f"the generator uses the {arch!r} synthesis architecture; only 'skip' is supported")
    conv1 = getattr(synthesis, "b4").conv1
    return dict(
        config=GeneratorConfig(z_dim=z_dim, w_dim=int(state["mapping.fc0.weight"].shape[0]), mapping_layers=len(fcs),
                               mapping_lr_multiplier=round(lr_multiplier, 10), resolution=resolutions[-1],
                               channels=channels, img_channels=img_channels),
        use_noise="synthesis.b4.conv1.noise_strength" in state,
        conv_clamp=conv1.state.get("conv_clamp"),
    )


def load_stylegan2_pkl(path: str, key: str = "G_ema", noise_mode: str = "const", truncation_psi: float = 1.0,
                       argument: str = "--generator") -> StyleGAN2ADAGenerator:
    """An official StyleGAN2-ADA ``.pkl`` as a :class:`StyleGAN2ADAGenerator`, nothing executed.

    Args:
        path: a local pickle in the official format (a dict with ``G_ema``).
        key: which network to read (``"G_ema"``, the one the official tools generate with).
        noise_mode: ``"const"`` or ``"none"``.
        truncation_psi: the truncation trick's psi (1: none).
        argument: the command-line flag, for messages.

    Returns:
        the generator in eval mode with ``requires_grad`` off; ``generator.pkl_info`` holds
        the path, the official class names and the network's ``_init_kwargs``.
    """
    data = restricted_load(path, argument)
    if not isinstance(data, dict) or key not in data:
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise LoadError(f"{argument} {path!r} has no {key!r} (found {found}); is it a StyleGAN2-ADA network pickle?")
    G = data[key]
    if not isinstance(G, PersistentStub):
        raise LoadError(f"{argument} {path!r}: {key} is a {type(G).__name__}, not a persistent network")
    try:
        arch = official_architecture(G)
        state = convert_official_state_dict(G.state_dict())
    except LoadError as err:
        raise LoadError(f"{argument} {path!r}: {err}") from None
    generator = StyleGAN2ADAGenerator(**arch, truncation_psi=truncation_psi, noise_mode=noise_mode)
    expected = generator.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise LoadError(f"{argument} {path!r} does not map onto the generator (missing {missing[:4]}, unexpected {unexpected[:4]})")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise LoadError(f"{argument} {path!r}: {name} has shape {tuple(value.shape)}, expected {tuple(expected[name].shape)}")
    generator.load_state_dict({k: v.float() for k, v in state.items()})
    generator.eval().requires_grad_(False)
    init_kwargs = G.state.get("_init_kwargs") or {}
    generator.pkl_info = {"path": os.path.abspath(path), "key": key, "class_name": G.class_name,
                          "init_kwargs": {k: v for k, v in dict(init_kwargs).items() if isinstance(v, (int, float, str, dict))}}
    return generator
