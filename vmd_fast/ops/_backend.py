"""Loading of the compiled kernels, backend selection and argument checks.

Every public op takes ``backend="auto" | "cuda" | "cpp" | "torch"``:

- ``"auto"``: the compiled kernel for the tensors' device when this build has one,
  otherwise the pure-PyTorch reference;
- ``"cpp"`` / ``"cuda"``: the compiled CPU / CUDA kernel, an error if it is missing or
  the tensors live elsewhere;
- ``"torch"``: the reference in :mod:`vmd_fast.ops.reference`.

The package works without the compiled extension (``vmd_fast._C``): it then warns once at
import and ``"auto"`` falls back to the reference.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import warnings
from typing import Iterator, Optional, Sequence, Union

import torch

try:
    from vmd_fast import _C  # registers torch.ops.vmd_fast.*
except ImportError as _import_error:  # pragma: no cover - exercised on builds without _C
    _C = None
    warnings.warn(
        "vmd_fast: the compiled kernels (vmd_fast._C) could not be loaded "
        f"({_import_error}); every op runs its pure-PyTorch reference. Build them with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )

BACKENDS = ("auto", "cuda", "cpp", "torch")


def has_compiled_ops() -> bool:
    """True when the compiled extension ``vmd_fast._C`` is loaded."""
    return _C is not None


def has_cuda_kernels() -> bool:
    """True when the compiled extension includes the CUDA kernels."""
    return _C is not None and bool(_C.built_with_cuda())


def use_compiled(backend: str, device: torch.device) -> bool:
    """Whether an op on ``device`` runs the compiled kernel (True) or the reference.

    Raises:
        ValueError: unknown backend, or a backend that does not run on ``device``.
        RuntimeError: the requested compiled backend is not in this build.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return False
    if backend == "auto":
        if device.type == "cpu":
            return has_compiled_ops()
        if device.type == "cuda":
            return has_cuda_kernels()
        return False
    if not has_compiled_ops():
        raise RuntimeError(
            f"backend={backend!r} needs the compiled kernels (vmd_fast._C), which are not "
            "built; install with `pip install --no-build-isolation -e .`"
        )
    if backend == "cpp":
        if device.type != "cpu":
            raise ValueError(
                f"backend='cpp' runs on CPU tensors, got tensors on {device}; use "
                "backend='cuda' or 'auto'"
            )
        return True
    if not has_cuda_kernels():
        raise RuntimeError(
            "backend='cuda' needs vmd_fast built with its CUDA kernels (nvcc found at build "
            "time, or VMD_FAST_CUDA=1)"
        )
    if device.type != "cuda":
        raise ValueError(f"backend='cuda' runs on CUDA tensors, got tensors on {device}")
    return True


# ---------------------------------------------------------------------------------------
# Value checks (NaN/Inf, ranges) read tensor data, which costs a pass over the inputs and a
# host synchronisation on a GPU. They are on by default; hot loops that validated their
# inputs once turn them off with `value_checks(False)`. They are skipped automatically
# while a CUDA graph is being captured or torch.compile is tracing.

_state = threading.local()


def value_checks_enabled() -> bool:
    """Whether the ops currently check tensor values (NaN/Inf, ranges)."""
    if not getattr(_state, "enabled", True):
        return False
    if torch.compiler.is_compiling():
        return False
    return not (torch.cuda.is_initialized() and torch.cuda.is_current_stream_capturing())


@contextlib.contextmanager
def value_checks(enabled: bool) -> Iterator[None]:
    """Context manager that turns the ops' value checks on or off in this thread.

    Example:
        >>> import torch, vmd_fast.ops as ops
        >>> with ops.value_checks(False):
        ...     _ = ops.clamp_gd_step(torch.zeros(2, 3), torch.ones(2, 3), lr=0.2, eps=30.0)
    """
    previous = getattr(_state, "enabled", True)
    _state.enabled = enabled
    try:
        yield
    finally:
        _state.enabled = previous


def check_tensor(
    t: object,
    name: str,
    *,
    ndim: Optional[Union[int, Sequence[int]]] = None,
    floating: bool = True,
) -> torch.Tensor:
    """Check that ``t`` is a tensor (floating point unless told otherwise) of ``ndim``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if floating and not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if t.dim() not in allowed:
            wanted = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name} must have {wanted} dimensions, got shape {tuple(t.shape)}")
    return t


def check_like(t: object, ref: torch.Tensor, name: str, ref_name: str, *, shape: bool = True) -> torch.Tensor:
    """Check that ``t`` matches ``ref`` in dtype, device and (optionally) shape."""
    check_tensor(t, name, floating=ref.is_floating_point())
    if shape and t.shape != ref.shape:
        raise ValueError(
            f"{name} must have the shape of {ref_name} {tuple(ref.shape)}, got {tuple(t.shape)}"
        )
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the dtype of {ref_name} ({ref.dtype}), got {t.dtype}")
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the device of {ref_name} ({ref.device}), got {t.device}")
    return t


def check_finite(t: torch.Tensor, name: str) -> None:
    """Raise if ``t`` holds NaN or Inf (when value checks are enabled)."""
    if value_checks_enabled() and t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")


def check_number(value: object, name: str, *, minimum: Optional[float] = None, strict: bool = False) -> float:
    """A finite Python number (optionally ``> minimum`` or ``>= minimum``) as a float."""
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be {relation} {minimum:g}, got {value:g}")
    return value


def per_sample_param(
    value: object, x: torch.Tensor, name: str, *, nonnegative: bool = False
) -> torch.Tensor:
    """A step size / eps / learning rate as the tensor the kernels take.

    A number becomes a 0-dim CPU tensor (passed to CUDA kernels as an argument, no copy);
    a tensor must hold one value or one value per sample (shape ``(N,)`` or ``(N, 1, ...)``)
    and live on the device of ``x`` (a one-element CPU tensor is also accepted).
    """
    n = x.shape[0] if x.dim() else 1
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
        if value.numel() == 1:
            flat = value.reshape(())
            if flat.device != x.device and flat.device.type != "cpu":
                raise ValueError(f"{name} must be on {x.device} or the CPU, got {flat.device}")
        else:
            if value.shape[0] != n or value.numel() != n:
                raise ValueError(
                    f"{name} must be a scalar or hold one value per sample (shape ({n},)), "
                    f"got shape {tuple(value.shape)}"
                )
            if value.device != x.device:
                raise ValueError(f"{name} must be on {x.device}, got {value.device}")
            flat = value.reshape(n)
        if value_checks_enabled():
            check_finite(flat, name)
            if nonnegative and bool((flat < 0).any()):
                raise ValueError(f"{name} must be >= 0")
        return flat
    number = check_number(value, name, minimum=0.0 if nonnegative else None)
    return _scalar_tensor(number)


@functools.lru_cache(maxsize=256)
def _scalar_tensor(value: float) -> torch.Tensor:
    """A 0-dim float64 CPU tensor for a step size or bound. Loops pass the same few values
    every step, so they are made once (the kernels only read them)."""
    return torch.tensor(value, dtype=torch.float64)
