"""Real assets from local files: StyleGAN2-ADA pickles (restricted unpickler), AttGAN,
open_clip and torchvision checkpoints, each checked against the network it came from."""

import math
import os
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vmd_fast.io import LoadError, load_classifier, resolve
from vmd_fast.io.stylegan_pkl import StyleGAN2ADAGenerator, UnsafePickleError, load_stylegan2_pkl, restricted_load

# --- a StyleGAN2-ADA network in the official pickle format --------------------------------
# The classes below are named and laid out like training/networks.py of NVlabs'
# stylegan2-ada-pytorch and pickle like torch_utils.persistence does: each carries the
# source of its module, which the official loader exec()s. Here that "source" creates a
# marker file, so a loader that executed it would be caught.

MODULE_SOURCE = "import pathlib\npathlib.Path({marker!r}).write_text('executed')\n"


def _reconstruct_persistent_obj(meta):  # what the official loader calls (it would exec the source)
    exec(meta["module_src"], {})
    raise AssertionError("the persistent source code was executed")


class EasyDict(dict):
    pass


@pytest.fixture
def official_modules(monkeypatch):
    """Fake ``torch_utils.persistence`` and ``dnnlib.util`` so that pickle names them as the official files do."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    monkeypatch.setattr(_reconstruct_persistent_obj, "__module__", "torch_utils.persistence")
    monkeypatch.setattr(EasyDict, "__module__", "dnnlib.util")
    for name, module in (("torch_utils", types.ModuleType("torch_utils")), ("torch_utils.persistence", persistence),
                         ("dnnlib", types.ModuleType("dnnlib")), ("dnnlib.util", util)):
        monkeypatch.setitem(sys.modules, name, module)


class Persistent:
    module_src = ""

    def __reduce__(self):
        meta = dict(type="class", version=4, module_src=Persistent.module_src, class_name=type(self).__name__,
                    state=dict(self.__dict__))
        return (_reconstruct_persistent_obj, (meta,), None)


def fir_filter():
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


def upfirdn2d_ref(x, f, up=1, pad=(0, 0, 0, 0), gain=1.0):
    """NVlabs' reference upfirdn2d: zero insertion, pad, correlate with the flipped filter."""
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x = F.pad(x, list(pad))
    kernel = (f * gain).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kernel, groups=c)


class FullyConnectedLayer(Persistent, nn.Module):
    def __init__(self, in_features, out_features, activation="linear", lr_multiplier=1.0, bias_init=0.0):
        super().__init__()
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init)))
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        x = x.matmul((self.weight * self.weight_gain).t()) + self.bias * self.bias_gain
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.activation == "lrelu" else x


class MappingNetwork(Persistent, nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws, num_layers=8, lr_multiplier=0.01):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws, self.num_layers = z_dim, c_dim, w_dim, num_ws, num_layers
        features = [z_dim] + [w_dim] * num_layers
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(features[idx], features[idx + 1], "lrelu", lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z, truncation_psi=1.0):
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        if truncation_psi != 1:
            x = self.w_avg.lerp(x, truncation_psi)
        return x


