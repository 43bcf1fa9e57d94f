// CUDA kernels of the SIA / ZOOM update steps. Memory-bound: each element is read once
// from every input and written once, with 16-byte vector accesses when the pointers
// allow it, so the kernel can run at the device's memory bandwidth.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "../projected_sign_step.h"
#include "cuda_utils.cuh"

namespace vmd_fast::ops {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
struct SampleParam {
  const acc_t* data;  // nullptr: `value` holds the one value of the batch
  acc_t value;
  int64_t stride;
  __device__ __forceinline__ acc_t at(int64_t n) const {
    return data == nullptr ? value : data[n * stride];
  }
};

// A CPU scalar travels as a kernel argument (no host-device copy, capture-safe);
// anything else is read on the device.
template <typename acc_t>
SampleParam<acc_t> sample_param(const at::Tensor& p, const at::Tensor& x,
                                at::Tensor& storage) {
  if (p.is_cpu() && p.numel() == 1) {
    return {nullptr, static_cast<acc_t>(p.item<double>()), 0};
  }
  storage = p.to(x.device(), c10::CppTypeToScalarType<acc_t>::value).contiguous();
  return {storage.const_data_ptr<acc_t>(), acc_t(0), storage.numel() == 1 ? 0 : 1};
}

template <typename scalar_t, int VEC>
struct alignas(sizeof(scalar_t) * VEC) Vec {
  scalar_t v[VEC];
};

template <typename acc_t>
__device__ __forceinline__ acc_t sign_of(acc_t g) {
  return static_cast<acc_t>(g > acc_t(0)) - static_cast<acc_t>(g < acc_t(0));
}

struct ProjectedSign {
  template <typename acc_t>
  __device__ __forceinline__ acc_t operator()(acc_t x, acc_t g, acc_t o, acc_t step, acc_t eps,
                                              acc_t lo, acc_t hi) const {
    acc_t v = x + step * sign_of(g);
    v = cuda::dev_min(cuda::dev_max(v, o - eps), o + eps);
    return cuda::dev_min(cuda::dev_max(v, lo), hi);
  }
};

struct ClampGd {
  template <typename acc_t>
  __device__ __forceinline__ acc_t operator()(acc_t w, acc_t g, acc_t, acc_t lr, acc_t eps, acc_t,
                                              acc_t) const {
    return cuda::dev_min(cuda::dev_max(w - lr * g, -eps), eps);
  }
};

// out[i] = op(x[i], g[i], o[i], p[n], q[n]) with n the sample of element i. `origin` is
// unused (nullptr) by ClampGd. `x` and `out` may alias (in-place update).
template <typename Op, typename scalar_t, int VEC, bool PER_SAMPLE>
__global__ void __launch_bounds__(kThreads)
    step_kernel(const scalar_t* x, const scalar_t* __restrict__ g,
                const scalar_t* __restrict__ origin, scalar_t* out,
                SampleParam<at::opmath_type<scalar_t>> p, SampleParam<at::opmath_type<scalar_t>> q,
                at::opmath_type<scalar_t> lo, at::opmath_type<scalar_t> hi, int64_t numel,
                int64_t inner, Op op) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t nvec = numel / VEC;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t v = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec;
       v += stride) {
    const auto xv = reinterpret_cast<const Vec<scalar_t, VEC>*>(x)[v];
    const auto gv = reinterpret_cast<const Vec<scalar_t, VEC>*>(g)[v];
    Vec<scalar_t, VEC> ov;
    if (origin != nullptr) {
      ov = reinterpret_cast<const Vec<scalar_t, VEC>*>(origin)[v];
    }
    Vec<scalar_t, VEC> result;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const int64_t n = PER_SAMPLE ? (v * VEC + k) / inner : 0;
      const acc_t o = origin != nullptr ? static_cast<acc_t>(ov.v[k]) : acc_t(0);
      result.v[k] = static_cast<scalar_t>(op(static_cast<acc_t>(xv.v[k]),
                                             static_cast<acc_t>(gv.v[k]), o, p.at(n), q.at(n),
                                             lo, hi));
    }
    reinterpret_cast<Vec<scalar_t, VEC>*>(out)[v] = result;
  }
  // The tail that does not fill a vector.
  for (int64_t i = nvec * VEC + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
       i < numel; i += stride) {
    const int64_t n = PER_SAMPLE ? i / inner : 0;
    const acc_t o = origin != nullptr ? static_cast<acc_t>(origin[i]) : acc_t(0);
    out[i] = static_cast<scalar_t>(op(static_cast<acc_t>(x[i]), static_cast<acc_t>(g[i]), o,
                                      p.at(n), q.at(n), lo, hi));
  }
}

