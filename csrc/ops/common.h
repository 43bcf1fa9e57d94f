// Shared argument checks and small helpers for the vmd_fast kernels.
//
// The Python wrappers (vmd_fast/ops/*.py) give users the friendly errors; the checks
// here keep a direct `torch.ops.vmd_fast.*` call (Python or libtorch C++) from reading
// out of bounds when it is handed inconsistent tensors.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

namespace vmd_fast::ops {

// Largest Gaussian window the SSIM kernels accept (the CUDA tiles size their shared
// memory from it). pytorch_msssim and skimage default to 11.
constexpr int64_t kMaxWindow = 31;

inline void check_same_shape(const at::Tensor& a, const at::Tensor& b, const char* a_name,
                             const char* b_name) {
  TORCH_CHECK(a.sizes() == b.sizes(), b_name, " must have the shape of ", a_name, " ",
              a.sizes(), ", got ", b.sizes());
}

inline void check_same_dtype_device(const at::Tensor& a, const at::Tensor& b,
                                    const char* a_name, const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), b_name, " must have the dtype of ", a_name,
              " (", a.scalar_type(), "), got ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), b_name, " must be on the device of ", a_name, " (",
              a.device(), "), got ", b.device());
}

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()),
              name, " must be a floating-point tensor, got ", t.scalar_type());
}

// A per-sample parameter of a batched update (step size, eps, learning rate): either one
// value for the whole batch or one value per sample along dim 0.
inline void check_per_sample(const at::Tensor& p, const at::Tensor& x, const char* name) {
  check_floating(p, name);
  const int64_t n = x.dim() == 0 ? 1 : x.size(0);
  TORCH_CHECK(p.numel() == 1 || (p.dim() == 1 && p.size(0) == n), name,
              " must be a scalar or have shape (", n, ",) (one value per sample), got ",
              p.sizes());
  TORCH_CHECK(p.device() == x.device() || (p.is_cpu() && p.numel() == 1), name,
              " must be on ", x.device(), " (or be a 0-dim CPU scalar), got ", p.device());
}

// Number of elements that share one per-sample parameter value.
inline int64_t inner_size(const at::Tensor& x) {
  if (x.dim() <= 1 || x.size(0) == 0) {
    return 1;
  }
  return x.numel() / x.size(0);
}

// True when every tensor has the same strides and the memory of sample n is the dense
// block [n * inner, (n + 1) * inner): contiguous and channels-last batches both qualify,
// so the kernels can walk raw memory without reordering.
inline bool samples_are_dense_blocks(c10::ArrayRef<at::Tensor> ts) {
  const at::Tensor& x = ts[0];
  if (!x.is_non_overlapping_and_dense()) {
    return false;
  }
  for (const auto& t : ts) {
    if (t.strides() != x.strides()) {
      return false;
    }
  }
  return x.dim() <= 1 || x.size(0) <= 1 || x.stride(0) == inner_size(x);
}

inline std::vector<double> checked_window(c10::ArrayRef<double> window) {
  const auto k = static_cast<int64_t>(window.size());
  TORCH_CHECK(k >= 1 && k % 2 == 1 && k <= kMaxWindow,
              "window must have an odd length between 1 and ", kMaxWindow, ", got ", k);
  return std::vector<double>(window.begin(), window.end());
}

// Shape checks shared by every SSIM entry point. `y` may hold fewer images than `x`
// (a cached reference compared with several edits of each original): x[b] pairs with
// y[b / (x.size(0) / y.size(0))].
inline void check_ssim_pair(const at::Tensor& x, const at::Tensor& y, int64_t window) {
  TORCH_CHECK(x.dim() == 4, "x must have shape (N, C, H, W), got ", x.sizes());
  TORCH_CHECK(y.dim() == 4, "y must have shape (N, C, H, W), got ", y.sizes());
  check_floating(x, "x");
  check_same_dtype_device(x, y, "x", "y");
  TORCH_CHECK(x.size(1) == y.size(1) && x.size(2) == y.size(2) && x.size(3) == y.size(3),
              "x and y must have the same (C, H, W), got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(y.size(0) > 0 && x.size(0) % y.size(0) == 0,
              "the batch of x (", x.size(0), ") must be a multiple of the batch of y (",
              y.size(0), ")");
  TORCH_CHECK(x.size(2) >= window && x.size(3) >= window, "images of ", x.size(2), "x",
              x.size(3), " are smaller than the ", window, "-tap SSIM window");
}

// Output ("valid") size of a K-tap window sliding over n pixels.
inline int64_t valid_size(int64_t n, int64_t window) { return n - window + 1; }

}  // namespace vmd_fast::ops
