"""End-to-end diagnosis throughput: vmd_fast's batched SIA and ZOOM against the reference
loops (bench/diagnosis_cases.py), in one run. Throughput is reported in extra_info as
image-attribute pairs x steps per second (ZOOM) and images x steps per second (SIA), and
the speed-up table at the end of `pytest bench` compares the implementations of a group.

Sizes are small enough for 2 CPU cores; on a GPU the batched side runs larger batches
(the reference loop's batch-1 cost per pair does not change with the batch).
"""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import diagnosis_cases as cases

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
ATTRIBUTES = 4
STEPS = 5


def _timed(benchmark, device, group, impl, work, run):
    # warm-up (and CUDA-graph capture) outside the timing; on the CPU it also counts the
    # matmul/convolution FLOPs of one run, forward and backward, to set against the peak
    flops = None
    if device == "cpu":
        with FlopCounterMode(display=False) as counter:
            run()
        flops = counter.get_total_flops()
    else:
        run()
    benchmark.group = f"{device} {group}"
    benchmark.extra_info.update(device=device, impl=impl, group=group, bytes_moved=0, work=work)
    benchmark.pedantic(run, rounds=3, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info["per_second"] = work / median
    if flops is not None:
        benchmark.extra_info["gflop_per_second"] = flops / median / 1e9


@pytest.mark.slow
def test_cpu_matmul_peak(benchmark):
    """What this CPU's BLAS reaches on a large float32 GEMM with the same threads: the roof
    the diagnosis loops' GFLOP/s are compared with."""
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    benchmark.extra_info.update(device="cpu-peak", impl="torch.mm 2048", group="peak", bytes_moved=0)
    benchmark.pedantic(lambda: torch.mm(a, b), rounds=5, iterations=2, warmup_rounds=1)
    benchmark.extra_info["gflop_per_second"] = 2 * 2048**3 / benchmark.stats.stats.median / 1e9


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["vmd_fast", "reference loop"])
def test_zoom_throughput(benchmark, device, impl):
    world = cases.zoom_world(device, ATTRIBUTES)
    if impl == "vmd_fast":
        n = 64 if device == "cuda" else 16
        run = cases.zoom_batched(world, n, STEPS, device)
    else:
        n = 2
        run = cases.zoom_reference(world, n, STEPS, device)
    _timed(benchmark, device, f"zoom {ATTRIBUTES} attributes x {STEPS} steps, per image-attribute step", impl,
           n * ATTRIBUTES * STEPS, run)


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["vmd_fast", "plain PyTorch loop"])
def test_sia_throughput(benchmark, device, impl):
    editor, target = cases.sia_world(device)
    n = 256 if device == "cuda" else 64
    build = cases.sia_fused if impl == "vmd_fast" else cases.sia_plain
    _timed(benchmark, device, f"sia batch {n} x {STEPS} steps, per image step", impl, n * STEPS,
           build(editor, target, n, STEPS, device))


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-to-GPU feeding needs a GPU")
@pytest.mark.parametrize("impl", ["vmd_fast DevicePrefetcher (pinned, copy ahead)", "plain .to(device)"])
def test_cuda_host_batches_feed_throughput(benchmark, impl):
    """Images on the host feeding a GPU loop: copies from pinned memory one batch ahead on a
    side stream against a synchronous copy from pageable memory per batch."""
    from vmd_fast.io.prefetch import DevicePrefetcher, row_batches

    batches, n = 16, 256
    images = torch.rand(batches * n, 3, 128, 128)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(64, 64, 3, padding=1)).cuda()
    if impl.startswith("vmd_fast"):
        pinned = images.pin_memory()

        def run():
            for x in DevicePrefetcher(row_batches(pinned, batch_size=n), "cuda"):
                net(x)
            torch.cuda.synchronize()
    else:
        def run():
            for x in row_batches(images, batch_size=n):
                net(x.to("cuda"))
            torch.cuda.synchronize()
    with torch.no_grad():
        _timed(benchmark, "cuda", f"feed {batches} host batches of {n}x3x128x128 to a conv, per image", impl,
               batches * n, run)