class SynthesisLayer(Persistent, nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, conv_clamp=None):
        super().__init__()
        self.resolution, self.up, self.use_noise, self.activation, self.conv_clamp = resolution, up, True, "lrelu", conv_clamp
        self.register_buffer("resample_filter", fir_filter())
        self.padding = 1
        self.act_gain = math.sqrt(2)
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))

    def forward(self, x, w, noise_mode="const"):
        styles = self.affine(w)
        n = x.shape[0]
        # The fused form: one grouped convolution with per-sample modulated, demodulated weights.
        weight = self.weight[None] * styles[:, None, :, None, None]  # (N, O, I, k, k)
        weight = weight * (weight.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt()[:, :, None, None, None]
        x = x.reshape(1, -1, *x.shape[2:])
        if self.up == 2:
            w_t = weight.transpose(1, 2).reshape(-1, weight.shape[1], 3, 3)  # (N*I, O, k, k)
            x = F.conv_transpose2d(x, w_t, stride=2, groups=n)
            x = upfirdn2d_ref(x, self.resample_filter, pad=(1, 1, 1, 1), gain=4)
        else:
            x = F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), padding=1, groups=n)
        x = x.reshape(n, -1, *x.shape[2:])
        if noise_mode == "const":
            x = x + self.noise_const * self.noise_strength
        x = F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * self.act_gain
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class ToRGBLayer(Persistent, nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = nn.Parameter(torch.zeros([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x, w):
        styles = self.affine(w) * self.weight_gain
        x = torch.einsum("noi,nihw->nohw", self.weight[None, :, :, 0, 0] * styles[:, None, :], x)
        x = x + self.bias[None, :, None, None]
        return x.clamp(-self.conv_clamp, self.conv_clamp) if self.conv_clamp is not None else x


class SynthesisBlock(Persistent, nn.Module):
    def __init__(self, in_channels, out_channels, w_dim, resolution, img_channels, is_last, conv_clamp=None):
        super().__init__()
        self.in_channels, self.w_dim, self.resolution, self.img_channels = in_channels, w_dim, resolution, img_channels
        self.is_last, self.architecture, self.use_fp16 = is_last, "skip", False
        self.register_buffer("resample_filter", fir_filter())
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2, conv_clamp=conv_clamp)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)

    def forward(self, x, img, w, noise_mode):
        if self.in_channels == 0:
            x = self.const[None].repeat(w.shape[0], 1, 1, 1)
        else:
            x = self.conv0(x, w, noise_mode)
        x = self.conv1(x, w, noise_mode)
        if img is not None:
            img = upfirdn2d_ref(img, self.resample_filter, up=2, pad=(2, 1, 2, 1), gain=4)
        y = self.torgb(x, w)
        return x, (img + y if img is not None else y)


class SynthesisNetwork(Persistent, nn.Module):
    def __init__(self, w_dim, img_resolution, img_channels, channels, conv_clamp=None):
        super().__init__()
        self.block_resolutions = [2**i for i in range(2, int(np.log2(img_resolution)) + 1)]
        for res in self.block_resolutions:
            in_channels = channels[res // 2] if res > 4 else 0
            block = SynthesisBlock(in_channels, channels[res], w_dim, res, img_channels, res == img_resolution, conv_clamp)
            setattr(self, f"b{res}", block)

    def forward(self, w, noise_mode):
        x = img = None
        for res in self.block_resolutions:
            x, img = getattr(self, f"b{res}")(x, img, w, noise_mode)
        return img


class Generator(Persistent, nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, img_resolution, img_channels, mapping_kwargs, synthesis_kwargs):
        super().__init__()
        self._init_args = ()
        self._init_kwargs = EasyDict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                     img_channels=img_channels, mapping_kwargs=mapping_kwargs,
                                     synthesis_kwargs=synthesis_kwargs)
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, c_dim, w_dim, img_resolution, img_channels
        self.synthesis = SynthesisNetwork(w_dim, img_resolution, img_channels, **synthesis_kwargs)
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws=0, **mapping_kwargs)

    def forward(self, z, truncation_psi=1.0, noise_mode="const"):
        return self.synthesis(self.mapping(z, truncation_psi), noise_mode)


def _official_generator(conv_clamp=None):
    torch.manual_seed(0)
    G = Generator(z_dim=8, c_dim=0, w_dim=12, img_resolution=16, img_channels=3,
                  mapping_kwargs=EasyDict(num_layers=3), synthesis_kwargs=EasyDict(channels={4: 16, 8: 12, 16: 8},
                                                                                 conv_clamp=conv_clamp))
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith(("bias", "noise_strength")):
                p.copy_(torch.randn(p.shape) * 0.3 + (1.0 if "affine" in name else 0.0))
        G.mapping.w_avg.copy_(torch.randn(12))
    return G.eval()


def _write_official_pickle(path, marker, G, **extra):
    Persistent.module_src = MODULE_SOURCE.format(marker=str(marker))
    with open(path, "wb") as f:
        pickle.dump({"G": G, "D": None, "G_ema": G, "augment_pipe": None,
                     "training_set_kwargs": EasyDict(resolution=16, xflip=False), **extra}, f)


