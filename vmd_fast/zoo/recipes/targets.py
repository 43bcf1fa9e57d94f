"""Recipes of the target models to diagnose: classifiers, planted-bias pairs, landmarks, parts.

Every target trains on renders of its own seed and is measured on fresh renders of
``eval_seed`` with independent attributes. A planted-bias target trains on a set where
its spurious attribute agrees with its label with probability ``p``; its balanced twin
(``<name>_balanced``) trains on the same number of independent faces. Both are measured
per (label, spurious) group, and by how often flipping only the spurious attribute of a
face (the renderer's counterfactual) flips the prediction.
"""

from __future__ import annotations

import functools
import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vmd_fast.domains import (
    BINARY_ATTRIBUTES,
    CATEGORICAL_ATTRIBUTES,
    LANDMARK_NAMES,
    PART_NAMES,
    FaceParams,
    as_correlations,
    render,
    sample_params,
)
from vmd_fast.models.targets import build_target, soft_argmax
from vmd_fast.zoo.metrics import (
    binary_accuracy,
    confusion_matrix,
    group_accuracies,
    intersection_over_union,
    landmark_error,
    multiclass_accuracy,
)
from vmd_fast.zoo.registry import Recipe, register

_ARCHITECTURE_KEYS = ("task", "labels", "widths", "residual")
_RENDER_CHUNK = 500


def build(config: dict) -> nn.Module:
    """The untrained target network of a recipe config."""
    return build_target({key: config[key] for key in _ARCHITECTURE_KEYS if key in config})


@functools.lru_cache(maxsize=2)
def _training_pool(
    n: int, seed: int, correlations: Tuple[Tuple[str, str, float], ...]
) -> Dict[str, Tensor]:
    """Rendered training faces, kept as uint8 so that a pool of tens of thousands fits in
    memory; cached so that recipes with the same training set render it once."""
    params = sample_params(n, torch.Generator().manual_seed(seed), as_correlations(correlations))
    images = torch.empty(n, 3, 64, 64, dtype=torch.uint8)
    segmentation = torch.empty(n, 64, 64, dtype=torch.uint8)
    landmarks = torch.empty(n, len(LANDMARK_NAMES), 2)
    for start in tqdm(range(0, n, _RENDER_CHUNK), desc=f"render {n} faces", leave=False):
        out = render(params[start : start + _RENDER_CHUNK])
        stop = start + out.images.shape[0]
        images[start:stop] = (out.images * 255).round().to(torch.uint8)
        segmentation[start:stop] = out.segmentation.to(torch.uint8)
        landmarks[start:stop] = out.landmarks
    return {
        "params": params,
        "images": images,
        "segmentation": segmentation,
        "landmarks": landmarks,
    }


def _targets(config: dict, params: FaceParams, landmarks: Tensor, segmentation: Tensor) -> Tensor:
    """The supervision of a batch for the recipe's task."""
    task = config["task"]
    if task == "binary":
        return getattr(params, config["labels"][0]).unsqueeze(1)
    if task == "multiclass":
        return getattr(params, config["attribute"])
    if task == "attributes":
        return torch.stack([getattr(params, name) for name in config["labels"]], dim=1)
    if task == "keypoints":
        return landmarks
    return segmentation.long()


def _soft_dice_loss(logits: Tensor, target: Tensor) -> Tensor:
    """1 - mean soft Dice over the parts present in the batch.

    Cross-entropy alone is dominated by the large parts (background, skin, hair) and
    learns the small ones (eyes, brows, earrings) last; Dice weighs every part equally,
    as mIoU does.
    """
    prob = logits.softmax(dim=1)  # (N, P, H, W)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(prob.dtype)
    intersection = (prob * onehot).sum(dim=(0, 2, 3))
    total = prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3))
    present = onehot.sum(dim=(0, 2, 3)) > 0
    dice = (2 * intersection + 1.0) / (total + 1.0)
    return 1.0 - dice[present].mean()


