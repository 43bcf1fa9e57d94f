"""Backend selection, the build the tests run against, and the fallback without _C."""

import os
import subprocess
import sys

import pytest
import torch

import vmd_fast.ops as ops


def test_compiled_extension_is_built_when_required():
    # The README's test command sets these so that a broken build cannot pass as skips.
    if os.environ.get("VMD_FAST_REQUIRE_COMPILED") == "1":
        assert ops.has_compiled_ops(), "vmd_fast._C did not load"
    if os.environ.get("VMD_FAST_REQUIRE_CUDA_KERNELS") == "1":
        assert ops.has_cuda_kernels(), "vmd_fast._C was built without its CUDA kernels"


def test_auto_backend_picks_the_compiled_cpu_kernel():
    from vmd_fast.ops._backend import use_compiled

    assert use_compiled("auto", torch.device("cpu")) == ops.has_compiled_ops()
    assert use_compiled("torch", torch.device("cpu")) is False
    assert use_compiled("auto", torch.device("meta")) is False


def test_unavailable_backends_give_clear_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        ops.clamp_gd_step(x, x, 0.1, 1.0, backend="triton")
    if not ops.has_cuda_kernels():
        with pytest.raises(RuntimeError, match="backend='cuda' needs vmd_fast built with its CUDA kernels"):
            ops.clamp_gd_step(x, x, 0.1, 1.0, backend="cuda")
    elif not torch.cuda.is_available():
        with pytest.raises(ValueError, match="backend='cuda' runs on CUDA tensors"):
            ops.clamp_gd_step(x, x, 0.1, 1.0, backend="cuda")


def test_package_falls_back_to_torch_without_compiled_kernels():
    # Hide vmd_fast._C from the import system: one warning, then every op still works.
    code = r"""
import sys, warnings
sys.modules["vmd_fast._C"] = None
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import torch, vmd_fast.ops as ops
messages = [str(w.message) for w in caught if "vmd_fast" in str(w.message)]
assert len(messages) == 1 and "pure-PyTorch reference" in messages[0], messages
assert not ops.has_compiled_ops()
x = torch.rand(2, 3, 16, 16, requires_grad=True)
s = ops.ssim(x, torch.rand(2, 3, 16, 16))
s.backward()
assert x.grad is not None
w = ops.clamp_gd_step(torch.zeros(2, 3), torch.ones(2, 3), 0.2, 30.0)
assert torch.allclose(w, torch.full((2, 3), -0.2))
try:
    ops.ssim(x, x, backend="cpp")
except RuntimeError as e:
    assert "needs the compiled kernels" in str(e)
else:
    raise AssertionError("backend='cpp' should fail without _C")
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
