"""Benchmarks of the fused ops against their pure-PyTorch reference and named peers.

Every case times one implementation of one op at one size; cases of the same op, size and
pass form a group, and the table reports each implementation's median time and the ratio
``time(other) / time(vmd_fast)`` against the reference and the peers of its group, all
measured in the same run. ``bench/`` runs the same cases under pytest-benchmark.

Usage::

    python -m vmd_fast.bench [--device cpu|cuda] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch

import vmd_fast.ops as ops
from vmd_fast.ops import reference

FUSED = "vmd_fast"
REFERENCE = "reference"


@dataclasses.dataclass(frozen=True)
class Case:
    """One implementation of one op at one size.

    Attributes:
        op: the op benchmarked, e.g. ``"ssim"``.
        size: the problem size, e.g. ``"64x3x64x64"``.
        mode: ``"forward"``, ``"forward+backward"`` or ``"step"``.
        impl: ``"vmd_fast"``, ``"reference"`` or a peer library's name.
        build: ``build(device)`` makes the inputs and returns the thunk that is timed.
        bytes_moved: memory traffic of one call (for the bandwidth of memory-bound ops).
    """

    op: str
    size: str
    mode: str
    impl: str
    build: Callable[[torch.device], Callable[[], object]]
    bytes_moved: int = 0

    @property
    def group(self) -> str:
        return f"{self.op} {self.size} {self.mode}"

    @property
    def name(self) -> str:
        return f"{self.group} [{self.impl}]"


def _rand(shape: Sequence[int], device: torch.device, seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(tuple(shape), generator=gen).to(device, dtype)


def _forward_backward(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], object]:
    x = x.detach().requires_grad_()

    def run():
        (grad,) = torch.autograd.grad(fn(x), x)
        return grad

    return run


# ---------------------------------------------------------------------------------------
# projected_sign_step / clamp_gd_step


def _step_cases(shape: Sequence[int], impl: str) -> Case:
    numel = 1
    for d in shape:
        numel *= d

    def build(device):
        x0 = _rand(shape, device, 0)
        x = (x0 + 0.01).clamp(0, 1)
        grad = _rand(shape, device, 1) - 0.5
        step = torch.full((shape[0],), 0.25 / 255, device=device)
        if impl == FUSED:
            return _checks_off(lambda: ops.projected_sign_step(x, grad, x0, step, 1.5 / 255, out=x))
        # The eager chain an attack loop writes (torchattacks' PGD update, per-sample step).
        step_b = step.view(-1, *([1] * (len(shape) - 1)))

        def chain():
            moved = x + step_b * grad.sign()
            delta = torch.clamp(moved - x0, min=-1.5 / 255, max=1.5 / 255)
            x.copy_(torch.clamp(x0 + delta, 0, 1))

        return chain

    return Case("projected_sign_step", "x".join(map(str, shape)), "step", impl, build, 16 * numel)


def _clamp_case(shape: Sequence[int], impl: str) -> Case:
    def build(device):
        w = _rand(shape, device, 0) * 10
        grad = _rand(shape, device, 1) - 0.5
        if impl == FUSED:
            return _checks_off(lambda: ops.clamp_gd_step(w, grad, 0.2, 30.0, out=w))
        return lambda: w.copy_(reference.clamp_gd_step(w, grad, 0.2, 30.0))

    numel = shape[0] * shape[1]
    return Case("clamp_gd_step", "x".join(map(str, shape)), "step", impl, build, 12 * numel)


# ---------------------------------------------------------------------------------------
# ssim


def _ssim_impl(impl: str):
    if impl == FUSED:
        return lambda x, y: ops.ssim(x, y)
    if impl == REFERENCE:
        return lambda x, y: reference.ssim(x, y)
    if impl == "pytorch_msssim":
        from pytorch_msssim import ssim as msssim

        return lambda x, y: msssim(x, y, data_range=1.0)
    if impl == "kornia":
        import kornia

        return lambda x, y: kornia.metrics.ssim(x, y, 11, max_val=1.0, padding="valid").mean()
    raise ValueError(impl)


def _ssim_case(shape: Sequence[int], mode: str, impl: str) -> Case:
    def build(device):
        x = _rand(shape, device, 0)
        y = (x + 0.1 * (_rand(shape, device, 1) - 0.5)).clamp(0, 1)
        if impl == "vmd_fast cached":
            cache = ops.SSIMReference(y)
            fn = lambda a, b: cache(a)  # noqa: E731
        else:
            fn = _ssim_impl(impl)
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return fn(x, y)

            return _checks_off(run) if impl.startswith(FUSED) else run
        run = _forward_backward(lambda a: fn(a, y), x)
        return _checks_off(run) if impl.startswith(FUSED) else run

    return Case("ssim", "x".join(map(str, shape)), mode, impl, build)


def _checks_off(fn: Callable[[], object]) -> Callable[[], object]:
    """Time the kernels, not the NaN checks (a hot loop validates its inputs once)."""

    def run():
        with ops.value_checks(False):
            return fn()

    return run


def _peers_available() -> List[str]:
    peers = []
    for name, module in (("pytorch_msssim", "pytorch_msssim"), ("kornia", "kornia")):
        try:
            __import__(module)
            peers.append(name)
        except ImportError:
            pass
    return peers


# ---------------------------------------------------------------------------------------
# relevance


def _relevance_case(channels: int, dim: int, attributes: int, impl: str) -> Case:
    def build(device):
        gen = torch.Generator().manual_seed(0)
        M = torch.nn.functional.normalize(torch.randn(channels, dim, generator=gen), dim=1).to(device)
        dt = torch.nn.functional.normalize(torch.randn(attributes, dim, generator=gen), dim=1).to(device)
        threshold = 0.03
        if impl == FUSED:
            return _checks_off(lambda: ops.relevance_directions(M, dt, threshold))
        if impl == REFERENCE:
            return lambda: reference.relevance_directions(M, dt, threshold)
        # "per-attribute loop": StyleCLIP's GetBoundary, one text direction at a time.
        def per_attribute():
            return torch.stack([reference.relevance_directions(M, dt[i : i + 1], threshold)[0] for i in range(attributes)])

        return per_attribute

    return Case("relevance_directions", f"C{channels}xD{dim}xA{attributes}", "forward", impl, build)


def _accumulate_case(images: int, channels: int, dim: int, impl: str) -> Case:
    def build(device):
        gen = torch.Generator().manual_seed(0)
        rows = images * channels
        clip = torch.randn(rows, dim, generator=gen).to(device)
        index = torch.arange(channels).repeat(images).to(device)
        weights = torch.ones(rows, device=device)
        M = torch.zeros(channels, dim, device=device)
        if impl == FUSED:
            return _checks_off(lambda: ops.relevance_accumulate(M, weights, clip, index))
        return lambda: reference.relevance_accumulate(M, weights, clip, index)

    return Case("relevance_accumulate", f"{images}imgx{channels}chxD{dim}", "step", impl, build)


# ---------------------------------------------------------------------------------------
# clip_consistency


def _clip_case(rows: int, classes: int, mode: str, impl: str) -> Case:
    def build(device):
        gen = torch.Generator().manual_seed(0)
        edit = (torch.randn(rows, classes, generator=gen) * 3).to(device)
        orig = (torch.randn(rows, classes, generator=gen) * 3).to(device)
        fn = (lambda e: ops.clip_consistency(e, orig, 0.5)) if impl == FUSED else (
            lambda e: reference.clip_consistency(e, orig, 0.5)
        )
        if mode == "forward":
            def run():
                with torch.no_grad():
                    return fn(edit)
        else:
            run = _forward_backward(fn, edit)
        return _checks_off(run) if impl == FUSED else run

    return Case("clip_consistency", f"{rows}x{classes}", mode, impl, build)


def cases(device: str = "cpu", quick: bool = False) -> List[Case]:
    """All benchmark cases for ``device`` (``quick``: the smallest size of each op)."""
    peers = _peers_available()
    if device == "cuda":
        image_sizes = [(64, 3, 64, 64), (8, 3, 256, 256), (16, 3, 512, 512)]
        step_sizes = [(64, 3, 64, 64), (256, 3, 256, 256), (1024, 3, 256, 256)]
    else:
        image_sizes = [(64, 3, 64, 64), (8, 3, 256, 256)]
        step_sizes = [(64, 3, 64, 64), (8, 3, 256, 256), (256, 3, 64, 64)]
    if quick:
        image_sizes, step_sizes = image_sizes[:1], step_sizes[:1]
    out: List[Case] = []
    for shape in step_sizes:
        out += [_step_cases(shape, impl) for impl in (FUSED, REFERENCE)]
    for shape in [(4096, 16)] if quick else [(4096, 16), (65536, 64)]:
        out += [_clamp_case(shape, impl) for impl in (FUSED, REFERENCE)]
    for shape in image_sizes:
        for mode in ("forward", "forward+backward"):
            impls = [FUSED, "vmd_fast cached", REFERENCE] + peers
            out += [_ssim_case(shape, mode, impl) for impl in impls]
    rel_sizes = [(2048, 256, 16)] if quick else [(2048, 256, 16), (6048, 512, 40)]
    for c, d, a in rel_sizes:
        out += [_relevance_case(c, d, a, impl) for impl in (FUSED, REFERENCE, "per-attribute loop")]
    for n, c, d in [(16, 512, 256)] if quick else [(16, 512, 256), (32, 1024, 512)]:
        out += [_accumulate_case(n, c, d, impl) for impl in (FUSED, REFERENCE)]
    for rows, k in [(1024, 32)] if quick else [(1024, 32), (16384, 64)]:
        for mode in ("forward", "forward+backward"):
            out += [_clip_case(rows, k, mode, impl) for impl in (FUSED, REFERENCE)]
    return out


# ---------------------------------------------------------------------------------------
# Timing and the ratio table


def time_case(case: Case, device: str, min_run_time: float = 0.5) -> float:
    """Median seconds per call of ``case`` (torch.utils.benchmark, all threads)."""
    from torch.utils.benchmark import Timer

    fn = case.build(torch.device(device))
    fn()  # warm-up (allocations, lazy initialisation)
    timer = Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def ratio_rows(timings: Dict[str, float], case_list: Iterable[Case]) -> List[dict]:
    """Rows of the report: per case its time, and for the fused implementations the
    speed-up over every other implementation of the same group."""
    by_group: Dict[str, List[Case]] = {}
    for case in case_list:
        if case.name in timings:
            by_group.setdefault(case.group, []).append(case)
    rows = []
    for group, members in by_group.items():
        for case in members:
            t = timings[case.name]
            row = {"group": group, "impl": case.impl, "median_ms": t * 1e3}
            if case.bytes_moved:
                row["GB/s"] = case.bytes_moved / t / 1e9
            if case.impl.startswith(FUSED):
                row["speedup"] = {
                    other.impl: timings[other.name] / t for other in members if not other.impl.startswith(FUSED)
                }
            rows.append(row)
    return rows


def markdown_table(rows: List[dict]) -> str:
    lines = [
        "| op / size / pass | implementation | median (ms) | speed-up of vmd_fast over it |",
        "|---|---|---:|---|",
    ]
    for row in rows:
        bandwidth = f" ({row['GB/s']:.1f} GB/s)" if "GB/s" in row else ""
        speedups = ", ".join(f"{k}: {v:.2f}x" for k, v in row.get("speedup", {}).items())
        lines.append(f"| {row['group']} | {row['impl']} | {row['median_ms']:.3f}{bandwidth} | {speedups} |")
    return "\n".join(lines)


def machine_description(device: str) -> str:
    if device == "cuda":
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"
    return f"{_cpu_model()}, {torch.get_num_threads()} threads (torch {torch.__version__})"


def _cpu_model() -> str:
    """The processor's model name where the OS tells it (Linux), else the architecture."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({platform.machine()})"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="only the smallest size of each op")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per case")
    parser.add_argument("--json", help="also write the measurements to this JSON file")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU is visible")
    from tqdm import tqdm

    case_list = cases(args.device, args.quick)
    timings = {}
    for case in tqdm(case_list, desc="benchmarking", unit="case"):
        timings[case.name] = time_case(case, args.device, args.min_run_time)
    rows = ratio_rows(timings, case_list)
    print(f"\nvmd_fast benchmarks on {machine_description(args.device)}\n")
    print(markdown_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_description(args.device), "rows": rows}, f, indent=1)
        print(f"\nmeasurements written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
