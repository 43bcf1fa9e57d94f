"""Models named on the command line: zoo names, ``package.module:factory``, local files.

One resolver serves every role (``--target``, ``--editor``, ``--generator``, ``--clip``):

- an existing path is a local file (or a ``vmd-fast train`` output directory) and goes to
  the loader of its role;
- ``package.module:factory`` imports the module and calls ``factory()``;
- anything else is a zoo name.

Nothing is ever downloaded: the loaders read local files only and refuse URLs and hub
names. Classifier weights are read with safetensors or ``torch.load(weights_only=True)``
(PyTorch's restricted unpickler), never with a full unpickler.
"""

from __future__ import annotations

import importlib
import json
import os
import re
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt", ".pkl")
TRAINED_RECORD = "trained.json"
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://|^hf-hub:")


class LoadError(ValueError):
    """A model or checkpoint cannot be loaded; the message names the argument or file."""


def refuse_remote(path: str, argument: str) -> None:
    """Raise :class:`LoadError` when ``path`` is a URL or a hub name instead of a local file."""
    if _URL.match(str(path)):
        raise LoadError(f"{argument} {path!r} is not a local file: vmd_fast reads local checkpoints only and downloads nothing")


def looks_like_path(spec: str) -> bool:
    """Whether ``spec`` names a file (it exists, has a separator or a weights suffix)."""
    return os.path.exists(spec) or os.sep in spec or spec.lower().endswith(WEIGHT_SUFFIXES)


def load_factory(spec: str, argument: str = "--target") -> nn.Module:
    """``package.module:factory`` -> ``factory()``, which must return an ``nn.Module``."""
    module_name, _, factory = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise LoadError(f"{argument} {spec!r}: cannot import {module_name!r} ({err})") from None
    if not hasattr(module, factory):
        raise LoadError(f"{argument} {spec!r}: {module_name!r} has no {factory!r}")
    model = getattr(module, factory)()
    if not isinstance(model, nn.Module):
        raise LoadError(f"{argument} {spec!r}: {factory}() returned {type(model).__name__}, not an nn.Module")
    return model


def read_state_dict(path: str, argument: str = "--target") -> Dict[str, torch.Tensor]:
    """The tensors of a local weights file, without executing anything from it.

    ``.safetensors`` is read with safetensors; anything else with
    ``torch.load(weights_only=True)``. A checkpoint dict that wraps the weights under
    ``state_dict``, ``model``, ``model_state_dict``, ``net`` or ``ema`` is unwrapped, and a
    ``module.`` prefix (DataParallel) is removed.

    Args:
        path: the file.
        argument: the command-line argument it came from, for error messages.

    Returns:
        name -> tensor.
    """
    refuse_remote(path, argument)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # the restricted unpickler names the refused global
            raise LoadError(f"{argument} {path!r} is not a plain weights file torch.load(weights_only=True) accepts: "
                            f"{str(err).splitlines()[0]}") from None
    for key in ("state_dict", "model_state_dict", "model", "net", "ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LoadError(f"{argument} {path!r} does not hold a state dict (name -> tensor)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class PreprocessedClassifier(nn.Module):
    """A classifier that expects normalised inputs of its own size, fed images in [0, 1].

    ``forward(x)``: (N, 3, H, W) in [0, 1] -> resize to ``size`` (bilinear, differentiable)
    -> ``(x - mean) / std`` -> the wrapped model's outputs. SIA, ZOOM and the attacks all
    work in [0, 1] pixel space, so the normalisation belongs to the target.

    Args:
        model: the classifier.
        mean, std: per-channel normalisation (ImageNet's for torchvision models).
        size: input side length, or ``None`` to keep the image's.
        task: the target adapter's task (``"binary"``, ``"multiclass"``, ...), or ``None`` to
            infer it from the output shape.
        label: the attribute a binary classifier detects (e.g. ``"smiling"``).
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 size: Optional[int] = None, task: Optional[str] = None, label: Optional[str] = None):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32)[None, :, None, None])
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32)[None, :, None, None])
        self.size = size
        if task is not None:
            self.task = task
        if label is not None:
            self.label = label

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is not None and tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return self.model((x - self.mean) / self.std)


def _num_classes(state: Dict[str, torch.Tensor]) -> int:
    """The output width of the last linear layer of a state dict (its last 2-D weight)."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    if not weights:
        raise LoadError("cannot tell the number of classes from the weights (no linear layer); pass --num-classes")
    return int(weights[-1].shape[0])


def load_classifier(path: str, arch: str, num_classes: Optional[int] = None, task: Optional[str] = None,
                    label: Optional[str] = None, size: Optional[int] = None, argument: str = "--target") -> nn.Module:
    """A torchvision or timm classifier built without pretrained weights, then filled from a local file.

    Args:
        path: the weights (``.safetensors`` or a ``torch.save`` file of a state dict).
        arch: a torchvision model name (``"resnet50"``) or ``"timm:NAME"``.
        num_classes: outputs of the classifier head; default: read from the weights.
        task, label: see :class:`PreprocessedClassifier`.
        size: input side length (default: 224 for torchvision, the model's own for timm).

    Returns:
        :class:`PreprocessedClassifier` in eval mode, fed images in [0, 1].
    """
    state = read_state_dict(path, argument)
    num_classes = num_classes or _num_classes(state)
    if arch.startswith("timm:"):
        import timm

        name = arch[len("timm:"):]
        try:
            model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        except RuntimeError as err:
            raise LoadError(f"--arch {arch!r}: {err}") from None
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        size = size or int(cfg.get("input_size", (3, 224, 224))[-1])
    else:
        import torchvision

        try:
            model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        except ValueError as err:
            raise LoadError(f"--arch {arch!r} is not a torchvision model ({err}); use timm:NAME for timm models") from None
        mean, std, size = IMAGENET_MEAN, IMAGENET_STD, size or 224
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[:2])
        raise LoadError(f"{argument} {path!r} does not fit --arch {arch!r}: {detail}") from None
    return PreprocessedClassifier(model, mean, std, size, task=task, label=label).eval()


