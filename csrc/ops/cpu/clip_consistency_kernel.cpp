// CPU kernel of the fused CLIP-consistency loss: one task a block of rows, a few sweeps
// over each row (maxima, two vectorised exponentials, normalisers, loss and gradients).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "../clip_consistency.h"
#include "simd_rows.h"

namespace vmd_fast::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> clip_consistency_forward_cpu(
    const at::Tensor& edit_in, const at::Tensor& orig_in, double temperature, int64_t grad_mode) {
  check_clip_consistency(edit_in, orig_in, temperature, grad_mode);
  TORCH_CHECK(edit_in.is_cpu(), "image_logits_edit must be a CPU tensor, got ", edit_in.device());
  const at::Tensor edit = edit_in.contiguous();
  const at::Tensor orig = orig_in.contiguous();
  const int64_t B = edit.size(0), K = edit.size(1);
  auto [loss, grad_e, grad_o] = allocate_clip_consistency_outputs(edit, grad_mode);
  const bool want_e = grad_e.numel() > 0;
  const bool want_o = grad_o.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, edit.scalar_type(),
                                  "clip_consistency_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t inv_t = acc_t(1) / static_cast<acc_t>(temperature);
    const scalar_t* ep = edit.const_data_ptr<scalar_t>();
    const scalar_t* op = orig.const_data_ptr<scalar_t>();
    acc_t* lp = loss.mutable_data_ptr<acc_t>();
    scalar_t* gep = want_e ? grad_e.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gop = want_o ? grad_o.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
      // Per row: the shifted edit logits, then the unnormalised q and p.
      std::vector<acc_t> shifted(K), q(K), p(K);
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* e = ep + b * K;
        const scalar_t* o = op + b * K;
        for (int64_t k = 0; k < K; ++k) {
          shifted[k] = static_cast<acc_t>(e[k]) * inv_t;
          p[k] = static_cast<acc_t>(o[k]) * inv_t;
        }
        const acc_t max_e = cpu_rows::row_max(shifted.data(), K);
        const acc_t max_o = cpu_rows::row_max(p.data(), K);
        for (int64_t k = 0; k < K; ++k) {
          shifted[k] -= max_e;
          p[k] -= max_o;
          q[k] = shifted[k];
        }
        cpu_rows::exp_in_place(q.data(), K);
        cpu_rows::exp_in_place(p.data(), K);
        const acc_t z_e = cpu_rows::row_sum(q.data(), K);
        const acc_t z_o = cpu_rows::row_sum(p.data(), K);
        const acc_t cross = cpu_rows::row_dot(p.data(), shifted.data(), K);
        const acc_t log_z_e = std::log(z_e);
        // -sum p log q = log Z_e - sum p (e/T - max_e)
        const acc_t row_loss = log_z_e - cross / z_o;
        lp[b] = row_loss;
        const acc_t inv_z_e = acc_t(1) / z_e, inv_z_o = acc_t(1) / z_o;
        if (gep != nullptr) {
          for (int64_t k = 0; k < K; ++k) {
            gep[b * K + k] = static_cast<scalar_t>((q[k] * inv_z_e - p[k] * inv_z_o) * inv_t);
          }
        }
        if (gop != nullptr) {
          for (int64_t k = 0; k < K; ++k) {
            const acc_t log_q = shifted[k] - log_z_e;
            gop[b * K + k] = static_cast<scalar_t>(-p[k] * inv_z_o * (log_q + row_loss) * inv_t);
          }
        }
      }
    });
  });
  return {loss, grad_e, grad_o};
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CPU, m) {
  m.impl("clip_consistency_forward", &clip_consistency_forward_cpu);
}

}  // namespace vmd_fast::ops
