"""The optimisation loop the generative recipes share: fresh batches, one-cycle learning rate."""

from __future__ import annotations

from typing import Callable, List, Optional

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
