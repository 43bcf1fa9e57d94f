// CPU kernels of the StyleCLIP relevance ops. The matrix products go to BLAS; the
// thresholding, channel scaling and normalisation of every attribute row happen in one
// parallel pass over the product instead of a chain of elementwise ops.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "../relevance.h"
#include "simd_rows.h"

namespace vmd_fast::ops {
namespace {

std::tuple<at::Tensor, at::Tensor> relevance_directions_cpu(
    const at::Tensor& M, const at::Tensor& dt, double threshold, c10::string_view normalize,
    const std::optional<at::Tensor>& channel_scale) {
  check_relevance_directions(M, dt, channel_scale);
  const auto mode = parse_relevance_norm(normalize);
  const auto ctype = relevance_compute_type(M.scalar_type());
  // (A, C): the relevance of every channel to every text direction in one GEMM.
  at::Tensor r = at::mm(dt.to(ctype), M.to(ctype).t()).contiguous();
  at::Tensor cs = channel_scale.has_value() ? channel_scale->to(ctype).contiguous() : at::Tensor();
  const int64_t rows = r.size(0);
  const int64_t channels = r.size(1);
  at::Tensor divisor = at::empty({rows}, r.options());
  AT_DISPATCH_FLOATING_TYPES(ctype, "relevance_directions_cpu", [&] {
    scalar_t* rp = r.mutable_data_ptr<scalar_t>();
    scalar_t* dp = divisor.mutable_data_ptr<scalar_t>();
    const scalar_t* csp = cs.defined() ? cs.const_data_ptr<scalar_t>() : nullptr;
    const auto thr = static_cast<scalar_t>(threshold);
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t a = begin; a < end; ++a) {
        scalar_t* row = rp + a * channels;
        scalar_t sumsq = 0;
        scalar_t absmax = 0;
        cpu_rows::threshold_row(row, channels, thr, csp, &sumsq, &absmax);
        scalar_t l2 = std::sqrt(sumsq);
        if (mode == RelevanceNorm::kAbsMaxL2 && absmax > 0) {
          // The official StyleCLIP order: rescale by the abs-max first, then take the
          // norm, which keeps the squares in range for tiny or huge relevances.
          scalar_t scaled = 0;
          for (int64_t c = 0; c < channels; ++c) {
            const scalar_t v = row[c] / absmax;
            scaled += v * v;
          }
          l2 = absmax * std::sqrt(scaled);
        }
        const scalar_t div = relevance_divisor(mode, l2, absmax);
        dp[a] = div;
        const scalar_t inv = div > 0 ? scalar_t(1) / div : scalar_t(0);
        for (int64_t c = 0; c < channels; ++c) {
          row[c] *= inv;
        }
      }
    });
  });
  return {r.to(M.scalar_type()), divisor};
}

void relevance_accumulate_cpu(const at::Tensor& M, const at::Tensor& style_deltas,
                              const at::Tensor& clip_deltas,
                              const std::optional<at::Tensor>& channel_index, bool normalize) {
  check_relevance_accumulate(M, style_deltas, clip_deltas, channel_index);
  if (clip_deltas.size(0) == 0) {
    return;
  }
  if (!channel_index.has_value()) {
    relevance_accumulate_dense(M, style_deltas, clip_deltas, normalize);
    return;
  }
  const at::Tensor inv = inverse_row_norms(clip_deltas, normalize);
  const auto& idx = *channel_index;
  TORCH_CHECK(idx.numel() == 0 || (idx.min().item<int64_t>() >= 0 &&
                                   idx.max().item<int64_t>() < M.size(0)),
              "channel_index values must lie in [0, ", M.size(0), ")");
  // Rows that feed the same channel are summed in their original order, one channel per
  // task, so the result does not depend on the number of threads.
  const auto [sorted, order] = at::sort(idx, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor clip = clip_deltas.contiguous();
  const at::Tensor weights = style_deltas.contiguous();
  const int64_t b = idx.size(0);
  const int64_t d = M.size(1);
  const int64_t* sp = sorted.const_data_ptr<int64_t>();
  const int64_t* op = order.const_data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, M.scalar_type(),
                                  "relevance_accumulate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* cp = clip.const_data_ptr<scalar_t>();
    const scalar_t* wp = weights.const_data_ptr<scalar_t>();
    const acc_t* ip = inv.to(c10::CppTypeToScalarType<acc_t>::value).const_data_ptr<acc_t>();
    scalar_t* mp = M.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, b, 64, [&](int64_t begin, int64_t end) {
      // Each task owns the channel segments that start inside [begin, end).
      std::vector<acc_t> acc(d);
      for (int64_t i = begin; i < end; ++i) {
        if (i > 0 && sp[i] == sp[i - 1]) {
          continue;
        }
        std::fill(acc.begin(), acc.end(), acc_t(0));
        int64_t j = i;
        for (; j < b && sp[j] == sp[i]; ++j) {
          const int64_t row = op[j];
          const acc_t coef = static_cast<acc_t>(wp[row]) * ip[row];
          const scalar_t* src = cp + row * d;
          for (int64_t k = 0; k < d; ++k) {
            acc[k] += coef * static_cast<acc_t>(src[k]);
          }
        }
        scalar_t* dst = mp + sp[i] * d;
        for (int64_t k = 0; k < d; ++k) {
          dst[k] = static_cast<scalar_t>(static_cast<acc_t>(dst[k]) + acc[k]);
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CPU, m) {
  m.impl("relevance_directions", &relevance_directions_cpu);
  m.impl("relevance_accumulate_", &relevance_accumulate_cpu);
}

}  // namespace vmd_fast::ops
