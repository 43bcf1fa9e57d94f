// StyleCLIP channel relevance: global edit directions for many text directions at once,
// and the batched accumulation that builds the (channels x clip_dim) relevance matrix.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/string_view.h>

#include <optional>
#include <string>

#include "common.h"

namespace vmd_fast::ops {

enum class RelevanceNorm { kNone, kL2, kAbsMax, kAbsMaxL2 };

inline RelevanceNorm parse_relevance_norm(c10::string_view mode) {
  if (mode == "none") return RelevanceNorm::kNone;
  if (mode == "l2") return RelevanceNorm::kL2;
  if (mode == "absmax") return RelevanceNorm::kAbsMax;
  if (mode == "absmax_l2") return RelevanceNorm::kAbsMaxL2;
  TORCH_CHECK(false, "normalize must be one of 'none', 'l2', 'absmax', 'absmax_l2', got '",
              std::string(mode), "'");
}

// Row divisor of a thresholded relevance row u from its L2 norm and its largest |u|.
// A row with nothing above the threshold is all zeros and gets divisor 0 (the kernels
// then write zeros instead of dividing).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t relevance_divisor(RelevanceNorm mode, acc_t l2, acc_t absmax) {
  switch (mode) {
    case RelevanceNorm::kNone:
      return acc_t(1);
    case RelevanceNorm::kAbsMax:
      return absmax;
    default:  // kL2 and kAbsMaxL2 differ only in how the norm is accumulated
      return l2;
  }
}

// Relevance products are computed in float32 (float64 for double inputs).
inline at::ScalarType relevance_compute_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// 1 / ||row|| of every row (or ones when not normalising). A zero CLIP response (the
// mutation changed nothing) contributes nothing instead of dividing by zero.
inline at::Tensor inverse_row_norms(const at::Tensor& rows, bool normalize) {
  const auto ctype = relevance_compute_type(rows.scalar_type());
  if (!normalize) {
    return at::ones({rows.size(0)}, rows.options().dtype(ctype));
  }
  auto norms = rows.to(ctype).norm(2, {1});
  return at::where(norms > 0, norms.reciprocal(), at::zeros_like(norms));
}

// Dense accumulation, M += style_deltas.T @ diag(1/||clip_b||) @ clip_deltas: one GEMM
// (BLAS or cuBLAS) with the row scaling folded into the style side.
inline void relevance_accumulate_dense(const at::Tensor& M, const at::Tensor& style_deltas,
                                       const at::Tensor& clip_deltas, bool normalize) {
  const at::Tensor inv = inverse_row_norms(clip_deltas, normalize);
  const auto coef = style_deltas * inv.to(style_deltas.scalar_type()).unsqueeze(1);
  M.addmm_(coef.t(), clip_deltas);
}

inline void check_relevance_directions(const at::Tensor& M, const at::Tensor& dt,
                                       const std::optional<at::Tensor>& channel_scale) {
  TORCH_CHECK(M.dim() == 2, "M must have shape (channels, clip_dim), got ", M.sizes());
  TORCH_CHECK(dt.dim() == 2, "dt must have shape (attributes, clip_dim), got ", dt.sizes());
  check_floating(M, "M");
  check_same_dtype_device(M, dt, "M", "dt");
  TORCH_CHECK(M.size(1) == dt.size(1), "dt must have clip_dim ", M.size(1),
              " (the columns of M), got ", dt.size(1));
  if (channel_scale.has_value()) {
    const auto& cs = *channel_scale;
    TORCH_CHECK(cs.dim() == 1 && cs.size(0) == M.size(0), "channel_scale must have shape (",
                M.size(0), ",), got ", cs.sizes());
    check_same_dtype_device(M, cs, "M", "channel_scale");
  }
}

inline void check_relevance_accumulate(const at::Tensor& M, const at::Tensor& style_deltas,
                                       const at::Tensor& clip_deltas,
                                       const std::optional<at::Tensor>& channel_index) {
  TORCH_CHECK(M.dim() == 2, "M must have shape (channels, clip_dim), got ", M.sizes());
  check_floating(M, "M");
  TORCH_CHECK(M.is_contiguous(), "M must be contiguous (it is accumulated in place)");
  TORCH_CHECK(clip_deltas.dim() == 2 && clip_deltas.size(1) == M.size(1),
              "clip_deltas must have shape (B, ", M.size(1), "), got ", clip_deltas.sizes());
  check_same_dtype_device(M, clip_deltas, "M", "clip_deltas");
  check_same_dtype_device(M, style_deltas, "M", "style_deltas");
  const int64_t b = clip_deltas.size(0);
  if (channel_index.has_value()) {
    const auto& idx = *channel_index;
    TORCH_CHECK(idx.scalar_type() == at::kLong, "channel_index must be int64, got ",
                idx.scalar_type());
    TORCH_CHECK(idx.device() == M.device(), "channel_index must be on ", M.device(), ", got ",
                idx.device());
    TORCH_CHECK(idx.dim() == 1 && idx.size(0) == b, "channel_index must have shape (", b,
                ",), got ", idx.sizes());
    TORCH_CHECK(style_deltas.dim() == 1 && style_deltas.size(0) == b,
                "style_deltas must have shape (", b, ",) when channel_index is given, got ",
                style_deltas.sizes());
  } else {
    TORCH_CHECK(style_deltas.dim() == 2 && style_deltas.size(0) == b &&
                    style_deltas.size(1) == M.size(0),
                "style_deltas must have shape (", b, ", ", M.size(0), "), got ",
                style_deltas.sizes());
  }
}

}  // namespace vmd_fast::ops
