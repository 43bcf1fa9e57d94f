// CUDA kernel of the fused CLIP-consistency loss: one warp a row, the three sweeps of the
// CPU kernel with warp-shuffle reductions in between.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../clip_consistency.h"
#include "cuda_utils.cuh"

namespace vmd_fast::ops {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T, typename Combine>
__device__ __forceinline__ T warp_all_reduce(T v, Combine combine) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = combine(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  return v;
}

template <typename scalar_t>
__global__ void __launch_bounds__(32 * kWarpsPerBlock)
    clip_consistency_kernel(const scalar_t* __restrict__ edit, const scalar_t* __restrict__ orig,
                            int64_t B, int64_t K, at::opmath_type<scalar_t> inv_t,
                            at::opmath_type<scalar_t>* __restrict__ loss,
                            scalar_t* __restrict__ grad_e, scalar_t* __restrict__ grad_o) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t b = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.x / 32;
  if (b >= B) return;  // whole warps leave together
  const scalar_t* e = edit + b * K;
  const scalar_t* o = orig + b * K;
  const auto add = [](acc_t a, acc_t c) { return a + c; };
  const auto maxf = [](acc_t a, acc_t c) { return a > c ? a : c; };
  acc_t max_e = -INFINITY, max_o = -INFINITY;
  for (int64_t k = lane; k < K; k += 32) {
    max_e = cuda::dev_max(max_e, static_cast<acc_t>(e[k]) * inv_t);
    max_o = cuda::dev_max(max_o, static_cast<acc_t>(o[k]) * inv_t);
  }
  max_e = warp_all_reduce(max_e, maxf);
  max_o = warp_all_reduce(max_o, maxf);
  acc_t z_e = 0, z_o = 0, cross = 0;
  for (int64_t k = lane; k < K; k += 32) {
    const acc_t se = static_cast<acc_t>(e[k]) * inv_t - max_e;
    const acc_t po = cuda::dev_exp(static_cast<acc_t>(o[k]) * inv_t - max_o);
    z_e += cuda::dev_exp(se);
    z_o += po;
    cross += po * se;
  }
  z_e = warp_all_reduce(z_e, add);
  z_o = warp_all_reduce(z_o, add);
  cross = warp_all_reduce(cross, add);
  const acc_t log_z_e = cuda::dev_log(z_e);
  const acc_t row_loss = log_z_e - cross / z_o;
  if (lane == 0) loss[b] = row_loss;
  if (grad_e == nullptr && grad_o == nullptr) return;
  for (int64_t k = lane; k < K; k += 32) {
    const acc_t log_q = static_cast<acc_t>(e[k]) * inv_t - max_e - log_z_e;
    const acc_t p = cuda::dev_exp(static_cast<acc_t>(o[k]) * inv_t - max_o) / z_o;
    if (grad_e != nullptr) grad_e[b * K + k] = static_cast<scalar_t>((cuda::dev_exp(log_q) - p) * inv_t);
    if (grad_o != nullptr) grad_o[b * K + k] = static_cast<scalar_t>(-p * (log_q + row_loss) * inv_t);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> clip_consistency_forward_cuda(
    const at::Tensor& edit_in, const at::Tensor& orig_in, double temperature, int64_t grad_mode) {
  check_clip_consistency(edit_in, orig_in, temperature, grad_mode);
  TORCH_CHECK(edit_in.is_cuda(), "image_logits_edit must be a CUDA tensor, got ", edit_in.device());
  const c10::cuda::OptionalCUDAGuard guard(edit_in.device());
  const at::Tensor edit = edit_in.contiguous();
  const at::Tensor orig = orig_in.contiguous();
  const int64_t B = edit.size(0), K = edit.size(1);
  auto [loss, grad_e, grad_o] = allocate_clip_consistency_outputs(edit, grad_mode);
  const bool want_e = grad_e.numel() > 0;
  const bool want_o = grad_o.numel() > 0;
  if (B == 0) {
    return {loss, grad_e, grad_o};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, edit.scalar_type(),
                                  "clip_consistency_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t blocks = (B + kWarpsPerBlock - 1) / kWarpsPerBlock;
    clip_consistency_kernel<scalar_t><<<blocks, 32 * kWarpsPerBlock, 0,
                                        c10::cuda::getCurrentCUDAStream()>>>(
        edit.const_data_ptr<scalar_t>(), orig.const_data_ptr<scalar_t>(), B, K,
        acc_t(1) / static_cast<acc_t>(temperature), loss.mutable_data_ptr<acc_t>(),
        want_e ? grad_e.mutable_data_ptr<scalar_t>() : nullptr,
        want_o ? grad_o.mutable_data_ptr<scalar_t>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {loss, grad_e, grad_o};
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CUDA, m) {
  m.impl("clip_consistency_forward", &clip_consistency_forward_cuda);
}

}  // namespace vmd_fast::ops
