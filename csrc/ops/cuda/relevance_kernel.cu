// CUDA kernels of the StyleCLIP relevance ops: cuBLAS for the products, then a single
// launch that thresholds, scales and normalises every attribute row (one block a row).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../relevance.h"
#include "cuda_utils.cuh"

namespace vmd_fast::ops {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ __forceinline__ acc_t thresholded(const acc_t* r, const acc_t* cs, int64_t c,
                                             acc_t threshold) {
  const acc_t v = r[c];
  const acc_t u = cuda::dev_abs(v) >= threshold ? v : acc_t(0);
  return cs != nullptr ? u * cs[c] : u;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    relevance_epilogue_kernel(const acc_t* __restrict__ r, const acc_t* __restrict__ cs,
                              int64_t channels, acc_t threshold, RelevanceNorm mode,
                              scalar_t* __restrict__ out, acc_t* __restrict__ divisor) {
  __shared__ acc_t scratch[32];
  __shared__ acc_t row_l2, row_absmax;
  const acc_t* row = r + blockIdx.x * channels;
  acc_t sumsq = 0;
  acc_t absmax = 0;
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    const acc_t u = thresholded(row, cs, c, threshold);
    sumsq += u * u;
    absmax = cuda::dev_max(absmax, cuda::dev_abs(u));
  }
  sumsq = cuda::block_sum(sumsq, scratch);
  absmax = cuda::block_max(absmax, scratch);
  if (threadIdx.x == 0) {
    row_l2 = cuda::dev_sqrt(sumsq);
    row_absmax = absmax;
  }
  __syncthreads();
  if (mode == RelevanceNorm::kAbsMaxL2 && row_absmax > 0) {
    // The official StyleCLIP order: rescale by the abs-max, then take the norm.
    acc_t scaled = 0;
    for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
      const acc_t u = thresholded(row, cs, c, threshold) / row_absmax;
      scaled += u * u;
    }
    scaled = cuda::block_sum(scaled, scratch);
    if (threadIdx.x == 0) {
      row_l2 = row_absmax * cuda::dev_sqrt(scaled);
    }
    __syncthreads();
  }
  const acc_t div = relevance_divisor(mode, row_l2, row_absmax);
  const acc_t inv = div > 0 ? acc_t(1) / div : acc_t(0);
  for (int64_t c = threadIdx.x; c < channels; c += blockDim.x) {
    out[blockIdx.x * channels + c] = static_cast<scalar_t>(thresholded(row, cs, c, threshold) * inv);
  }
  if (threadIdx.x == 0) {
    divisor[blockIdx.x] = div;
  }
}

std::tuple<at::Tensor, at::Tensor> relevance_directions_cuda(
    const at::Tensor& M, const at::Tensor& dt, double threshold, c10::string_view normalize,
    const std::optional<at::Tensor>& channel_scale) {
  check_relevance_directions(M, dt, channel_scale);
  TORCH_CHECK(M.is_cuda(), "M must be a CUDA tensor, got ", M.device());
  const auto mode = parse_relevance_norm(normalize);
  const c10::cuda::OptionalCUDAGuard guard(M.device());
  const auto ctype = relevance_compute_type(M.scalar_type());
  const at::Tensor r = at::mm(dt.to(ctype), M.to(ctype).t()).contiguous();  // (A, C)
  const at::Tensor cs =
      channel_scale.has_value() ? channel_scale->to(ctype).contiguous() : at::Tensor();
  const int64_t rows = r.size(0);
  const int64_t channels = r.size(1);
  at::Tensor out = at::empty({rows, channels}, M.options());
  at::Tensor divisor = at::empty({rows}, r.options());
  if (rows == 0) {
    return {out, divisor};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, M.scalar_type(),
                                  "relevance_directions_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    relevance_epilogue_kernel<scalar_t, acc_t>
        <<<rows, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            r.const_data_ptr<acc_t>(), cs.defined() ? cs.const_data_ptr<acc_t>() : nullptr,
            channels, static_cast<acc_t>(threshold), mode, out.mutable_data_ptr<scalar_t>(),
            divisor.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {out, divisor};
}

// One block per run of equal channel indices (sorted, stable): the rows of a run are
// summed in their original order, so the result is deterministic without atomics.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads)
    relevance_sparse_kernel(const int64_t* __restrict__ sorted,
                            const int64_t* __restrict__ order,
                            const scalar_t* __restrict__ clip,
                            const scalar_t* __restrict__ weights,
                            const acc_t* __restrict__ inv, scalar_t* __restrict__ M,
                            int64_t batch, int64_t dim, int64_t channels) {
  for (int64_t i = blockIdx.x; i < batch; i += gridDim.x) {
    if (i > 0 && sorted[i] == sorted[i - 1]) {
      continue;
    }
    const int64_t channel = sorted[i];
    CUDA_KERNEL_ASSERT(channel >= 0 && channel < channels);
    for (int64_t d = threadIdx.x; d < dim; d += blockDim.x) {
      acc_t acc = 0;
      for (int64_t j = i; j < batch && sorted[j] == channel; ++j) {
        const int64_t row = order[j];
        acc += static_cast<acc_t>(weights[row]) * inv[row] *
               static_cast<acc_t>(clip[row * dim + d]);
      }
      scalar_t* dst = M + channel * dim + d;
      *dst = static_cast<scalar_t>(static_cast<acc_t>(*dst) + acc);
    }
  }
}

void relevance_accumulate_cuda(const at::Tensor& M, const at::Tensor& style_deltas,
                               const at::Tensor& clip_deltas,
                               const std::optional<at::Tensor>& channel_index, bool normalize) {
  check_relevance_accumulate(M, style_deltas, clip_deltas, channel_index);
  TORCH_CHECK(M.is_cuda(), "M must be a CUDA tensor, got ", M.device());
  const c10::cuda::OptionalCUDAGuard guard(M.device());
  const int64_t batch = clip_deltas.size(0);
  if (batch == 0) {
    return;
  }
  if (!channel_index.has_value()) {
    relevance_accumulate_dense(M, style_deltas, clip_deltas, normalize);
    return;
  }
  const auto [sorted, order] =
      at::sort(*channel_index, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor clip = clip_deltas.contiguous();
  const at::Tensor weights = style_deltas.contiguous();
  const at::Tensor inv = inverse_row_norms(clip, normalize);
  const int64_t blocks = std::min<int64_t>(batch, int64_t(cuda::sm_count(M.get_device())) * 64);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, M.scalar_type(),
                                  "relevance_accumulate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor inv_acc = inv.to(c10::CppTypeToScalarType<acc_t>::value);
    relevance_sparse_kernel<scalar_t, acc_t>
        <<<blocks, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
            sorted.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(),
            clip.const_data_ptr<scalar_t>(), weights.const_data_ptr<scalar_t>(),
            inv_acc.const_data_ptr<acc_t>(), M.mutable_data_ptr<scalar_t>(), batch,
            M.size(1), M.size(0));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CUDA, m) {
  m.impl("relevance_directions", &relevance_directions_cuda);
  m.impl("relevance_accumulate_", &relevance_accumulate_cuda);
}

}  // namespace vmd_fast::ops
