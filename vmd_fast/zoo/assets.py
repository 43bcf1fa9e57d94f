"""Zoo assets on disk: ``NAME.safetensors`` (the state dict) + ``NAME.json`` (its metadata).

Nothing is ever unpickled: weights are safetensors, metadata is JSON, and the SHA-256 of the
weights file recorded in the JSON is verified before the weights are read.

The JSON holds ``name``, ``kind``, ``format_version``, ``config`` (what ``build`` and
``train`` read), ``seed``, ``metrics`` (measured on fresh renders after storage rounding),
``checks``, ``training`` (time and training statistics), ``sha256``, ``bytes``, the
``torch`` and ``vmd_fast`` versions, and the recipe's metadata (``task``, ``labels``,
``bias``, ...).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Union

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vmd_fast.zoo.registry import Recipe, get_recipe

__all__ = [
    "ASSETS_DIR",
    "FORMAT_VERSION",
    "AssetError",
    "ChecksumError",
    "CheckReport",
    "asset_paths",
    "read_info",
    "load",
    "list_assets",
    "save_asset",
    "round_to_storage",
    "train_asset",
    "check_asset",
    "flatten_metrics",
    "failed_checks",
]

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
FORMAT_VERSION = 1
_CHECK_SEED_OFFSET = 1000  # the re-check draws renders no recipe evaluated or trained on

PathLike = Union[str, Path]


class AssetError(RuntimeError):
    """A zoo asset is missing, malformed or does not match its recipe."""


class ChecksumError(AssetError):
    """The weights file does not have the SHA-256 recorded in its JSON."""


def _directory(assets_dir: Optional[PathLike]) -> Path:
    return Path(assets_dir) if assets_dir is not None else ASSETS_DIR


def asset_paths(name: str, assets_dir: Optional[PathLike] = None):
    """``(weights, metadata)`` paths of asset ``name``."""
    directory = _directory(assets_dir)
    return directory / f"{name}.safetensors", directory / f"{name}.json"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_info(name: str, assets_dir: Optional[PathLike] = None) -> dict:
    """The JSON metadata of asset ``name`` (AssetError naming the command to train it)."""
    weights, meta = asset_paths(name, assets_dir)
    if not meta.exists() or not weights.exists():
        raise AssetError(
            f"zoo asset {name!r} is not in {meta.parent}; "
            f"train it with `python -m vmd_fast.zoo train {name}`"
        )
    info = json.loads(meta.read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise AssetError(
            f"{meta}: format_version {info.get('format_version')} is not {FORMAT_VERSION}"
        )
    if info.get("name") != name:
        raise AssetError(f"{meta} describes {info.get('name')!r}, not {name!r}")
    return info


def flatten_metrics(metrics: dict, prefix: str = "") -> Dict[str, float]:
    """Numeric leaves of a (possibly nested) metrics dict, keys joined with ``/``.

    Example:
        >>> flatten_metrics({"accuracy": 0.9, "per_group": {"a": 1.0}, "note": "x"})
        {'accuracy': 0.9, 'per_group/a': 1.0}
    """
    flat: Dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


def failed_checks(metrics: dict, checks: dict) -> List[str]:
    """Descriptions of the checks ``metrics`` does not meet (a missing metric fails).

    Example:
        >>> failed_checks({"accuracy": 0.9}, {"accuracy": (">=", 0.95)})
        ['accuracy = 0.9 does not meet >= 0.95']
    """
    flat = flatten_metrics(metrics)
    failures = []
    for metric, (op, threshold) in checks.items():
        value = flat.get(metric)
        if value is None or math.isnan(value):
            failures.append(f"{metric} was not measured")
        elif (op == ">=" and value < threshold) or (op == "<=" and value > threshold):
            failures.append(f"{metric} = {value:.4g} does not meet {op} {threshold}")
    return failures


def load(
    name: str, device: Union[str, torch.device] = "cpu", assets_dir: Optional[PathLike] = None
) -> nn.Module:
    """A shipped model, ready to use: built by its recipe, checksum verified, eval mode.

    Args:
        name: the asset name (see :func:`list_assets`).
        device: where to put the module.
        assets_dir: folder of the assets (default: the package's ``zoo/assets``).

    Returns:
        The module in eval mode with ``requires_grad`` off, and ``module.zoo_info`` set
        to the asset's JSON metadata.

    Raises:
        AssetError: the asset is missing (the message names the command that trains it)
            or does not fit its recipe's architecture.
        ChecksumError: the weights file's SHA-256 differs from the one in the JSON.
    """
    info = read_info(name, assets_dir)
    weights, _ = asset_paths(name, assets_dir)
    digest = _sha256(weights)
    if digest != info["sha256"]:
        raise ChecksumError(
            f"checksum mismatch for zoo asset {name!r}: {weights} has sha256 {digest}, "
            f"its JSON records {info['sha256']}; the file is corrupt or was replaced. "
            f"Retrain it with `python -m vmd_fast.zoo train {name}`"
        )
    recipe = get_recipe(name)
    module = recipe.build(info["config"])
    reference = module.state_dict()
    state = load_file(str(weights))
    if set(state) != set(reference):
        missing, unexpected = set(reference) - set(state), set(state) - set(reference)
        raise AssetError(
            f"zoo asset {name!r} does not fit its recipe's architecture "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    module.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
    module.eval().to(device)
    for parameter in module.parameters():
        parameter.requires_grad_(False)
    module.zoo_info = info
    return module


def list_assets(assets_dir: Optional[PathLike] = None) -> List[dict]:
    """The metadata of every asset in the folder (name, kind, metrics, bytes, ...), by name."""
    directory = _directory(assets_dir)
    infos = []
    for meta in sorted(directory.glob("*.json")):
        info = json.loads(meta.read_text())
        if info.get("format_version") == FORMAT_VERSION:
            infos.append(info)
    return infos


def _storage_state(module: nn.Module, dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """The state dict as stored: floating tensors cast to ``dtype``, contiguous, on the CPU."""
    return {
        key: (value.to(dtype) if value.is_floating_point() else value).detach().cpu().contiguous()
        for key, value in module.state_dict().items()
    }


def round_to_storage(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Round the module's floating state to ``dtype`` and back, in place, so that what is
    evaluated is exactly what is shipped."""
    reference = module.state_dict()
    module.load_state_dict(
        {k: v.to(reference[k].dtype) for k, v in _storage_state(module, dtype).items()}
    )
    return module


def save_asset(
    recipe: Recipe,
    module: nn.Module,
    config: dict,
    metrics: dict,
    training: dict,
    out_dir: Optional[PathLike] = None,
) -> dict:
    """Write ``NAME.safetensors`` and ``NAME.json``; returns the JSON dict.

    The floating tensors are stored in ``config.get("storage_dtype", "float16")``.
    """
    import vmd_fast

    dtype = getattr(torch, config.get("storage_dtype", "float16"))
    weights, meta = asset_paths(recipe.name, out_dir)
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        _storage_state(module, dtype),
        str(weights),
        # One entry: safetensors writes a map's keys in no fixed order, and the checksum
        # of a retrained asset should only change when its weights do.
        metadata={"vmd_fast_asset": json.dumps({"name": recipe.name, "format_version": FORMAT_VERSION})},
    )
    info = {
        "name": recipe.name,
        "kind": recipe.kind,
        "format_version": FORMAT_VERSION,
        "config": config,
        "seed": config["seed"],
        "metrics": metrics,
        "checks": {metric: list(check) for metric, check in recipe.checks.items()},
        "training": training,
        "sha256": _sha256(weights),
        "bytes": weights.stat().st_size,
        "torch": torch.__version__.split("+")[0],
        "vmd_fast": vmd_fast.__version__,
        **recipe.metadata,
    }
    meta.write_text(json.dumps(info, indent=2) + "\n")
    return info