def load_trained(directory: str, device, argument: str = "--target") -> nn.Module:
    """The model a ``vmd-fast train`` run wrote into ``directory`` (its base target + trained weights)."""
    from safetensors.torch import load_file

    with open(os.path.join(directory, TRAINED_RECORD), encoding="utf-8") as f:
        record = json.load(f)
    base = record["target"]
    model = resolve("target", base["spec"], device, arch=base.get("arch"), num_classes=base.get("num_classes"),
                    task=base.get("task"), label=base.get("label"), argument=argument)
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors")))
    model.trained_info = record
    return model.to(device).eval()


def resolve(role: str, spec: str, device, arch: Optional[str] = None, num_classes: Optional[int] = None,
            task: Optional[str] = None, label: Optional[str] = None, attributes: Optional[Sequence[str]] = None,
            argument: Optional[str] = None) -> nn.Module:
    """The model ``spec`` names, for ``role`` in ``target``, ``editor``, ``generator``, ``clip``.

    Args:
        role: what the model is for (picks the file loader).
        spec: a zoo name, ``package.module:factory`` or a local path.
        device: where to put it.
        arch: the architecture of a weights file: a torchvision / ``timm:`` name (target),
            an open_clip architecture name (clip).
        num_classes, task, label: for a target weights file (see :func:`load_classifier`);
            ``task`` and ``label`` also set those attributes on any target.
        attributes: the attribute names of an AttGAN checkpoint (editor).
        argument: the command-line flag, for messages (default ``--<role>``).

    Returns:
        the module, on ``device``, in eval mode.
    """
    argument = argument or f"--{role}"
    refuse_remote(spec, argument)
    if os.path.isdir(spec) and role == "target" and os.path.exists(os.path.join(spec, TRAINED_RECORD)):
        model = load_trained(spec, device, argument)
    elif looks_like_path(spec):
        if not os.path.exists(spec):
            raise FileNotFoundError(f"{argument} {spec!r}: no such file")
        model = _load_file(role, spec, arch, num_classes, task, label, attributes, argument)
    elif ":" in spec:
        model = load_factory(spec, argument)
    else:
        from vmd_fast import zoo
        from vmd_fast.zoo.registry import recipes

        known = [info["name"] for info in zoo.list()]
        if spec not in known and spec not in recipes():
            raise LoadError(f"{argument} {spec!r} is neither a zoo model ({', '.join(known) or 'none shipped'}), "
                            "a local file nor module:factory")
        model = zoo.load(spec, device=device)
    if role == "target":
        for name, value in (("task", task), ("label", label)):
            if value is not None:
                setattr(model, name, value)
    return model.to(device).eval()


def _load_file(role, path, arch, num_classes, task, label, attributes, argument) -> nn.Module:
    if role == "target":
        if os.path.isdir(path):
            raise LoadError(f"{argument} {path!r} is a directory without {TRAINED_RECORD} (not a `vmd-fast train` output)")
        if arch is None:
            raise LoadError(f"{argument} {path!r} is a weights file: name its architecture with --arch "
                            "(a torchvision name such as resnet50, or timm:NAME)")
        return load_classifier(path, arch, num_classes=num_classes, task=task, label=label, argument=argument)
    if role == "generator":
        from vmd_fast.io.stylegan_pkl import load_stylegan2_pkl

        return load_stylegan2_pkl(path)
    if role == "clip":
        from vmd_fast.io.clip import load_open_clip

        if arch is None:
            raise LoadError(f"{argument} {path!r} is a checkpoint file: name its open_clip architecture with --clip-arch (e.g. ViT-B-32)")
        return load_open_clip(path, arch, argument=argument)
    if role == "editor":
        from vmd_fast.io.attgan import load_attgan

        if not attributes:
            raise LoadError(f"{argument} {path!r} is an AttGAN checkpoint: name its attributes in order with --editor-attributes")
        return load_attgan(path, attributes, argument=argument)
    raise ValueError(f"role must be target, editor, generator or clip, got {role!r}")
