// Python module init of vmd_fast._C. The ops register themselves with the dispatcher
// (TORCH_LIBRARY_FRAGMENT / TORCH_LIBRARY_IMPL in csrc/ops) when this library loads; the
// module itself only reports how it was built.
#include <pybind11/pybind11.h>

namespace {

bool built_with_cuda() {
#ifdef VMD_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vmd_fast compiled kernels (registered as torch.ops.vmd_fast.*)";
  m.def("built_with_cuda", &built_with_cuda,
        "True when the CUDA kernels were compiled into this build.");
}
