// CPU kernel of the fused CLIP-consistency loss: one task a block of rows, three sweeps
// over each row (maxima, normalisers, loss and gradients) with no temporaries.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>

#include "../clip_consistency.h"

namespace vmd_fast::ops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> clip_consistency_forward_cpu(
    const at::Tensor& edit_in, const at::Tensor& orig_in, double temperature, int64_t grad_mode) {
  check_clip_consistency(edit_in, orig_in, temperature, grad_mode);
  TORCH_CHECK(edit_in.is_cpu(), "image_logits_edit must be a CPU tensor, got ", edit_in.device());
  const at::Tensor edit = edit_in.contiguous();
  const at::Tensor orig = orig_in.contiguous();
  const int64_t B = edit.size(0), K = edit.size(1);
  const auto acc_type = at::toOpMathType(edit.scalar_type());
  at::Tensor loss = at::empty({B}, edit.options().dtype(acc_type));
  const bool want_e = grad_mode & kClipGradEdit;
  const bool want_o = grad_mode & kClipGradOrig;
  at::Tensor grad_e = want_e ? at::empty_like(edit) : at::empty({0}, edit.options());
  at::Tensor grad_o = want_o ? at::empty_like(orig) : at::empty({0}, orig.options());
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
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* e = ep + b * K;
        const scalar_t* o = op + b * K;
        acc_t max_e = -std::numeric_limits<acc_t>::infinity();
        acc_t max_o = max_e;
        for (int64_t k = 0; k < K; ++k) {
          max_e = std::max(max_e, static_cast<acc_t>(e[k]) * inv_t);
          max_o = std::max(max_o, static_cast<acc_t>(o[k]) * inv_t);
        }
        acc_t z_e = 0, z_o = 0, cross = 0;  // cross = sum exp(o/T - max_o) * (e/T - max_e)
        for (int64_t k = 0; k < K; ++k) {
          const acc_t se = static_cast<acc_t>(e[k]) * inv_t - max_e;
          const acc_t po = std::exp(static_cast<acc_t>(o[k]) * inv_t - max_o);
          z_e += std::exp(se);
          z_o += po;
          cross += po * se;
        }
        const acc_t log_z_e = std::log(z_e);
        // -sum p log q = log Z_e - sum p (e/T - max_e)
        const acc_t row_loss = log_z_e - cross / z_o;
        lp[b] = row_loss;
        if (gep != nullptr || gop != nullptr) {
          for (int64_t k = 0; k < K; ++k) {
            const acc_t log_q = static_cast<acc_t>(e[k]) * inv_t - max_e - log_z_e;
            const acc_t p = std::exp(static_cast<acc_t>(o[k]) * inv_t - max_o) / z_o;
            if (gep != nullptr) {
              gep[b * K + k] = static_cast<scalar_t>((std::exp(log_q) - p) * inv_t);
            }
            if (gop != nullptr) {
              gop[b * K + k] = static_cast<scalar_t>(-p * (log_q + row_loss) * inv_t);
            }
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
