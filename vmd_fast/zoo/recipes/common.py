"""What the generative recipes share: the one-cycle optimisation loop on fresh batches, and
the frozen attribute classifier (AttGAN's :math:`C`) some of them train against."""

from __future__ import annotations

import json
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from tqdm import tqdm


def one_cycle_training(
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[], Tensor],
    steps: int,
    lr: float,
    warmup_fraction: float,
    desc: str,
    after_step: Optional[Callable[[], None]] = None,
) -> List[float]:
    """Run ``steps`` optimisation steps under a one-cycle schedule (warm-up, cosine decay).

    Args:
        optimizer: over the parameters being trained.
        loss_fn: draws a fresh batch and returns its scalar loss (called once a step).
        steps: number of steps.
        lr: peak learning rate.
        warmup_fraction: fraction of the steps spent warming up.
        desc: label of the progress bar.
        after_step: called after every optimiser step (e.g. to clamp a parameter).

    Returns:
        the loss of every step.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([3.0]))
        >>> losses = one_cycle_training(torch.optim.Adam([w]), lambda: (w ** 2).sum(),
        ...                             steps=50, lr=0.5, warmup_fraction=0.1, desc="toy")
        >>> losses[-1] < losses[0]
        True
    """
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=steps, pct_start=warmup_fraction,
        cycle_momentum=False,
    )
    losses = []
    progress = tqdm(range(steps), desc=desc, unit="step")
    for _ in progress:
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if after_step is not None:
            after_step()
        losses.append(loss.item())
        progress.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


def final_loss(losses: List[float]) -> float:
    """Mean loss of the last 5 % of the steps (at least one), rounded for the metadata."""
    tail = losses[-max(1, len(losses) // 20):]
    return round(sum(tail) / len(tail), 5)


ATTRIBUTE_CLASSIFIER = "attribute_classifier"
"""The zoo asset that judges the generator's samples and the editor's edits."""

CRITIC_OVERRIDES: Dict[str, object] = {"seed": 21, "eval_seed": 121}
"""How the recipes' own classifier differs from the shipped judge: another seed (so other
training renders and another initialisation); everything else is that recipe's config."""


_JUDGES_DIR: ContextVar[Optional[Path]] = ContextVar("judges_dir", default=None)


@contextmanager
def judges_from(assets_dir) -> Iterator[None]:
    """Within the block, :func:`judge` prefers the assets in ``assets_dir`` (a training run's
    output folder, or the folder being checked) to the package's."""
    token = _JUDGES_DIR.set(None if assets_dir is None else Path(assets_dir))
    try:
        yield
    finally:
        _JUDGES_DIR.reset(token)


def judge(name: str = ATTRIBUTE_CLASSIFIER) -> torch.nn.Module:
    """The zoo asset that measures another asset (the ``attribute_classifier``).

    Taken from the folder set by :func:`judges_from` when it holds one, so that a run
    training every asset from nothing into a new folder judges with the classifier it
    trained there; otherwise the package's.
    """
    from vmd_fast.zoo.assets import asset_paths, load

    folder = _JUDGES_DIR.get()
    if folder is not None and asset_paths(name, folder)[1].exists():
        return load(name, assets_dir=folder)
    return load(name)


@lru_cache(maxsize=4)
def _trained_critic(key: str) -> torch.nn.Module:
    from vmd_fast.zoo.recipes import targets
    from vmd_fast.zoo.registry import get_recipe

    config = {**get_recipe(ATTRIBUTE_CLASSIFIER).config, **json.loads(key)}
    C, _ = targets.train(config, name="recipe's attribute classifier")
    return C.eval().requires_grad_(False)


def attribute_critic(
    overrides: Dict[str, object], attributes: Sequence[str]
) -> Tuple[torch.nn.Module, Tensor]:
    """A frozen attribute classifier trained from nothing on renders, as a training signal.

    It is the ``attribute_classifier`` recipe with ``overrides`` (by default
    :data:`CRITIC_OVERRIDES`: another seed), never the shipped ``attribute_classifier``
    asset, which stays an independent judge of what the trained network draws. One process
    trains it once per distinct ``overrides`` (``train --all`` shares it between recipes).

    Args:
        overrides: replaced fields of the ``attribute_classifier`` recipe's config.
        attributes: the attributes to read from its logits, in this order.

    Returns:
        the classifier (eval mode, parameters without gradients) and the indices ``(A,)``
        of ``attributes`` among its logits.
    """
    from vmd_fast.zoo.registry import get_recipe

    C = _trained_critic(json.dumps(dict(overrides), sort_keys=True))
    labels = list({**get_recipe(ATTRIBUTE_CLASSIFIER).config, **overrides}["labels"])
    missing = [n for n in attributes if n not in labels]
    if missing:
        raise ValueError(f"attributes: {missing} are not among the classifier's labels {labels}")
    return C, torch.tensor([labels.index(n) for n in attributes])