def _loss(config: dict, module: nn.Module, images: Tensor, target: Tensor) -> Tensor:
    task = config["task"]
    output = module(images)
    if task in ("binary", "attributes"):
        return F.binary_cross_entropy_with_logits(output, target)
    if task == "multiclass":
        return F.cross_entropy(output, target)
    if task == "segmentation":
        return F.cross_entropy(output, target) + _soft_dice_loss(output, target)
    # integral (soft-argmax) regression of the landmarks, in pixels
    return F.smooth_l1_loss(soft_argmax(output, stride=2), target)


def train(config: dict, name: str = "target") -> Tuple[nn.Module, dict]:
    """Train a target from nothing on its seeded training renders (AdamW, one-cycle LR)."""
    torch.manual_seed(config["seed"])
    module = build(config)
    correlations = tuple(tuple(c) for c in config.get("correlations", ()))
    pool = _training_pool(config["n_train"], config["seed"], correlations)
    n, batch_size = config["n_train"], config["batch_size"]
    steps_per_epoch = math.ceil(n / batch_size)
    total = config["epochs"] * steps_per_epoch
    optimizer = torch.optim.AdamW(
        module.parameters(), lr=config["lr"], weight_decay=config["weight_decay"]
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config["lr"], total_steps=total, pct_start=0.15
    )
    shuffle = torch.Generator().manual_seed(config["seed"] + 1)
    module.train()
    losses = []
    with tqdm(total=total, desc=f"train {name}", leave=False) as progress:
        for _ in range(config["epochs"]):
            order = torch.randperm(n, generator=shuffle)
            for start in range(0, n, batch_size):
                index = order[start : start + batch_size]
                images = pool["images"][index].float() / 255.0
                target = _targets(
                    config,
                    pool["params"][index],
                    pool["landmarks"][index],
                    pool["segmentation"][index],
                )
                loss = _loss(config, module, images, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                losses.append(loss.item())
                progress.update()
                progress.set_postfix(loss=f"{losses[-1]:.4f}")
    module.eval()
    tail = losses[-max(1, steps_per_epoch // 4) :]
    return module, {
        "steps": total,
        "images_seen": total * batch_size,
        "final_loss": sum(tail) / len(tail),
    }


def _predict_batches(module: nn.Module, params: FaceParams):
    """Yield ``(params, render, output)`` over fresh faces in chunks."""
    for start in range(0, len(params), _RENDER_CHUNK):
        chunk = params[start : start + _RENDER_CHUNK]
        out = render(chunk)
        yield chunk, out, module(out.images)


def evaluate(module: nn.Module, config: dict) -> dict:
    """Metrics of a target on ``eval_n`` fresh renders of ``eval_seed`` (independent attributes)."""
    task = config["task"]
    params = sample_params(config["eval_n"], torch.Generator().manual_seed(config["eval_seed"]))
    module.eval()
    if task == "binary":
        label = config["labels"][0]
        logits = torch.cat([output for _, _, output in _predict_batches(module, params)])
        labels = getattr(params, label)
        metrics = {"accuracy": binary_accuracy(logits, labels)}
        spurious = config.get("spurious")
        if spurious:
            correct = (logits.reshape(-1) > 0).float() == labels
            metrics.update(group_accuracies(correct, labels, getattr(params, spurious)))
            flipped = params.replace(**{spurious: 1.0 - getattr(params, spurious)})
            flipped_logits = torch.cat(
                [output for _, _, output in _predict_batches(module, flipped)]
            )
            metrics["spurious_flip_rate"] = float(
                ((logits > 0) != (flipped_logits > 0)).float().mean()
            )
        return metrics
    if task == "multiclass":
        attribute = config["attribute"]
        logits = torch.cat([output for _, _, output in _predict_batches(module, params)])
        labels = getattr(params, attribute)
        per_class = {
            cls: float((logits.argmax(1)[labels == k] == k).float().mean())
            for k, cls in enumerate(CATEGORICAL_ATTRIBUTES[attribute])
        }
        return {"accuracy": multiclass_accuracy(logits, labels), "per_class_accuracy": per_class}
    if task == "attributes":
        logits = torch.cat([output for _, _, output in _predict_batches(module, params)])
        per_attribute = {
            name: binary_accuracy(logits[:, k], getattr(params, name))
            for k, name in enumerate(config["labels"])
        }
        return {
            "min_accuracy": min(per_attribute.values()),
            "mean_accuracy": sum(per_attribute.values()) / len(per_attribute),
            "accuracy": per_attribute,
        }
    if task == "keypoints":
        errors = torch.cat(
            [
                landmark_error(soft_argmax(output, stride=2), out.landmarks)
                for _, out, output in _predict_batches(module, params)
            ]
        )  # (N, K)
        return {
            "mean_error_px": float(errors.mean()),
            "pck_2px": float((errors <= 2.0).float().mean()),
            "per_landmark_error_px": {
                name: float(errors[:, k].mean()) for k, name in enumerate(config["labels"])
            },
        }
    confusion = sum(
        confusion_matrix(output.argmax(1), out.segmentation, len(config["labels"]))
        for _, out, output in _predict_batches(module, params)
    )
    iou = intersection_over_union(confusion, config["labels"])
    pixel_accuracy = float(confusion.diagonal().sum() / confusion.sum())
    return {"mIoU": iou.pop("mIoU"), "pixel_accuracy": pixel_accuracy, "iou": iou}


# ---------------------------------------------------------------------------------------
# The recipes.

_TRAINING = {"batch_size": 128, "lr": 3e-3, "weight_decay": 1e-4, "storage_dtype": "float16"}
_TINY = {"n_train": 64, "epochs": 1, "batch_size": 32, "eval_n": 64}


def _register(
    name: str, config: dict, checks: dict, metadata: dict, tiny: Optional[dict] = None
) -> Recipe:
    config = {**_TRAINING, **config}
    return register(
        Recipe(
            name=name,
            kind="target",
            build=build,
            train=functools.partial(train, name=name),
            evaluate=evaluate,
            config=config,
            tiny={**_TINY, **(tiny or {})},
            checks=checks,
            metadata={"task": config["task"], "labels": list(config["labels"]), **metadata},
        )
    )


# The unbiased classifiers share one training set (seed 11), rendered once per `train --all`.
_CLASSIFIER = {
    "widths": [24, 48, 64, 96],
    "residual": 0,
    "n_train": 20000,
    "epochs": 2,
    "eval_n": 2000,
}
_TINY_CLASSIFIER = {"widths": [8, 8, 8, 8]}

# Binary classifiers of single attributes; epochs by how subtle the attribute is.
for _name, _label, _epochs in (
    ("smile_classifier", "smiling", 3),
    ("eyeglasses_classifier", "eyeglasses", 1),
    ("male_classifier", "male", 1),
    ("hat_classifier", "hat", 1),
    ("beard_classifier", "beard", 1),
    ("bangs_classifier", "bangs", 2),
):
    _register(
        _name,
        {
            "task": "binary",
            "labels": [_label],
            "seed": 11,
            "eval_seed": 101,
            **_CLASSIFIER,
            "epochs": _epochs,
        },
        checks={"accuracy": (">=", 0.95)},
        metadata={"description": f"binary classifier of '{_label}' (logit > 0: present)"},
        tiny=_TINY_CLASSIFIER,
    )

_register(
    "hair_color_classifier",
    {
        "task": "multiclass",
        "labels": list(CATEGORICAL_ATTRIBUTES["hair_color"]),
        "attribute": "hair_color",
        "seed": 11,
        "eval_seed": 101,
        **_CLASSIFIER,
    },
    checks={"accuracy": (">=", 0.95)},
    metadata={"description": "hair colour classifier (logits over the hair colour classes)"},
    tiny=_TINY_CLASSIFIER,
)

_register(
    "attribute_classifier",
    {
        "task": "attributes",
        "labels": list(BINARY_ATTRIBUTES),
        "seed": 11,
        "eval_seed": 101,
        **_CLASSIFIER,
        "widths": [32, 64, 96, 128],
        "residual": 1,
        "epochs": 4,
        "eval_n": 4000,
    },
    checks={"min_accuracy": (">=", 0.95)},
    metadata={
        "description": "multi-label classifier of every binary attribute (one logit each); "
        "the reference that checks the generator's and the editor's samples"
    },
    tiny=_TINY_CLASSIFIER,
)

# Planted-bias classifiers and their balanced twins. The label is subtler than the spurious
# attribute, so that the shortcut is taken. Group accuracies are measured on about 1000
# faces per group: the re-check tolerates 4 standard errors.
_GROUP_TOLERANCES = {
    metric: 0.06
    for metric in (
        "label=0,spurious=0",
        "label=0,spurious=1",
        "label=1,spurious=0",
        "label=1,spurious=1",
        "aligned_accuracy",
        "conflicting_accuracy",
        "bias_gap",
        "worst_group_accuracy",
        "spurious_flip_rate",
    )
}
_BIASES = (
    ("smile_bias_hat", "smiling", "hat", 0.95),
    ("earrings_bias_eyeglasses", "earrings", "eyeglasses", 0.95),
    ("bangs_bias_beard", "bangs", "beard", 0.95),
)
for _name, _label, _spurious, _p in _BIASES:
    _bias = {"label": _label, "spurious": _spurious, "p": _p}
    _common = {
        "task": "binary",
        "labels": [_label],
        "spurious": _spurious,
        "seed": 12,
        "eval_seed": 102,
        **_CLASSIFIER,
        "eval_n": 4000,
    }
    _register(
        _name,
        {**_common, "correlations": [[_label, _spurious, _p]]},
        checks={"bias_gap": (">=", 0.10)},
        metadata={
            "bias": _bias,
            "twin": f"{_name}_balanced",
            "description": f"classifier of '{_label}' trained where P({_spurious} = {_label}) = {_p}",
            "tolerances": _GROUP_TOLERANCES,
        },
        tiny=_TINY_CLASSIFIER,
    )
    _register(
        f"{_name}_balanced",
        {**_common, "correlations": []},
        checks={"accuracy": (">=", 0.95), "bias_gap": ("<=", 0.05)},
        metadata={
            "bias": None,
            "twin_of": _name,
            "description": f"classifier of '{_label}' trained with '{_spurious}' independent "
            f"(the balanced twin of {_name})",
            "tolerances": _GROUP_TOLERANCES,
        },
        tiny=_TINY_CLASSIFIER,
    )

_DENSE = {"widths": [24, 48, 64], "seed": 13, "eval_seed": 103, "n_train": 8000, "eval_n": 1000}
_TINY_DENSE = {"widths": [8, 8, 8]}

_register(
    "landmark_detector",
    {"task": "keypoints", "labels": list(LANDMARK_NAMES), **_DENSE, "epochs": 2},
    checks={"mean_error_px": ("<=", 2.0)},
    metadata={
        "description": "landmark heatmaps at 32x32; keypoints(x) gives (N, K, 2) pixel (x, y)",
        "tolerances": {"mean_error_px": 0.1},
    },
    tiny=_TINY_DENSE,
)

_register(
    "part_segmenter",
    # small batches: the thin parts (brows, frames, earrings) need many updates
    {
        "task": "segmentation",
        "labels": list(PART_NAMES),
        **_DENSE,
        "epochs": 4,
        "batch_size": 32,
        "lr": 5e-3,
    },
    checks={"mIoU": (">=", 0.8)},
    metadata={"description": "part segmentation logits (N, P, 64, 64) over the renderer's parts"},
    tiny=_TINY_DENSE,
)
