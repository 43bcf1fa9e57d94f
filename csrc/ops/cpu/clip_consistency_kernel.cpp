// CPU kernel of the fused CLIP-consistency loss: each task takes a block of rows and runs
// the multi-versioned row kernel (simd_rows.h) on it; half and bfloat16 rows go through
// float buffers of one block.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <tuple>
#include <type_traits>
#include <vector>

#include "../clip_consistency.h"
#include "simd_rows.h"

namespace vmd_fast::ops {
namespace {

// Rows per block: enough work per task, small enough for the float buffers to stay in L1/L2.
constexpr int64_t kBlockRows = 64;

// One block of `rows` rows starting at row b0; `wide` holds 4 * kBlockRows * K values for the
// reduced-precision types (widened inputs, float gradients narrowed back afterwards).
template <typename scalar_t, typename acc_t>
void clip_consistency_block(const scalar_t* ep, const scalar_t* op, int64_t b0, int64_t rows,
                            int64_t K, acc_t inv_t, acc_t* lp, scalar_t* gep, scalar_t* gop,
                            acc_t* scratch, acc_t* wide) {
  const int64_t n = rows * K;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    cpu_rows::soft_cross_entropy_rows(ep + b0 * K, op + b0 * K, rows, K, inv_t, lp + b0,
                                      gep != nullptr ? gep + b0 * K : nullptr,
                                      gop != nullptr ? gop + b0 * K : nullptr, scratch);
  } else {
    acc_t* e = wide;
    acc_t* o = e + n;
    acc_t* ge = o + n;
    acc_t* go = ge + n;
    for (int64_t j = 0; j < n; ++j) {
      e[j] = static_cast<acc_t>(ep[b0 * K + j]);
      o[j] = static_cast<acc_t>(op[b0 * K + j]);
    }
    cpu_rows::soft_cross_entropy_rows(e, o, rows, K, inv_t, lp + b0,
                                      gep != nullptr ? ge : nullptr,
                                      gop != nullptr ? go : nullptr, scratch);
    for (int64_t j = 0; gep != nullptr && j < n; ++j) {
      gep[b0 * K + j] = static_cast<scalar_t>(ge[j]);
    }
    for (int64_t j = 0; gop != nullptr && j < n; ++j) {
      gop[b0 * K + j] = static_cast<scalar_t>(go[j]);
    }
  }
}

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
    constexpr bool kNative = std::is_same_v<scalar_t, acc_t>;
    const acc_t inv_t = acc_t(1) / static_cast<acc_t>(temperature);
    const scalar_t* ep = edit.const_data_ptr<scalar_t>();
    const scalar_t* op = orig.const_data_ptr<scalar_t>();
    acc_t* lp = loss.mutable_data_ptr<acc_t>();
    scalar_t* gep = want_e ? grad_e.mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gop = want_o ? grad_o.mutable_data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, B, kBlockRows, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch(3 * K);
      std::vector<acc_t> wide(kNative ? 0 : 4 * kBlockRows * K);
      for (int64_t b0 = begin; b0 < end; b0 += kBlockRows) {
        clip_consistency_block(ep, op, b0, std::min(kBlockRows, end - b0), K, inv_t, lp, gep, gop,
                               scratch.data(), wide.data());
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
