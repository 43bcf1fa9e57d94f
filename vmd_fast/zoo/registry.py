"""The registry of zoo recipes: how each shipped model is built, trained and evaluated.

A recipe module in :mod:`vmd_fast.zoo.recipes` calls :func:`register` at import time;
:func:`recipes` imports every such module, so a new recipe needs no other change.

Conventions every recipe follows:

- ``config`` is JSON-able and complete (``build(config)`` gives the architecture and
  ``train(config)`` the whole training); it contains ``"seed"``, and ``"eval_seed"`` for the
  renders :attr:`Recipe.evaluate` measures on, which no training set shares;
- ``train`` shows a tqdm progress bar and returns ``(module, training_stats)``;
- ``evaluate(module, config)`` measures the metrics on fresh renders drawn from
  ``config["eval_seed"]`` (the checks re-run it with another seed);
- ``checks`` maps a metric to ``(">=" | "<=", threshold)``, the acceptance figure.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Dict, Tuple

from torch import nn

__all__ = ["Recipe", "register", "recipes", "get_recipe", "KINDS"]

KINDS = ("generator", "editor", "clip", "target")

_REGISTRY: Dict[str, "Recipe"] = {}


@dataclass
class Recipe:
    """How to build, train and evaluate one zoo asset.

    Args:
        name: asset name, e.g. ``"smile_classifier"``.
        kind: one of :data:`KINDS`.
        build: config -> the untrained architecture.
        train: config -> (trained module, training stats); shows progress with tqdm.
        evaluate: (module, config) -> metrics measured on fresh seeded renders.
        config: the full default config, JSON-able, with ``"seed"`` and ``"eval_seed"``.
        tiny: overrides of ``config`` for a whole training run in seconds (CI).
        checks: metric -> (``">="`` or ``"<="``, threshold): the acceptance figures.
        metadata: stored in the asset's JSON (e.g. ``task``, ``labels``, ``bias``,
            ``description``, ``tolerances``: metric -> absolute tolerance of the re-check).
        judged_by: other assets ``evaluate`` loads to measure this one (through
            :func:`vmd_fast.zoo.recipes.common.judge`); ``train --all --jobs N`` writes them
            first.
    """

    name: str
    kind: str
    build: Callable[[dict], nn.Module]
    train: Callable[[dict], Tuple[nn.Module, dict]]
    evaluate: Callable[[nn.Module, dict], dict]
    config: dict
    tiny: dict
    checks: Dict[str, Tuple[str, float]]
    metadata: dict = field(default_factory=dict)
    judged_by: Tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(
                f"recipe {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}"
            )
        if "seed" not in self.config:
            raise ValueError(f"recipe {self.name!r}: config must contain 'seed'")
        for metric, (op, _) in self.checks.items():
            if op not in (">=", "<="):
                raise ValueError(f"recipe {self.name!r}: check on {metric!r} must use '>=' or '<='")

    def resolved_config(self, tiny: bool = False, **overrides) -> dict:
        """The config to train with: defaults, then the tiny overrides, then ``overrides``."""
        config = dict(self.config)
        if tiny:
            config.update(self.tiny)
        config.update(overrides)
        return config


def register(recipe: Recipe) -> Recipe:
    """Add a recipe to the registry (a second recipe with the same name is an error)."""
    if recipe.name in _REGISTRY and _REGISTRY[recipe.name] is not recipe:
        raise ValueError(f"a recipe named {recipe.name!r} is already registered")
    _REGISTRY[recipe.name] = recipe
    return recipe


def recipes() -> Dict[str, Recipe]:
    """Every registered recipe by name (imports every module of :mod:`vmd_fast.zoo.recipes`)."""
    package = importlib.import_module("vmd_fast.zoo.recipes")  # the package, not this function
    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(sorted(_REGISTRY.items()))


def get_recipe(name: str) -> Recipe:
    """The recipe called ``name`` (KeyError listing the known names otherwise)."""
    known = recipes()
    if name not in known:
        raise KeyError(f"no zoo recipe named {name!r}; known: {', '.join(known)}")
    return known[name]
