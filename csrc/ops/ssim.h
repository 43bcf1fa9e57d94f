// Fused Gaussian-window SSIM (Wang et al. 2004, as computed by skimage with
// gaussian_weights=True, use_sample_covariance=False, and by pytorch_msssim).
//
// With the five windowed moments m1 = E[x], m2 = E[y], m11 = E[x^2], m22 = E[y^2],
// m12 = E[xy] at one output position,
//   L  = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
//   CS = (2 (m12 - m1 m2) + C2) / ((m11 - m1^2) + (m22 - m2^2) + C2)
//   S  = L * CS.
// Since every moment is a blur of a per-pixel quantity, the gradient of mean(S) is
//   dS/dx = blur^T(dS/dm1) + 2 x blur^T(dS/dm11) + y blur^T(dS/dm12)
// (symmetrically for y), so the forward pass stores the per-position partials
// ("grad maps") and the backward pass is one transposed blur of them.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <vector>

#include "common.h"

namespace vmd_fast::ops {

// Which partials the forward pass keeps for the backward pass.
enum SsimGradMode : int64_t {
  kSsimNoGrad = 0,  // inference: no grad maps
  kSsimGradX = 1,   // maps [dS/dm1, dS/dm11, dS/dm12]
  kSsimGradXY = 2,  // maps [dS/dm1, dS/dm11, dS/dm12, dS/dm2]
};

inline int64_t ssim_num_maps(int64_t grad_mode) {
  return grad_mode == kSsimNoGrad ? 0 : (grad_mode == kSsimGradX ? 3 : 4);
}

inline void check_ssim_grad_mode(int64_t grad_mode, bool cached) {
  TORCH_CHECK(grad_mode >= kSsimNoGrad && grad_mode <= (cached ? kSsimGradX : kSsimGradXY),
              "grad_mode must be 0 (none), 1 (x)", cached ? "" : " or 2 (x and y)",
              ", got ", grad_mode);
}

template <typename acc_t>
struct SsimPoint {
  acc_t s;    // SSIM at this position
  acc_t d1;   // dS/dm1
  acc_t d2;   // dS/dm2
  acc_t d11;  // dS/dm11 (equal to dS/dm22)
  acc_t d12;  // dS/dm12
};

// Also instantiated with SIMD vector types by the CPU kernels (hence `acc_t{} + 2`).
template <typename acc_t>
C10_HOST_DEVICE inline SsimPoint<acc_t> ssim_point(acc_t m1, acc_t m2, acc_t m11, acc_t m22,
                                                   acc_t m12, acc_t c1, acc_t c2) {
  const acc_t two = acc_t{} + 2;
  const acc_t var_x = m11 - m1 * m1;
  const acc_t var_y = m22 - m2 * m2;
  const acc_t cov = m12 - m1 * m2;
  const acc_t den_l = m1 * m1 + m2 * m2 + c1;
  const acc_t den_cs = var_x + var_y + c2;
  const acc_t l = (two * m1 * m2 + c1) / den_l;
  const acc_t cs = (two * cov + c2) / den_cs;
  SsimPoint<acc_t> p;
  p.s = l * cs;
  p.d1 = two * (m2 - m1 * l) / den_l * cs + two * l * (m1 * cs - m2) / den_cs;
  p.d2 = two * (m1 - m2 * l) / den_l * cs + two * l * (m2 * cs - m1) / den_cs;
  p.d11 = -l * cs / den_cs;
  p.d12 = two * l / den_cs;
  return p;
}

// Checks of a forward entry point; returns the window as doubles. `cached` forwards take
// the reference statistics (checked separately) and y may hold fewer images than x.
inline std::vector<double> check_ssim_forward(const at::Tensor& x, const at::Tensor& y,
                                              c10::ArrayRef<double> window, int64_t grad_mode,
                                              bool cached, c10::DeviceType device_type) {
  auto w = checked_window(window);
  check_ssim_pair(x, y, static_cast<int64_t>(w.size()));
  TORCH_CHECK(cached || x.size(0) == y.size(0), "x and y must have the same batch size, got ",
              x.size(0), " and ", y.size(0));
  TORCH_CHECK(x.device().type() == device_type, "x must be a ", c10::DeviceTypeName(device_type),
              " tensor, got ", x.device());
  check_ssim_grad_mode(grad_mode, cached);
  return w;
}

inline void check_ssim_cache(const at::Tensor& y, const at::Tensor& mu_y,
                             const at::Tensor& e_yy, int64_t window) {
  const std::vector<int64_t> expected{y.size(0), y.size(1), valid_size(y.size(2), window),
                                      valid_size(y.size(3), window)};
  TORCH_CHECK(mu_y.sizes() == c10::IntArrayRef(expected), "mu_y must have shape ",
              c10::IntArrayRef(expected), ", got ", mu_y.sizes());
  TORCH_CHECK(e_yy.sizes() == mu_y.sizes(), "e_yy must have shape ", mu_y.sizes(), ", got ",
              e_yy.sizes());
  check_same_dtype_device(mu_y, e_yy, "mu_y", "e_yy");
  TORCH_CHECK(mu_y.device() == y.device(), "mu_y must be on ", y.device(), ", got ",
              mu_y.device());
}

inline void check_ssim_backward(const at::Tensor& grad, const at::Tensor& x,
                                const at::Tensor& y, const at::Tensor& maps, int64_t window) {
  check_ssim_pair(x, y, window);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1),
              "grad must have shape (", x.size(0), ", ", x.size(1), "), got ", grad.sizes());
  TORCH_CHECK(maps.dim() == 5 && (maps.size(0) == 3 || maps.size(0) == 4) &&
                  maps.size(1) == x.size(0) && maps.size(2) == x.size(1) &&
                  maps.size(3) == valid_size(x.size(2), window) &&
                  maps.size(4) == valid_size(x.size(3), window),
              "grad_maps must have shape (3 or 4, N, C, H - window + 1, W - window + 1), got ",
              maps.sizes());
  TORCH_CHECK(maps.size(0) == 3 || y.size(0) == x.size(0),
              "gradients for y need y with the batch of x");
  TORCH_CHECK(grad.device() == x.device() && maps.device() == x.device(),
              "grad and grad_maps must be on ", x.device());
}

}  // namespace vmd_fast::ops