def train_asset(
    name: str, tiny: bool = False, out_dir: Optional[PathLike] = None, **overrides
) -> dict:
    """Train asset ``name`` from nothing, measure it as stored, and write it.

    Args:
        name: a recipe name.
        tiny: use the recipe's tiny config (a whole run in seconds; metrics not meaningful).
        out_dir: folder to write to (default: the package's assets folder).
        **overrides: config entries to override.

    Returns:
        The asset's JSON dict (its ``metrics`` are measured after rounding to storage).
    """
    from vmd_fast.zoo.recipes.common import judges_from

    recipe = get_recipe(name)
    config = recipe.resolved_config(tiny=tiny, **overrides)
    start = time.perf_counter()
    module, training = recipe.train(config)
    seconds = time.perf_counter() - start
    round_to_storage(module, getattr(torch, config.get("storage_dtype", "float16")))
    module.eval()
    with torch.no_grad(), judges_from(out_dir):
        metrics = recipe.evaluate(module, config)
    training = {"seconds": round(seconds, 1), "threads": torch.get_num_threads(), **training}
    info = save_asset(recipe, module, config, metrics, training, out_dir)
    logger.info("trained %s in %.1f s: %s", name, seconds, flatten_metrics(metrics))
    return info


@dataclass
class CheckReport:
    """The outcome of re-measuring a shipped asset (:func:`check_asset`).

    Attributes:
        name: the asset.
        stored: its metrics from the JSON (flattened).
        measured: the metrics measured now on fresh renders (flattened).
        drift: the metrics re-measured outside their tolerance of the stored value.
        missed_checks: the checks the new measurement does not meet.
    """

    name: str
    stored: Dict[str, float]
    measured: Dict[str, float]
    drift: List[str] = field(default_factory=list)
    missed_checks: List[str] = field(default_factory=list)

    @property
    def failures(self) -> List[str]:
        return self.drift + self.missed_checks

    @property
    def ok(self) -> bool:
        return not self.failures


