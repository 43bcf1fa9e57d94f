"""Build of vmd_fast and its compiled kernels, vmd_fast._C.

The CUDA kernels are compiled when nvcc is found (CUDA_HOME, or nvcc on PATH), or when
VMD_FAST_CUDA=1; VMD_FAST_CUDA=0 forces the CPU-only C++ build. VMD_FAST_SKIP_EXT=1
installs the Python package alone (scripts/setup.sh compiles the extension in place with
`python setup.py build_ext --inplace`, which reuses its ninja build directory, then
installs the package with the extension skipped so nothing is compiled twice). No GPU is needed to
compile them: set TORCH_CUDA_ARCH_LIST (e.g. "9.0" for H100/H200) on a machine without
one. Build against the installed torch with ``pip install --no-build-isolation -e .``.
"""

import glob
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda():
    flag = os.environ.get("VMD_FAST_CUDA", "").strip().lower()
    if flag in ("0", "false", "no", "off"):
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    found = CUDA_HOME is not None and os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc"))
    if flag in ("1", "true", "yes", "on"):
        if not found:
            sys.exit("VMD_FAST_CUDA=1 but nvcc was not found: set CUDA_HOME to the CUDA toolkit")
        return True
    return found


def _cuda_library_includes():
    """Headers of the pip-installed CUDA libraries (cuBLAS, cuSPARSE, ...) that torch's
    CUDA headers include; a minimal toolkit may lack them."""
    try:
        import nvidia
    except ImportError:
        return []
    return sorted(
        inc
        for base in nvidia.__path__
        for inc in glob.glob(os.path.join(base, "*", "include"))
        if os.path.exists(os.path.join(inc, "cublas_v2.h"))
    )


def _extension():
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    csrc = os.path.join("csrc")
    sources = sorted(glob.glob(os.path.join(csrc, "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "*.cpp")))
    sources += sorted(glob.glob(os.path.join(csrc, "ops", "cpu", "*.cpp")))
    cxx_flags = ["-O3", "-std=c++20"]
    link_flags = []
    if sys.platform.startswith("linux"):
        # ATen's parallel_for is an inline OpenMP region in the headers: without -fopenmp
        # every CPU kernel would run on one thread. libgomp.so.1 is the runtime torch
        # itself loads, so the region shares torch's thread pool and torch.set_num_threads.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    if _want_cuda():
        sources += sorted(glob.glob(os.path.join(csrc, "ops", "cuda", "*.cu")))
        return CUDAExtension(
            "vmd_fast._C",
            sources,
            include_dirs=[os.path.join(ROOT, csrc)] + _cuda_library_includes(),
            define_macros=[("VMD_FAST_WITH_CUDA", None)],
            extra_compile_args={
                "cxx": cxx_flags,
                "nvcc": ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo"],
            },
            extra_link_args=link_flags,
        )
    return CppExtension(
        "vmd_fast._C",
        sources,
        include_dirs=[os.path.join(ROOT, csrc)],
        extra_compile_args={"cxx": cxx_flags},
        extra_link_args=link_flags,
    )


def main():
    from torch.utils.cpp_extension import BuildExtension

    skip = os.environ.get("VMD_FAST_SKIP_EXT", "").strip().lower() in ("1", "true", "yes", "on")
    setup(
        ext_modules=[] if skip else [_extension()],
        cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    )


if __name__ == "__main__":
    main()
