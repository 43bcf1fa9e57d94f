// The batched update steps of SIA (projected sign-gradient ascent) and ZOOM (clamped
// gradient descent). Each backend provides one `*_into` kernel that writes the update
// of x into `out` (which may be x itself); the functional, in-place and out= ops that
// the schema exposes are generated from it here so that every backend gets all three.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>

#include "common.h"

namespace vmd_fast::ops {

// out <- clamp(clamp(x + step * sign(grad), origin - eps, origin + eps), lo, hi)
using ProjectedSignStepInto = void (*)(const at::Tensor& x, const at::Tensor& grad,
                                       const at::Tensor& origin, const at::Tensor& step,
                                       const at::Tensor& eps, double lo, double hi,
                                       const at::Tensor& out);
// out <- clamp(w - lr * grad, -eps, eps)
using ClampGdStepInto = void (*)(const at::Tensor& w, const at::Tensor& grad,
                                 const at::Tensor& lr, const at::Tensor& eps,
                                 const at::Tensor& out);

inline void check_projected_sign_step(const at::Tensor& x, const at::Tensor& grad,
                                      const at::Tensor& origin, const at::Tensor& step,
                                      const at::Tensor& eps, const at::Tensor& out) {
  check_floating(x, "x");
  check_same_shape(x, grad, "x", "grad");
  check_same_shape(x, origin, "x", "origin");
  check_same_shape(x, out, "x", "out");
  check_same_dtype_device(x, grad, "x", "grad");
  check_same_dtype_device(x, origin, "x", "origin");
  check_same_dtype_device(x, out, "x", "out");
  check_per_sample(step, x, "step");
  check_per_sample(eps, x, "eps");
}

inline void check_clamp_gd_step(const at::Tensor& w, const at::Tensor& grad,
                                const at::Tensor& lr, const at::Tensor& eps,
                                const at::Tensor& out) {
  check_floating(w, "w");
  check_same_shape(w, grad, "w", "grad");
  check_same_shape(w, out, "w", "out");
  check_same_dtype_device(w, grad, "w", "grad");
  check_same_dtype_device(w, out, "w", "out");
  check_per_sample(lr, w, "lr");
  check_per_sample(eps, w, "eps");
}

template <ProjectedSignStepInto Into>
at::Tensor projected_sign_step(const at::Tensor& x, const at::Tensor& grad,
                               const at::Tensor& origin, const at::Tensor& step,
                               const at::Tensor& eps, double lo, double hi) {
  auto out = at::empty_like(x);
  Into(x, grad, origin, step, eps, lo, hi, out);
  return out;
}

template <ProjectedSignStepInto Into>
void projected_sign_step_(const at::Tensor& x, const at::Tensor& grad,
                          const at::Tensor& origin, const at::Tensor& step,
                          const at::Tensor& eps, double lo, double hi) {
  Into(x, grad, origin, step, eps, lo, hi, x);
}

template <ProjectedSignStepInto Into>
void projected_sign_step_out(const at::Tensor& x, const at::Tensor& grad,
                             const at::Tensor& origin, const at::Tensor& step,
                             const at::Tensor& eps, double lo, double hi,
                             const at::Tensor& out) {
  Into(x, grad, origin, step, eps, lo, hi, out);
}

template <ClampGdStepInto Into>
at::Tensor clamp_gd_step(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& lr,
                         const at::Tensor& eps) {
  auto out = at::empty_like(w);
  Into(w, grad, lr, eps, out);
  return out;
}

template <ClampGdStepInto Into>
void clamp_gd_step_(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& lr,
                    const at::Tensor& eps) {
  Into(w, grad, lr, eps, w);
}

template <ClampGdStepInto Into>
void clamp_gd_step_out(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& lr,
                       const at::Tensor& eps, const at::Tensor& out) {
  Into(w, grad, lr, eps, out);
}

// Registers the six step ops of one backend (`m` is a TORCH_LIBRARY_IMPL block).
#define VMD_FAST_REGISTER_STEP_OPS(m, psstep_into, clamp_into)                            \
  do {                                                                                   \
    (m).impl("projected_sign_step", &::vmd_fast::ops::projected_sign_step<psstep_into>); \
    (m).impl("projected_sign_step_", &::vmd_fast::ops::projected_sign_step_<psstep_into>); \
    (m).impl("projected_sign_step_out",                                                  \
             &::vmd_fast::ops::projected_sign_step_out<psstep_into>);                    \
    (m).impl("clamp_gd_step", &::vmd_fast::ops::clamp_gd_step<clamp_into>);             \
    (m).impl("clamp_gd_step_", &::vmd_fast::ops::clamp_gd_step_<clamp_into>);           \
    (m).impl("clamp_gd_step_out", &::vmd_fast::ops::clamp_gd_step_out<clamp_into>);     \
  } while (0)

}  // namespace vmd_fast::ops
