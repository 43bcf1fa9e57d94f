"""Loading models and images from local files: nothing is downloaded, nothing is executed.

- :func:`resolve`: a model named on the command line (zoo name, ``module:factory``, a
  local file) for the role of target, editor, generator or CLIP;
- :func:`load_classifier`: torchvision / timm classifiers from local weights;
- :func:`load_stylegan2_pkl`: StyleGAN2-ADA ``.pkl`` generators through a restricted
  unpickler, mapped onto :class:`vmd_fast.models.stylegan.Generator`;
- :func:`load_open_clip`: open_clip checkpoints from a local path for any architecture;
- :func:`load_attgan`: AttGAN-PyTorch checkpoints mapped onto
  :class:`vmd_fast.models.editor.AttributeEditor`;
- :mod:`vmd_fast.io.images`: image folders in, PNGs out.
"""

from vmd_fast.io.models import LoadError, PreprocessedClassifier, load_classifier, read_state_dict, resolve

__all__ = [
    "LoadError",
    "PreprocessedClassifier",
    "load_attgan",
    "load_classifier",
    "load_open_clip",
    "load_stylegan2_pkl",
    "read_state_dict",
    "resolve",
    "restricted_load",
]


def __getattr__(name):
    # The heavier loaders import on first use (open_clip, the generator).
    if name in ("load_stylegan2_pkl", "restricted_load"):
        from vmd_fast.io import stylegan_pkl

        return getattr(stylegan_pkl, name)
    if name == "load_open_clip":
        from vmd_fast.io.clip import load_open_clip

        return load_open_clip
    if name == "load_attgan":
        from vmd_fast.io.attgan import load_attgan

        return load_attgan
    raise AttributeError(f"module 'vmd_fast.io' has no attribute {name!r}")
