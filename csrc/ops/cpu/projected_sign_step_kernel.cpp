// CPU kernels of the SIA / ZOOM update steps: one pass over the batch, one read of each
// input and one write, parallel over flat ranges that never straddle a sample boundary
// so the per-sample step and eps are hoisted out of the inner loop.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

#include "../projected_sign_step.h"

namespace vmd_fast::ops {
namespace {

constexpr int64_t kGrain = 1 << 15;

template <typename acc_t>
struct SampleParam {
  at::Tensor storage;  // keeps `data` alive
  const acc_t* data;
  int64_t stride;  // 0: one value for the batch; 1: one value per sample
  acc_t at(int64_t n) const { return data[n * stride]; }
};

template <typename acc_t>
SampleParam<acc_t> sample_param(const at::Tensor& p) {
  const at::Tensor t =
      p.to(at::kCPU, c10::CppTypeToScalarType<acc_t>::value).contiguous().reshape({-1});
  return {t, t.const_data_ptr<acc_t>(), t.numel() == 1 ? 0 : 1};
}

// Calls body(n, begin, end) on flat element ranges [begin, end) lying inside sample n.
template <typename Body>
void for_each_sample_range(int64_t numel, int64_t inner, const Body& body) {
  at::parallel_for(0, numel, kGrain, [&](int64_t begin, int64_t end) {
    int64_t i = begin;
    while (i < end) {
      const int64_t n = i / inner;
      const int64_t stop = std::min(end, (n + 1) * inner);
      body(n, i, stop);
      i = stop;
    }
  });
}

template <typename acc_t>
inline acc_t sign_of(acc_t g) {
  return static_cast<acc_t>(g > acc_t(0)) - static_cast<acc_t>(g < acc_t(0));
}

// Runs `kernel(inputs..., out)` on layouts the kernel can walk as flat memory; other
// layouts go through contiguous copies and the result is copied into `out`.
template <typename Kernel>
void with_dense_layout(std::vector<at::Tensor> inputs, const at::Tensor& out,
                       const Kernel& kernel) {
  std::vector<at::Tensor> all(inputs);
  all.push_back(out);
  if (samples_are_dense_blocks(all)) {
    kernel(inputs, out);
    return;
  }
  for (auto& t : inputs) {
    t = t.contiguous();
  }
  auto tmp = at::empty(out.sizes(), out.options());
  kernel(inputs, tmp);
  out.copy_(tmp);
}

void projected_sign_step_into_cpu(const at::Tensor& x, const at::Tensor& grad,
                                  const at::Tensor& origin, const at::Tensor& step,
                                  const at::Tensor& eps, double lo, double hi,
                                  const at::Tensor& out) {
  check_projected_sign_step(x, grad, origin, step, eps, out);
  TORCH_CHECK(x.is_cpu(), "x must be a CPU tensor, got ", x.device());
  if (x.numel() == 0) {
    return;
  }
  const int64_t inner = inner_size(x);
  with_dense_layout({x, grad, origin}, out, [&](const std::vector<at::Tensor>& in,
                                                const at::Tensor& dst) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, x.scalar_type(), "projected_sign_step_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto s = sample_param<acc_t>(step);
          const auto e = sample_param<acc_t>(eps);
          const auto lo_ = static_cast<acc_t>(lo);
          const auto hi_ = static_cast<acc_t>(hi);
          const scalar_t* xp = in[0].const_data_ptr<scalar_t>();
          const scalar_t* gp = in[1].const_data_ptr<scalar_t>();
          const scalar_t* op = in[2].const_data_ptr<scalar_t>();
          scalar_t* outp = dst.mutable_data_ptr<scalar_t>();
          for_each_sample_range(x.numel(), inner, [&](int64_t n, int64_t begin, int64_t end) {
            const acc_t step_n = s.at(n);
            const acc_t eps_n = e.at(n);
            for (int64_t i = begin; i < end; ++i) {
              const acc_t o = static_cast<acc_t>(op[i]);
              acc_t v = static_cast<acc_t>(xp[i]) + step_n * sign_of(static_cast<acc_t>(gp[i]));
              v = std::min(std::max(v, o - eps_n), o + eps_n);
              outp[i] = static_cast<scalar_t>(std::min(std::max(v, lo_), hi_));
            }
          });
        });
  });
}

void clamp_gd_step_into_cpu(const at::Tensor& w, const at::Tensor& grad, const at::Tensor& lr,
                            const at::Tensor& eps, const at::Tensor& out) {
  check_clamp_gd_step(w, grad, lr, eps, out);
  TORCH_CHECK(w.is_cpu(), "w must be a CPU tensor, got ", w.device());
  if (w.numel() == 0) {
    return;
  }
  const int64_t inner = inner_size(w);
  with_dense_layout({w, grad}, out, [&](const std::vector<at::Tensor>& in,
                                        const at::Tensor& dst) {
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, w.scalar_type(), "clamp_gd_step_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto l = sample_param<acc_t>(lr);
          const auto e = sample_param<acc_t>(eps);
          const scalar_t* wp = in[0].const_data_ptr<scalar_t>();
          const scalar_t* gp = in[1].const_data_ptr<scalar_t>();
          scalar_t* outp = dst.mutable_data_ptr<scalar_t>();
          for_each_sample_range(w.numel(), inner, [&](int64_t n, int64_t begin, int64_t end) {
            const acc_t lr_n = l.at(n);
            const acc_t eps_n = e.at(n);
            for (int64_t i = begin; i < end; ++i) {
              const acc_t v = static_cast<acc_t>(wp[i]) - lr_n * static_cast<acc_t>(gp[i]);
              outp[i] = static_cast<scalar_t>(std::min(std::max(v, -eps_n), eps_n));
            }
          });
        });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CPU, m) {
  VMD_FAST_REGISTER_STEP_OPS(m, projected_sign_step_into_cpu, clamp_gd_step_into_cpu);
}

}  // namespace vmd_fast::ops
