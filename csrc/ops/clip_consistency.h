// ZOOM's attribute-consistency term (thesis Eq. 3.8): the soft cross-entropy between the
// CLIP image-text distributions of an edit and of its original,
//   loss_b = -sum_k p_bk log q_bk,  p = softmax(orig / T),  q = softmax(edit / T),
// computed row by row in one pass that also yields the gradients
//   d loss_b / d edit_bk = (q_bk - p_bk) / T
//   d loss_b / d orig_bk = -p_bk (log q_bk + loss_b) / T.
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include "common.h"

#include <tuple>

namespace vmd_fast::ops {

// Bits of `grad_mode`: which gradients the forward pass also writes.
constexpr int64_t kClipGradEdit = 1;
constexpr int64_t kClipGradOrig = 2;

inline void check_clip_consistency(const at::Tensor& edit, const at::Tensor& orig,
                                   double temperature, int64_t grad_mode) {
  TORCH_CHECK(edit.dim() == 2, "image_logits_edit must have shape (B, K), got ", edit.sizes());
  check_floating(edit, "image_logits_edit");
  check_same_shape(edit, orig, "image_logits_edit", "image_logits_orig");
  check_same_dtype_device(edit, orig, "image_logits_edit", "image_logits_orig");
  TORCH_CHECK(edit.size(1) > 0, "image_logits_edit must have at least one class");
  TORCH_CHECK(temperature > 0, "temperature must be positive, got ", temperature);
  TORCH_CHECK(grad_mode >= 0 && grad_mode <= 3, "grad_mode must be in [0, 3], got ", grad_mode);
}

// (loss (B,) in the accumulation dtype, d loss / d edit or (0,), d loss / d orig or (0,)).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_clip_consistency_outputs(
    const at::Tensor& edit, int64_t grad_mode) {
  const auto acc_type = at::toOpMathType(edit.scalar_type());
  at::Tensor loss = at::empty({edit.size(0)}, edit.options().dtype(acc_type));
  at::Tensor grad_e = (grad_mode & kClipGradEdit) ? at::empty_like(edit) : at::empty({0}, edit.options());
  at::Tensor grad_o = (grad_mode & kClipGradOrig) ? at::empty_like(edit) : at::empty({0}, edit.options());
  return {loss, grad_e, grad_o};
}

}  // namespace vmd_fast::ops
