// CPU kernels of the fused SSIM. One task per (image, channel) plane: a horizontal then a
// vertical pass of the separable window over all the moments at once (inner loops run
// along image rows, so they vectorise), then SSIM and its partials per position. The
// backward pass is the transposed blur of the stored partials.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "../ssim.h"
#include "simd_rows.h"

namespace vmd_fast::ops {
namespace {

// Valid separable blur of NQ per-pixel quantities of one H x W plane with the K-tap
// window `w`, streamed row by row over rows padded to a multiple of the vector width.
// load(i, rows, stride) writes the NQ quantities of input row i to rows[q * stride + j]
// (j < W; the padding stays zero); emit(i, blurred, stride) receives output row i as
// blurred[q * stride + j] (j < Wv valid, then padding).
template <int NQ, typename acc_t, typename Load, typename Emit>
void blur_plane(int64_t H, int64_t W, const acc_t* w, int64_t K, std::vector<acc_t>& scratch,
                const Load& load, const Emit& emit) {
  const int64_t Hv = valid_size(H, K);
  const int64_t Wv_pad = cpu_rows::padded(valid_size(W, K));
  const int64_t W_pad = Wv_pad + K - 1;
  scratch.assign(NQ * W_pad + NQ * H * Wv_pad + NQ * Wv_pad, acc_t(0));
  acc_t* rows = scratch.data();
  acc_t* hbuf = rows + NQ * W_pad;  // (NQ, H, Wv_pad): every input row blurred along x
  acc_t* vbuf = hbuf + NQ * H * Wv_pad;
  for (int64_t i = 0; i < H; ++i) {
    load(i, rows, W_pad);
    cpu_rows::blur_along_row(rows, W_pad, NQ, w, K, Wv_pad, hbuf + i * Wv_pad, H * Wv_pad);
  }
  for (int64_t i = 0; i < Hv; ++i) {
    cpu_rows::blur_down_columns(hbuf, H * Wv_pad, i, NQ, w, K, Wv_pad, vbuf);
    emit(i, vbuf, Wv_pad);
  }
}

template <typename acc_t>
std::vector<acc_t> window_as(const std::vector<double>& window) {
  return std::vector<acc_t>(window.begin(), window.end());
}

// Forward pass over all planes of x. With `mu_y`/`e_yy` defined, the reference moments
// come from the cache (three blurred quantities instead of five) and y may hold fewer
// images than x.
std::tuple<at::Tensor, at::Tensor> ssim_forward_impl(const at::Tensor& x_in,
                                                     const at::Tensor& y_in,
                                                     const at::Tensor& mu_y,
                                                     const at::Tensor& e_yy,
                                                     const std::vector<double>& window,
                                                     double C1, double C2, int64_t grad_mode) {
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const bool cached = mu_y.defined();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t K = static_cast<int64_t>(window.size());
  const int64_t Hv = valid_size(H, K), Wv = valid_size(W, K);
  const int64_t Wv_pad = cpu_rows::padded(Wv);
  const int64_t per_ref = N / y.size(0);
  const int64_t nmaps = ssim_num_maps(grad_mode);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  at::Tensor ssim = at::empty({N, C}, x.options().dtype(acc_type));
  at::Tensor maps = nmaps > 0 ? at::empty({nmaps, N, C, Hv, Wv}, x.options().dtype(acc_type))
                              : at::empty({0}, x.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_forward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = window_as<acc_t>(window);
    const auto c1 = static_cast<acc_t>(C1), c2 = static_cast<acc_t>(C2);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const at::Tensor mu = cached ? mu_y.to(acc_type).contiguous() : at::Tensor();
    const at::Tensor eyy = cached ? e_yy.to(acc_type).contiguous() : at::Tensor();
    acc_t* sp = ssim.mutable_data_ptr<acc_t>();
    acc_t* mp = nmaps > 0 ? maps.mutable_data_ptr<acc_t>() : nullptr;
    const int64_t plane = H * W, vplane = Hv * Wv, map_stride = N * C * vplane;
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch;
      // S and its four partials for one output row, then the cached reference moments.
      std::vector<acc_t> point_rows(7 * Wv_pad, acc_t(0));
      acc_t* out = point_rows.data();
      acc_t* ref_mu = out + 5 * Wv_pad;
      acc_t* ref_eyy = out + 6 * Wv_pad;
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ref = (p / C / per_ref) * C + p % C;
        const scalar_t* xs = xp + p * plane;
        const scalar_t* ys = yp + ref * plane;
        acc_t* maps_p = mp != nullptr ? mp + p * vplane : nullptr;
        double total = 0;
        auto emit_row = [&](int64_t i, const acc_t* m1, const acc_t* m2, const acc_t* m11,
                            const acc_t* m22, const acc_t* m12) {
          total += cpu_rows::ssim_along_row(m1, m2, m11, m22, m12, Wv_pad, Wv, c1, c2, out,
                                            out + Wv_pad, out + 2 * Wv_pad, out + 3 * Wv_pad,
                                            out + 4 * Wv_pad);
          if (maps_p != nullptr) {
            // Map order: dS/dm1, dS/dm11, dS/dm12[, dS/dm2].
            const acc_t* order[4] = {out + Wv_pad, out + 3 * Wv_pad, out + 4 * Wv_pad,
                                     out + 2 * Wv_pad};
            for (int64_t m = 0; m < nmaps; ++m) {
              std::copy(order[m], order[m] + Wv, maps_p + m * map_stride + i * Wv);
            }
          }
        };
        if (cached) {
          const acc_t* mu_p = mu.const_data_ptr<acc_t>() + ref * vplane;
          const acc_t* eyy_p = eyy.const_data_ptr<acc_t>() + ref * vplane;
          blur_plane<3, acc_t>(
              H, W, w.data(), K, scratch,
              [&](int64_t i, acc_t* rows, int64_t stride) {
                for (int64_t j = 0; j < W; ++j) {
                  const acc_t a = static_cast<acc_t>(xs[i * W + j]);
                  const acc_t b = static_cast<acc_t>(ys[i * W + j]);
                  rows[j] = a;
                  rows[stride + j] = a * a;
                  rows[2 * stride + j] = a * b;
                }
              },
              [&](int64_t i, const acc_t* v, int64_t stride) {
                std::copy(mu_p + i * Wv, mu_p + (i + 1) * Wv, ref_mu);
                std::copy(eyy_p + i * Wv, eyy_p + (i + 1) * Wv, ref_eyy);
                emit_row(i, v, ref_mu, v + stride, ref_eyy, v + 2 * stride);
              });
        } else {
          blur_plane<5, acc_t>(
              H, W, w.data(), K, scratch,
              [&](int64_t i, acc_t* rows, int64_t stride) {
                for (int64_t j = 0; j < W; ++j) {
                  const acc_t a = static_cast<acc_t>(xs[i * W + j]);
                  const acc_t b = static_cast<acc_t>(ys[i * W + j]);
                  rows[j] = a;
                  rows[stride + j] = b;
                  rows[2 * stride + j] = a * a;
                  rows[3 * stride + j] = b * b;
                  rows[4 * stride + j] = a * b;
                }
              },
              [&](int64_t i, const acc_t* v, int64_t stride) {
                emit_row(i, v, v + stride, v + 2 * stride, v + 3 * stride, v + 4 * stride);
              });
        }
        sp[p] = static_cast<acc_t>(total / static_cast<double>(vplane));
      }
    });
  });
  return {ssim, maps};
}

