"""open_clip models from a local checkpoint, for any architecture open_clip knows by name.

The architecture is built with ``open_clip.create_model(arch, pretrained=None)`` (random
weights, nothing fetched) and the checkpoint is loaded with ``open_clip.load_checkpoint``
(``torch.load(weights_only=True)`` or safetensors). Architectures whose text tower or
tokenizer is a Hugging Face model (``hf_model_name`` / ``hf_tokenizer_name`` in their
config) are refused: building them would download from the Hub. The model carries its
tokenizer as ``model.tokenizer`` (the command line passes it to ZOOM).
"""

from __future__ import annotations

import os

from torch import nn

from vmd_fast.io.models import LoadError, refuse_remote


def load_open_clip(path: str, arch: str, argument: str = "--clip") -> nn.Module:
    """An open_clip model of architecture ``arch`` with the weights of the local file ``path``.

    Args:
        path: a checkpoint file (``open_clip_pytorch_model.bin``, ``.pt``, ``.safetensors``).
        arch: an open_clip architecture name (``open_clip.list_models()``, e.g. ``"ViT-B-32"``).
        argument: the command-line flag, for messages.

    Returns:
        the model in eval mode, ``model.visual.preprocess_cfg`` set by open_clip, and
        ``model.tokenizer`` its tokenizer.
    """
    import open_clip
    from open_clip.factory import load_checkpoint

    refuse_remote(path, argument)
    refuse_remote(arch, "--clip-arch")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{argument} {path!r}: no such file")
    config = open_clip.get_model_config(arch)
    if config is None:
        raise LoadError(f"--clip-arch {arch!r} is not an open_clip architecture (see open_clip.list_models())")
    text = config.get("text_cfg", {})
    if text.get("hf_model_name") or text.get("hf_tokenizer_name"):
        raise LoadError(f"--clip-arch {arch!r} uses a Hugging Face text model, which open_clip would download; "
                        "only architectures with open_clip's own text tower are supported offline")
    model = open_clip.create_model(arch, pretrained=None, device="cpu")
    try:
        load_checkpoint(model, path, strict=True, weights_only=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[:2])
        raise LoadError(f"{argument} {path!r} does not fit --clip-arch {arch!r}: {detail}") from None
    model.tokenizer = open_clip.get_tokenizer(arch)
    return model.eval().requires_grad_(False)
