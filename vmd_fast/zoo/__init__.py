"""The model zoo: models trained on the synthetic face world, shipped with the package.

Each asset is ``zoo/assets/NAME.safetensors`` + ``NAME.json`` (recipe config, seed, metrics
measured on fresh renders, SHA-256), reproduced from nothing by its recipe::

    python -m vmd_fast.zoo list
    python -m vmd_fast.zoo train NAME | --all [--tiny] [--out DIR]
    python -m vmd_fast.zoo check [NAME ...]

In Python::

    import vmd_fast.zoo as zoo
    net = zoo.load("smile_classifier")      # eval mode, checksum verified
    [info["name"] for info in zoo.list()]
"""

from vmd_fast.zoo.assets import (
    ASSETS_DIR,
    AssetError,
    CheckReport,
    ChecksumError,
    check_asset,
    list_assets,
    load,
    read_info,
    train_asset,
)
from vmd_fast.zoo.registry import Recipe, get_recipe, recipes, register

list = list_assets  # noqa: A001  (the zoo's own `list`, as in torch.hub.list)

__all__ = [
    "ASSETS_DIR",
    "AssetError",
    "CheckReport",
    "ChecksumError",
    "Recipe",
    "check_asset",
    "get_recipe",
    "list",
    "list_assets",
    "load",
    "read_info",
    "recipes",
    "register",
    "train_asset",
]
