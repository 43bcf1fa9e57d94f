"""pytest-benchmark runs of vmd_fast.bench's cases (the fused ops, their reference and
peers). `pytest bench/` prints, after pytest-benchmark's tables, the speed-up of the fused
kernels over every other implementation of the same group, all from this run."""

import pytest
import torch

from vmd_fast.bench import cases

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
PARAMS = [pytest.param(device, case, id=f"{device}-{case.name}") for device in DEVICES for case in cases(device)]


@pytest.mark.parametrize("device,case", PARAMS)
def test_op(benchmark, device, case):
    fn = case.build(torch.device(device))
    if device == "cuda":
        def run():
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    run()  # warm-up outside the timing
    benchmark.group = f"{device} {case.group}"
    benchmark.extra_info.update(device=device, impl=case.impl, group=case.group, bytes_moved=case.bytes_moved)
    benchmark(run)
