"""Shared fixtures: the backends present on this machine, and seeded generators."""

import os

import pytest
import torch

import vmd_fast.ops as ops

HAS_CUDA = torch.cuda.is_available() and ops.has_cuda_kernels()


def compiled_backends():
    """(backend, device) pairs of the compiled kernels present here."""
    params = []
    if ops.has_compiled_ops():
        params.append(pytest.param(("cpp", "cpu"), id="cpp"))
    params.append(
        pytest.param(
            ("cuda", "cuda"),
            id="cuda",
            marks=pytest.mark.skipif(not HAS_CUDA, reason="needs a GPU and the CUDA kernels"),
        )
    )
    return params


def all_backends():
    """Every backend, the pure-PyTorch one included (for checks that live in Python)."""
    return [pytest.param(("torch", "cpu"), id="torch")] + compiled_backends()


@pytest.fixture(params=compiled_backends())
def compiled(request):
    """A compiled (backend, device) pair."""
    return request.param


@pytest.fixture(params=all_backends())
def any_backend(request):
    return request.param


@pytest.fixture
def gen():
    """A seeded CPU generator (tests draw on the CPU, then move to the device)."""
    return torch.Generator().manual_seed(0)


def pytest_report_header(config):
    return (
        f"vmd_fast: compiled={ops.has_compiled_ops()} cuda_kernels={ops.has_cuda_kernels()} "
        f"gpu={torch.cuda.is_available()} torch={torch.__version__} "
        f"require_compiled={os.environ.get('VMD_FAST_REQUIRE_COMPILED', '0')}"
    )