@pytest.mark.parametrize("conv_clamp", [None, 0.7])
def test_stylegan2_ada_pickle_maps_onto_the_generator_exactly(official_modules, tmp_path, conv_clamp):
    G = _official_generator(conv_clamp)
    marker = tmp_path / "executed"
    _write_official_pickle(tmp_path / "network.pkl", marker, G)
    loaded = load_stylegan2_pkl(str(tmp_path / "network.pkl"))
    assert not marker.exists()  # the source code in the pickle never ran
    assert isinstance(loaded, StyleGAN2ADAGenerator)
    assert loaded.style_names == ["b4.conv1", "b4.torgb", "b8.conv0", "b8.conv1", "b8.torgb", "b16.conv0", "b16.conv1", "b16.torgb"]
    assert loaded.style_space_dims == [16, 16, 16, 12, 12, 12, 8, 8]
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        w = G.mapping(z)
        expected_styles = [G.synthesis.b4.conv1.affine(w), G.synthesis.b4.torgb.affine(w)]
        torch.testing.assert_close(loaded.mapping_to_styles(z)[:2], expected_styles)
        for psi in (1.0, 0.6):
            for noise_mode in ("const", "none"):
                loaded.set_noise_mode(noise_mode)
                styles = loaded.mapping_to_styles(z, truncation_psi=psi)
                official = G(z, truncation_psi=psi, noise_mode=noise_mode)
                torch.testing.assert_close(loaded.synthesis(styles), official, atol=2e-5, rtol=1e-4)
                torch.testing.assert_close(loaded.synthesize(styles), (official * 0.5 + 0.5).clamp(0, 1), atol=1e-5, rtol=1e-4)
    assert loaded.pkl_info["class_name"] == "Generator" and loaded.pkl_info["init_kwargs"]["z_dim"] == 8


def test_the_generator_is_reachable_as_a_command_line_generator(official_modules, tmp_path):
    _write_official_pickle(tmp_path / "network.pkl", tmp_path / "executed", _official_generator())
    assert isinstance(resolve("generator", str(tmp_path / "network.pkl"), "cpu"), StyleGAN2ADAGenerator)


class Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_carrying_a_payload_is_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"G_ema": Payload(marker)}, f)
    with pytest.raises(UnsafePickleError, match=r"refused to load the global (posix|os)\.system"):
        restricted_load(str(tmp_path / "evil.pkl"))
    assert not marker.exists()
    with open(tmp_path / "eval.pkl", "wb") as f:
        f.write(b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR.")
    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        restricted_load(str(tmp_path / "eval.pkl"))
    assert not marker.exists()


def test_a_payload_inside_a_network_state_is_refused(official_modules, tmp_path):
    G = _official_generator()
    G.hidden = Payload(tmp_path / "pwned")
    _write_official_pickle(tmp_path / "network.pkl", tmp_path / "executed", G)
    with pytest.raises(UnsafePickleError, match="system"):
        load_stylegan2_pkl(str(tmp_path / "network.pkl"))
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "executed").exists()


def test_stylegan_pickle_errors_name_the_problem(official_modules, tmp_path):
    with open(tmp_path / "other.pkl", "wb") as f:
        pickle.dump({"weights": torch.zeros(2)}, f)
    with pytest.raises(LoadError, match="has no 'G_ema'"):
        load_stylegan2_pkl(str(tmp_path / "other.pkl"))
    torch.save({"G_ema": {}}, tmp_path / "saved.pkl")
    with pytest.raises(LoadError, match="torch.save archive"):
        load_stylegan2_pkl(str(tmp_path / "saved.pkl"))
    G = _official_generator()
    G.c_dim = 10
    _write_official_pickle(tmp_path / "conditional.pkl", tmp_path / "executed", G)
    with pytest.raises(LoadError, match="conditional"):
        load_stylegan2_pkl(str(tmp_path / "conditional.pkl"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_stylegan2_pkl(str(tmp_path / "missing.pkl"))


# --- AttGAN-PyTorch -------------------------------------------------------------------------
class Conv2dBlock(nn.Module):
    def __init__(self, n_in, n_out, transpose=False, norm=True, acti="lrelu"):
        super().__init__()
        conv = nn.ConvTranspose2d if transpose else nn.Conv2d
        layers = [conv(n_in, n_out, 4, stride=2, padding=1, bias=not norm)]
        if norm:
            layers.append(nn.BatchNorm2d(n_out))
        layers.append({"lrelu": nn.LeakyReLU(), "relu": nn.ReLU(), "tanh": nn.Tanh()}[acti])
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


class AttGANGenerator(nn.Module):
    """AttGAN-PyTorch's Generator (attgan.py), written out for the test."""

    def __init__(self, enc_dim=8, enc_layers=4, dec_dim=8, n_attrs=3, shortcut_layers=1, inject_layers=1, img_size=32):
        super().__init__()
        self.shortcut_layers, self.inject_layers = shortcut_layers, inject_layers
        self.f_size = img_size // 2**enc_layers
        layers, n_in = [], 3
        for i in range(enc_layers):
            n_out = enc_dim * 2**i
            layers.append(Conv2dBlock(n_in, n_out))
            n_in = n_out
        self.enc_layers = nn.ModuleList(layers)
        layers, n_in = [], n_in + n_attrs
        for i in range(enc_layers):
            if i < enc_layers - 1:
                n_out = dec_dim * 2**(enc_layers - i - 1)
                layers.append(Conv2dBlock(n_in, n_out, transpose=True, acti="relu"))
                n_in = n_out + (n_out // 2 if shortcut_layers > i else 0) + (n_attrs if inject_layers > i else 0)
            else:
                layers.append(Conv2dBlock(n_in, 3, transpose=True, norm=False, acti="tanh"))
        self.dec_layers = nn.ModuleList(layers)

    def forward(self, x, a):
        zs, z = [], x
        for layer in self.enc_layers:
            z = layer(z)
            zs.append(z)
        z = torch.cat([zs[-1], a.view(a.size(0), -1, 1, 1).repeat(1, 1, self.f_size, self.f_size)], dim=1)
        for i, layer in enumerate(self.dec_layers):
            z = layer(z)
            if self.shortcut_layers > i:
                z = torch.cat([z, zs[len(self.dec_layers) - 2 - i]], dim=1)
            if self.inject_layers > i:
                size = self.f_size * 2**(i + 1)
                z = torch.cat([z, a.view(a.size(0), -1, 1, 1).repeat(1, 1, size, size)], dim=1)
        return z


@pytest.mark.parametrize("shortcut,inject", [(1, 1), (2, 0), (0, 2)])
def test_attgan_checkpoint_maps_onto_the_editor_exactly(tmp_path, shortcut, inject):
    from vmd_fast.io.attgan import AttGANEditor, load_attgan

    torch.manual_seed(0)
    G = AttGANGenerator(shortcut_layers=shortcut, inject_layers=inject)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for m in G.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    G.eval()
    torch.save({"G": G.state_dict(), "D": {}}, tmp_path / "weights.pth")
    editor = load_attgan(str(tmp_path / "weights.pth"), ["Bangs", "Eyeglasses", "Smiling"], resolution=32)
    assert isinstance(editor, AttGANEditor)
    assert (editor.config.shortcut_layers, editor.config.inject_layers) == (shortcut, inject)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    a = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 0.8]])
    with torch.no_grad():
        expected = (G(x * 2 - 1, (a * 2 - 1) * 0.5) + 1) / 2  # AttGAN's test-time conventions
        torch.testing.assert_close(editor(x, a), expected, atol=1e-5, rtol=1e-4)


