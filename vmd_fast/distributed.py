"""Diagnosis and training on many processes, on PyTorch's own distributed stack.

Nothing here schedules work itself: ``torchrun`` starts the processes (one node or many,
through its rendezvous), :mod:`torch.distributed` connects them, and this module only says
which part of the work is a rank's and puts the parts back together:

* :func:`shard` gives each rank one contiguous block of the *global* batch indices, so a
  batch holds the same images, latents and per-batch seeds as in a single process, and its
  result is the same;
* :func:`gather_rows` concatenates the ranks' per-image rows in rank order, i.e. in
  global image order, so every rank ends with the result of a single process;
* :func:`launch` (used by ``vmd-fast diagnose`` and ``train``) joins the process group that
  ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR``) with NCCL on CUDA and gloo on the CPU, and leaves it at the end.

When :mod:`torch.distributed` is not initialised every function is the single-process
identity, so the callers need no ``if``.

Example:
    >>> shard(5, rank=0, world_size=2), shard(5, rank=1, world_size=2)
    (range(0, 2), range(2, 5))
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Dict, Iterator, Optional, Union

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of ranks (1 when not distributed)."""
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes reports, checkpoints and progress (rank 0)."""
    return get_rank() == 0


def shard(n: int, rank: Optional[int] = None, world_size: Optional[int] = None) -> range:
    """The contiguous block of ``range(n)`` that belongs to ``rank``.

    Blocks differ in length by at most one and, concatenated in rank order, give
    ``range(n)`` back; a rank may get an empty block when ``n < world_size``.

    Args:
        n: the number of work items (batches), >= 0.
        rank, world_size: default: this process's.

    Returns:
        ``range(n * rank // world_size, n * (rank + 1) // world_size)``.
    """
    rank = get_rank() if rank is None else rank
    world_size = get_world_size() if world_size is None else world_size
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0, got {n!r}")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


def _transport_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo (and mpi) move CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Concatenate every rank's rows of each tensor along dim 0, in rank order.

    Ranks may hold different numbers of rows (and none at all, with no entry): the rows
    are padded to the longest block for ``all_gather`` and trimmed after, so the result
    is exactly the rank-ordered concatenation, on every rank. Shapes beyond dim 0 and
    dtypes must agree between ranks; ``bool`` travels as ``uint8`` and comes back ``bool``.

    Args:
        tensors: name -> (N_rank, ...) tensor.

    Returns:
        name -> (sum of N_rank, ...) tensor on the device of this rank's input (CPU for a
        name this rank did not have).
    """
    if not is_distributed():
        return dict(tensors)
    layouts = [None] * get_world_size()
    dist.all_gather_object(layouts, {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in tensors.items()})
    names = sorted({k for layout in layouts for k in layout})
    transport = _transport_device()
    out = {}
    for name in names:
        shapes = {layout[name][0][1:] for layout in layouts if name in layout}
        dtypes = {layout[name][1] for layout in layouts if name in layout}
        if len(shapes) != 1 or len(dtypes) != 1:
            raise ValueError(f"gather_rows: {name!r} has shapes {shapes} and dtypes {dtypes} on different ranks")
        tail, dtype = shapes.pop(), getattr(torch, dtypes.pop())
        rows = [layout[name][0][0] if name in layout else 0 for layout in layouts]
        wire = torch.uint8 if dtype == torch.bool else dtype
        local = tensors.get(name, torch.empty((0, *tail), dtype=dtype))
        padded = torch.zeros((max(rows), *tail), dtype=wire, device=transport)
        padded[: local.shape[0]] = local.to(transport, wire)
        parts = [torch.empty_like(padded) for _ in rows]
        dist.all_gather(parts, padded)
        joined = torch.cat([part[:count] for part, count in zip(parts, rows)]).to(dtype)
        out[name] = joined.to(local.device)
    return out


def check_same(value: str, what: str) -> None:
    """Raise on every rank unless all ranks hold the same ``value`` (e.g. a run's checksum).

    Args:
        value: a string that must agree (a hash of the models and settings).
        what: what it stands for, for the error message.
    """
    if not is_distributed():
        return
    values = [None] * get_world_size()
    dist.all_gather_object(values, value)
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise ValueError(f"ranks {differ} were given other {what} than rank 0; every rank must load the same "
                         "models and settings (seed any random initialisation)")


def all_reduce_mean(values: Dict[str, float]) -> Dict[str, float]:
    """The mean over ranks of each float (e.g. per-epoch losses); identity on one process."""
    if not is_distributed() or not values:
        return dict(values)
    names = sorted(values)
    packed = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=_transport_device())
    dist.all_reduce(packed)
    return {k: float(v) / get_world_size() for k, v in zip(names, packed.cpu())}


def barrier() -> None:
    """Wait for every rank (no-op on one process)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def launch(device: Union[str, torch.device, None] = None) -> Iterator[torch.device]:
    """Join the process group ``torchrun`` describes, for the duration of the block.

    With ``WORLD_SIZE`` > 1 in the environment and no group yet, initialises one (NCCL when
    ``device`` is CUDA, otherwise gloo; the rendezvous comes from ``MASTER_ADDR`` /
    ``MASTER_PORT`` or torchrun's ``--rdzv-endpoint``), and destroys it on the way out.
    A CUDA device becomes ``cuda:LOCAL_RANK``. Without torchrun it yields ``device``.

    Args:
        device: the device the command asked for (``None``: CPU).

    Returns:
        (yields) the device this rank runs on.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    created = False
    if world > 1 and not (dist.is_available() and dist.is_initialized()):
        if not dist.is_available():
            raise RuntimeError(f"WORLD_SIZE={world} but this torch build has no torch.distributed")
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        created = True
        log.info("rank %d of %d on %s", dist.get_rank(), dist.get_world_size(), device)
    try:
        yield device
    finally:
        if created:
            dist.destroy_process_group()