std::tuple<at::Tensor, at::Tensor> ssim_forward_cpu(const at::Tensor& x, const at::Tensor& y,
                                                    c10::ArrayRef<double> window, double C1,
                                                    double C2, int64_t grad_mode) {
  const auto w = check_ssim_forward(x, y, window, grad_mode, /*cached=*/false, at::kCPU);
  return ssim_forward_impl(x, y, at::Tensor(), at::Tensor(), w, C1, C2, grad_mode);
}

std::tuple<at::Tensor, at::Tensor> ssim_cached_forward_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& mu_y, const at::Tensor& e_yy,
    c10::ArrayRef<double> window, double C1, double C2, int64_t grad_mode) {
  const auto w = check_ssim_forward(x, y, window, grad_mode, /*cached=*/true, at::kCPU);
  check_ssim_cache(y, mu_y, e_yy, static_cast<int64_t>(w.size()));
  return ssim_forward_impl(x, y, mu_y, e_yy, w, C1, C2, grad_mode);
}

std::tuple<at::Tensor, at::Tensor> ssim_reference_stats_cpu(const at::Tensor& y_in,
                                                            c10::ArrayRef<double> window) {
  const auto wd = checked_window(window);
  check_ssim_pair(y_in, y_in, static_cast<int64_t>(wd.size()));
  TORCH_CHECK(y_in.is_cpu(), "y must be a CPU tensor, got ", y_in.device());
  const at::Tensor y = y_in.contiguous();
  const int64_t R = y.size(0), C = y.size(1), H = y.size(2), W = y.size(3);
  const int64_t K = static_cast<int64_t>(wd.size());
  const int64_t Hv = valid_size(H, K), Wv = valid_size(W, K);
  const auto acc_type = at::toOpMathType(y.scalar_type());
  at::Tensor mu = at::empty({R, C, Hv, Wv}, y.options().dtype(acc_type));
  at::Tensor eyy = at::empty({R, C, Hv, Wv}, y.options().dtype(acc_type));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, y.scalar_type(),
                                  "ssim_reference_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = window_as<acc_t>(wd);
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    acc_t* mup = mu.mutable_data_ptr<acc_t>();
    acc_t* ep = eyy.mutable_data_ptr<acc_t>();
    at::parallel_for(0, R * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> scratch;
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* ys = yp + p * H * W;
        blur_plane<2, acc_t>(
            H, W, w.data(), K, scratch,
            [&](int64_t i, acc_t* rows, int64_t stride) {
              for (int64_t j = 0; j < W; ++j) {
                const acc_t b = static_cast<acc_t>(ys[i * W + j]);
                rows[j] = b;
                rows[stride + j] = b * b;
              }
            },
            [&](int64_t i, const acc_t* v, int64_t stride) {
              std::copy(v, v + Wv, mup + (p * Hv + i) * Wv);
              std::copy(v + stride, v + stride + Wv, ep + (p * Hv + i) * Wv);
            });
      }
    });
  });
  return {mu, eyy};
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cpu(const at::Tensor& grad,
                                                     const at::Tensor& x_in,
                                                     const at::Tensor& y_in,
                                                     const at::Tensor& maps_in,
                                                     c10::ArrayRef<double> window) {
  const auto wd = checked_window(window);
  const int64_t K = static_cast<int64_t>(wd.size());
  check_ssim_backward(grad, x_in, y_in, maps_in, K);
  TORCH_CHECK(x_in.is_cpu(), "x must be a CPU tensor, got ", x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Hv = valid_size(H, K), Wv = valid_size(W, K);
  const int64_t per_ref = N / y.size(0);
  const int64_t nmaps = maps_in.size(0);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor maps = maps_in.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  at::Tensor gx = at::empty_like(x);
  at::Tensor gy = nmaps == 4 ? at::empty_like(y) : at::empty({0}, y.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_backward_cpu",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto w = window_as<acc_t>(wd);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const acc_t* mp = maps.const_data_ptr<acc_t>();
    const acc_t* gp = g.const_data_ptr<acc_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    scalar_t* gyp = nmaps == 4 ? gy.mutable_data_ptr<scalar_t>() : nullptr;
    const int64_t plane = H * W, vplane = Hv * Wv, map_stride = N * C * vplane;
    // The transposed horizontal blur is a forward blur with the window reversed over rows
    // shifted right by K - 1 zeros.
    std::vector<acc_t> w_rev(w.rbegin(), w.rend());
    const int64_t Wv_pad = cpu_rows::padded(Wv);
    const int64_t W_pad = cpu_rows::padded(W);
    const int64_t shifted_len = W_pad + K - 1;
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      // This plane's partials with padded rows, a shifted row of their vertical
      // transposed blur, its horizontal transposed blur, and the image rows.
      std::vector<acc_t> padded_maps(nmaps * Hv * Wv_pad, acc_t(0));
      std::vector<acc_t> shifted(nmaps * shifted_len, acc_t(0));
      std::vector<acc_t> full(nmaps * W_pad);
      std::vector<acc_t> a(W_pad, acc_t(0)), b(W_pad, acc_t(0)), g(W_pad);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ref = (p / C / per_ref) * C + p % C;
        const acc_t scale = gp[p] / static_cast<acc_t>(vplane);
        for (int64_t m = 0; m < nmaps; ++m) {
          for (int64_t i = 0; i < Hv; ++i) {
            const acc_t* src = mp + m * map_stride + p * vplane + i * Wv;
            std::copy(src, src + Wv, padded_maps.data() + (m * Hv + i) * Wv_pad);
          }
        }
        const scalar_t* xs = xp + p * plane;
        const scalar_t* ys = yp + ref * plane;
        for (int64_t r = 0; r < H; ++r) {
          cpu_rows::gather_up_columns(padded_maps.data(), Hv * Wv_pad, static_cast<int>(nmaps),
                                      r, Hv, w.data(), K, Wv_pad, shifted.data() + K - 1,
                                      shifted_len);
          cpu_rows::blur_along_row(shifted.data(), shifted_len, static_cast<int>(nmaps),
                                   w_rev.data(), K, W_pad, full.data(), W_pad);
          for (int64_t q = 0; q < W; ++q) {
            a[q] = static_cast<acc_t>(xs[r * W + q]);
            b[q] = static_cast<acc_t>(ys[r * W + q]);
          }
          const acc_t* d1 = full.data();
          const acc_t* d11 = d1 + W_pad;
          const acc_t* d12 = d11 + W_pad;
          cpu_rows::ssim_gradient_row(a.data(), b.data(), d1, d11, d12, scale, W_pad, g.data());
          std::copy(g.begin(), g.begin() + W, gxp + p * plane + r * W);
          if (gyp != nullptr) {
            cpu_rows::ssim_gradient_row(b.data(), a.data(), d12 + W_pad, d11, d12, scale, W_pad,
                                        g.data());
            std::copy(g.begin(), g.begin() + W, gyp + p * plane + r * W);
          }
        }
      }
    });
  });
  return {gx, gy};
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CPU, m) {
  m.impl("ssim_forward", &ssim_forward_cpu);
  m.impl("ssim_cached_forward", &ssim_cached_forward_cpu);
  m.impl("ssim_reference_stats", &ssim_reference_stats_cpu);
  m.impl("ssim_backward", &ssim_backward_cpu);
}

}  // namespace vmd_fast::ops
