"""Batches moved to the device one step ahead, from pinned host memory.

A diagnosis or a training epoch on a GPU reads its images from host memory. Copied with a
plain ``.to("cuda")`` each batch waits for its own copy, and a copy from pageable memory
is staged by the driver and blocks the host. :class:`DevicePrefetcher` pins each host
batch, starts its copy on a side stream while the previous batch is still being used,
and makes the compute stream wait for the copy with an event, not the host: the loop
never synchronises with the device for its data. Off CUDA it only moves the batches with
``.to(device)`` (nothing is pinned and nothing runs ahead), so the same loop runs on the
CPU unchanged.

    >>> import torch
    >>> images = torch.rand(10, 3, 8, 8)
    >>> [x.shape[0] for x in DevicePrefetcher(row_batches(images, batch_size=4), "cpu")]
    [4, 4, 2]
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Union

import torch

__all__ = ["DevicePrefetcher", "move", "row_batches"]

Device = Union[str, torch.device]


def _map(batch: Any, fn) -> Any:
    """``batch`` with ``fn`` applied to every tensor in it (tuples, lists and dicts are walked;
    anything else is returned as it is)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return type(batch)((key, _map(value, fn)) for key, value in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_map(value, fn) for value in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map(value, fn) for value in batch)
    return batch


def move(batch: Any, device: Device, non_blocking: bool = False) -> Any:
    """Every tensor of ``batch`` (a tensor, or tuples, lists and dicts of them) on ``device``.

    Tensors already there are returned as they are (no copy).
    """
    device = torch.device(device)
    return _map(batch, lambda t: t.to(device, non_blocking=non_blocking))


def row_batches(*tensors: torch.Tensor, batch_size: int, start: int = 0, stop: Optional[int] = None) -> Iterator:
    """Consecutive row slices ``[i : i + batch_size]`` of ``tensors`` (same first dimension)
    from ``start`` to ``stop``: one tensor per batch for one tensor, else a tuple.

    Slices are views, so slices of a pinned tensor are pinned too: pin a large host tensor
    once (``images.pin_memory()``) and :class:`DevicePrefetcher` copies its batches
    without pinning each.
    """
    if not tensors:
        raise ValueError("row_batches needs at least one tensor")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    for i, t in enumerate(tensors):
        if not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise ValueError(f"tensor {i} must be a tensor with a batch dimension, got {getattr(t, 'shape', type(t))}")
    n = tensors[0].shape[0]
    for i, t in enumerate(tensors[1:], 1):
        if t.shape[0] != n:
            raise ValueError(f"tensor {i} has {t.shape[0]} rows; tensor 0 has {n}")
    stop = n if stop is None else min(stop, n)
    for lo in range(start, stop, batch_size):
        hi = min(lo + batch_size, stop)
        parts = tuple(t[lo:hi] for t in tensors)
        yield parts[0] if len(parts) == 1 else parts


class DevicePrefetcher:
    """Iterate ``batches`` with every tensor on ``device``, the next batch copied ahead.

    Args:
        batches: any iterable of batches: tensors, or tuples, lists and dicts of tensors
            (a :class:`torch.utils.data.DataLoader`, :func:`row_batches`, a generator).
        device: where the batches are used.
        pin: on CUDA, pin host tensors that are not pinned yet before their copy (default
            True); without pinning, a copy from pageable memory cannot overlap the work.

    On CUDA, batch ``k + 1`` is pinned and its copy started on a side stream as soon as
    batch ``k`` is handed out; the stream current at hand-out waits for the copy on the
    device, and the copied tensors are recorded on that stream so that the caching
    allocator does not reuse their memory while it still reads them. Tensors already on
    ``device`` pass through untouched. Elsewhere each batch is moved with
    ``.to(device)`` when it is reached.

    Example:
        >>> loader = torch.utils.data.DataLoader(dataset, batch_size=256, pin_memory=True)  # doctest: +SKIP
        >>> for x, y in DevicePrefetcher(loader, "cuda"):  # doctest: +SKIP
        ...     loss = criterion(model(x), y)
    """

    def __init__(self, batches: Iterable, device: Device, pin: bool = True):
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"device must name a torch device, got {device!r} ({err})") from None
        if self.device.type == "cuda":
            if not torch.cuda.is_available():
                raise ValueError(f"device is {self.device}, but torch sees no GPU here")
            if self.device.index is None:
                self.device = torch.device("cuda", torch.cuda.current_device())
        self.batches = batches
        self.pin = bool(pin)

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        if self.device.type != "cuda":
            for batch in self.batches:
                yield move(batch, self.device)
            return
        yield from self._cuda_iter()

    def _copy(self, batch: Any, stream: "torch.cuda.Stream") -> Any:
        def copy(t: torch.Tensor) -> torch.Tensor:
            if t.device == self.device:
                return t
            if t.device.type == "cpu" and self.pin and not t.is_pinned():
                t = t.pin_memory()
            return t.to(self.device, non_blocking=True)

        with torch.cuda.stream(stream):
            copied = _map(batch, copy)
            done = torch.cuda.Event()
            done.record(stream)
        return copied, done

    def _cuda_iter(self) -> Iterator:
        side = torch.cuda.Stream(device=self.device)
        source = iter(self.batches)
        try:
            pending = self._copy(next(source), side)
        except StopIteration:
            return
        while pending is not None:
            batch, done = pending
            # Start the next copy before handing this batch out: it overlaps the work on it.
            try:
                pending = self._copy(next(source), side)
            except StopIteration:
                pending = None
            consumer = torch.cuda.current_stream(self.device)
            consumer.wait_event(done)
            _map(batch, lambda t: t.record_stream(consumer) if t.device == self.device else None)
            yield batch