def _tolerance(info: dict, metric: str, stored: float) -> float:
    """Absolute tolerance of a re-measured metric: the recipe's, else 0.03 or 5 % of it.

    A recipe's tolerance for ``"name"`` also covers the per-attribute ``"name/<attribute>"``.
    """
    tolerances = info.get("tolerances", {})
    for key in (metric, metric.split("/", 1)[0]):
        if key in tolerances:
            return float(tolerances[key])
    return max(0.03, 0.05 * abs(stored))


def check_asset(
    name: str,
    assets_dir: Optional[PathLike] = None,
    eval_seed: Optional[int] = None,
    **overrides,
) -> CheckReport:
    """Load a shipped asset (checksum verified), re-measure it on fresh renders, compare.

    Args:
        name: the asset.
        assets_dir: its folder (default: the package's).
        eval_seed: the seed of the fresh renders (default: the stored ``eval_seed`` + 1000).
        **overrides: config entries to override for the evaluation.

    Returns:
        A :class:`CheckReport`; ``report.ok`` when every stored metric is reproduced within
        its tolerance and every check is met by the new measurement.
    """
    module = load(name, assets_dir=assets_dir)
    info = module.zoo_info
    config = dict(info["config"])
    if "eval_seed" in config:
        config["eval_seed"] = (
            eval_seed if eval_seed is not None else config["eval_seed"] + _CHECK_SEED_OFFSET
        )
    config.update(overrides)
    from vmd_fast.zoo.recipes.common import judges_from

    with torch.no_grad(), judges_from(assets_dir):
        measured = flatten_metrics(get_recipe(name).evaluate(module, config))
    stored = flatten_metrics(info["metrics"])
    report = CheckReport(name, stored, measured)
    for metric, value in stored.items():
        if metric not in measured:
            report.drift.append(f"{metric} is stored but was not re-measured")
            continue
        tolerance = _tolerance(info, metric, value)
        if abs(measured[metric] - value) > tolerance:
            report.drift.append(
                f"{metric}: re-measured {measured[metric]:.4g}, stored {value:.4g} (tolerance {tolerance:.3g})"
            )
    checks = {metric: tuple(check) for metric, check in info.get("checks", {}).items()}
    report.missed_checks.extend(failed_checks(measured, checks))
    return report