def test_attgan_with_the_wrong_number_of_attributes_is_refused(tmp_path):
    from vmd_fast.io.attgan import load_attgan

    torch.save({"G": AttGANGenerator().state_dict()}, tmp_path / "weights.pth")
    with pytest.raises(LoadError, match="trained on 3 attributes, but 2 were named"):
        load_attgan(str(tmp_path / "weights.pth"), ["Bangs", "Smiling"], resolution=32)


# --- torchvision and open_clip --------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_torchvision_classifier_from_local_weights_matches_the_source(tmp_path, suffix):
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(0)
    source = torchvision.models.get_model("resnet18", weights=None, num_classes=2).eval()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".pth":
        torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    model = load_classifier(str(path), "resnet18", task="multiclass")
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    resized = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source((resized - mean) / std))
    assert model.task == "multiclass"
    with pytest.raises(LoadError, match="does not fit --arch 'resnet34'"):
        load_classifier(str(path), "resnet34")


def test_a_pickled_object_in_a_weights_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"fc.weight": torch.zeros(2, 2), "x": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(LoadError, match="weights_only"):
        load_classifier(str(tmp_path / "evil.pth"), "resnet18")
    assert not marker.exists()


def test_open_clip_checkpoint_from_a_local_file(tmp_path):
    import json

    import open_clip

    from vmd_fast.io.clip import load_open_clip

    config = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "vmd-test-tiny-ViT.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "configs"))
    torch.manual_seed(0)
    source = open_clip.create_model("vmd-test-tiny-ViT", pretrained=None).eval()
    torch.save(source.state_dict(), tmp_path / "open_clip_model.bin")
    model = load_open_clip(str(tmp_path / "open_clip_model.bin"), "vmd-test-tiny-ViT")
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = model.tokenizer(["a photo of a face", "a face with eyeglasses"])
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), source.encode_image(x))
        torch.testing.assert_close(model.encode_text(tokens), source.encode_text(tokens))
    with pytest.raises(LoadError, match="not an open_clip architecture"):
        load_open_clip(str(tmp_path / "open_clip_model.bin"), "no-such-arch")
    with pytest.raises(LoadError, match="not a local file"):
        load_open_clip("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "ViT-B-32")