template <typename Op, typename scalar_t, int VEC>
void launch_step(const scalar_t* x, const scalar_t* g, const scalar_t* origin, scalar_t* out,
                 SampleParam<at::opmath_type<scalar_t>> p, SampleParam<at::opmath_type<scalar_t>> q,
                 double lo, double hi, int64_t numel, int64_t inner, int device) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t units = std::max<int64_t>(numel / VEC, 1);
  // Enough blocks to fill every SM several times over; the loop covers the rest.
  const int64_t blocks =
      std::min<int64_t>((units + kThreads - 1) / kThreads, int64_t(cuda::sm_count(device)) * 32);
  auto stream = c10::cuda::getCurrentCUDAStream(device);
  const bool per_sample = p.stride != 0 || q.stride != 0;
  if (per_sample) {
    step_kernel<Op, scalar_t, VEC, true><<<blocks, kThreads, 0, stream>>>(
        x, g, origin, out, p, q, acc_t(lo), acc_t(hi), numel, inner, Op{});
  } else {
    step_kernel<Op, scalar_t, VEC, false><<<blocks, kThreads, 0, stream>>>(
        x, g, origin, out, p, q, acc_t(lo), acc_t(hi), numel, inner, Op{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool aligned16(const void* p) { return p == nullptr || reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Shared driver: `origin` is undefined for ClampGd.
template <typename Op>
void step_into_cuda(const at::Tensor& x, const at::Tensor& grad, const at::Tensor& origin,
                    const at::Tensor& p_tensor, const at::Tensor& q_tensor, double lo, double hi,
                    const at::Tensor& out) {
  TORCH_CHECK(x.is_cuda(), "x must be a CUDA tensor, got ", x.device());
  if (x.numel() == 0) {
    return;
  }
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  std::vector<at::Tensor> all{x, grad, out};
  if (origin.defined()) {
    all.push_back(origin);
  }
  const bool direct = samples_are_dense_blocks(all);
  const at::Tensor xs = direct ? x : x.contiguous();
  const at::Tensor gs = direct ? grad : grad.contiguous();
  const at::Tensor os = !origin.defined() || direct ? origin : origin.contiguous();
  const at::Tensor dst = direct ? out : at::empty(out.sizes(), out.options());
  const int64_t inner = inner_size(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "step_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    at::Tensor p_storage, q_storage;
    const auto p = sample_param<acc_t>(p_tensor, x, p_storage);
    const auto q = sample_param<acc_t>(q_tensor, x, q_storage);
    const scalar_t* xp = xs.const_data_ptr<scalar_t>();
    const scalar_t* gp = gs.const_data_ptr<scalar_t>();
    const scalar_t* op = os.defined() ? os.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* outp = dst.mutable_data_ptr<scalar_t>();
    constexpr int kVec = 16 / sizeof(scalar_t);
    const int device = x.get_device();
    if (aligned16(xp) && aligned16(gp) && aligned16(op) && aligned16(outp)) {
      launch_step<Op, scalar_t, kVec>(xp, gp, op, outp, p, q, lo, hi, x.numel(), inner, device);
    } else {
      launch_step<Op, scalar_t, 1>(xp, gp, op, outp, p, q, lo, hi, x.numel(), inner, device);
    }
  });
  if (!direct) {
    out.copy_(dst);
  }
}

void projected_sign_step_into_cuda(const at::Tensor& x, const at::Tensor& grad,
                                   const at::Tensor& origin, const at::Tensor& step,
                                   const at::Tensor& eps, double lo, double hi,
                                   const at::Tensor& out) {
  check_projected_sign_step(x, grad, origin, step, eps, out);
  step_into_cuda<ProjectedSign>(x, grad, origin, step, eps, lo, hi, out);
}

void clamp_gd_step_into_cuda(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& lr,
                             const at::Tensor& eps, const at::Tensor& out) {
  check_clamp_gd_step(w, grad, lr, eps, out);
  step_into_cuda<ClampGd>(w, grad, at::Tensor(), lr, eps, 0.0, 0.0, out);
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CUDA, m) {
  VMD_FAST_REGISTER_STEP_OPS(m, projected_sign_step_into_cuda, clamp_gd_step_into_cuda);
}

}  // namespace vmd_fast::ops
