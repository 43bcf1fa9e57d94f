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

namespace vmd_fast::ops {
namespace {

// Valid separable blur of NQ per-pixel quantities of one H x W plane with the K-tap
// window `w`. load(i, rows) writes the NQ quantities of input row i to rows[q * W + j];
// emit(i, blurred) receives output row i as blurred[q * Wv + j].
template <int NQ, typename acc_t, typename Load, typename Emit>
void blur_plane(int64_t H, int64_t W, const acc_t* w, int64_t K, std::vector<acc_t>& scratch,
                const Load& load, const Emit& emit) {
  const int64_t Hv = valid_size(H, K);
  const int64_t Wv = valid_size(W, K);
  scratch.resize(NQ * W + NQ * H * Wv + NQ * Wv);
  acc_t* rows = scratch.data();
  acc_t* hbuf = rows + NQ * W;
  acc_t* vbuf = hbuf + NQ * H * Wv;
  for (int64_t i = 0; i < H; ++i) {
    load(i, rows);
    for (int q = 0; q < NQ; ++q) {
      acc_t* h = hbuf + (q * H + i) * Wv;
      std::fill(h, h + Wv, acc_t(0));
      for (int64_t k = 0; k < K; ++k) {
        const acc_t wk = w[k];
        const acc_t* src = rows + q * W + k;
        for (int64_t j = 0; j < Wv; ++j) {
          h[j] += wk * src[j];
        }
      }
    }
  }
  for (int64_t i = 0; i < Hv; ++i) {
    for (int q = 0; q < NQ; ++q) {
      acc_t* v = vbuf + q * Wv;
      std::fill(v, v + Wv, acc_t(0));
      for (int64_t k = 0; k < K; ++k) {
        const acc_t wk = w[k];
        const acc_t* h = hbuf + (q * H + i + k) * Wv;
        for (int64_t j = 0; j < Wv; ++j) {
          v[j] += wk * h[j];
        }
      }
    }
    emit(i, vbuf);
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
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ref = (p / C / per_ref) * C + p % C;
        const scalar_t* xs = xp + p * plane;
        const scalar_t* ys = yp + ref * plane;
        acc_t* maps_p = mp != nullptr ? mp + p * vplane : nullptr;
        double total = 0;
        // Writes S and the partials of one output row whose moments are known.
        auto emit_point = [&](int64_t i, int64_t j, acc_t m1, acc_t m2, acc_t m11, acc_t m22,
                              acc_t m12) {
          const auto pt = ssim_point(m1, m2, m11, m22, m12, c1, c2);
          total += pt.s;
          if (maps_p != nullptr) {
            const int64_t o = i * Wv + j;
            maps_p[o] = pt.d1;
            maps_p[map_stride + o] = pt.d11;
            maps_p[2 * map_stride + o] = pt.d12;
            if (nmaps == 4) {
              maps_p[3 * map_stride + o] = pt.d2;
            }
          }
        };
        if (cached) {
          const acc_t* mu_p = mu.const_data_ptr<acc_t>() + ref * vplane;
          const acc_t* eyy_p = eyy.const_data_ptr<acc_t>() + ref * vplane;
          blur_plane<3, acc_t>(
              H, W, w.data(), K, scratch,
              [&](int64_t i, acc_t* rows) {
                for (int64_t j = 0; j < W; ++j) {
                  const acc_t a = static_cast<acc_t>(xs[i * W + j]);
                  const acc_t b = static_cast<acc_t>(ys[i * W + j]);
                  rows[j] = a;
                  rows[W + j] = a * a;
                  rows[2 * W + j] = a * b;
                }
              },
              [&](int64_t i, const acc_t* v) {
                for (int64_t j = 0; j < Wv; ++j) {
                  emit_point(i, j, v[j], mu_p[i * Wv + j], v[Wv + j], eyy_p[i * Wv + j],
                             v[2 * Wv + j]);
                }
              });
        } else {
          blur_plane<5, acc_t>(
              H, W, w.data(), K, scratch,
              [&](int64_t i, acc_t* rows) {
                for (int64_t j = 0; j < W; ++j) {
                  const acc_t a = static_cast<acc_t>(xs[i * W + j]);
                  const acc_t b = static_cast<acc_t>(ys[i * W + j]);
                  rows[j] = a;
                  rows[W + j] = b;
                  rows[2 * W + j] = a * a;
                  rows[3 * W + j] = b * b;
                  rows[4 * W + j] = a * b;
                }
              },
              [&](int64_t i, const acc_t* v) {
                for (int64_t j = 0; j < Wv; ++j) {
                  emit_point(i, j, v[j], v[Wv + j], v[2 * Wv + j], v[3 * Wv + j],
                             v[4 * Wv + j]);
                }
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
  const auto w = checked_window(window);
  check_ssim_pair(x, y, static_cast<int64_t>(w.size()));
  TORCH_CHECK(x.size(0) == y.size(0), "x and y must have the same batch size, got ",
              x.size(0), " and ", y.size(0));
  TORCH_CHECK(x.is_cpu(), "x must be a CPU tensor, got ", x.device());
  check_ssim_grad_mode(grad_mode, /*cached=*/false);
  return ssim_forward_impl(x, y, at::Tensor(), at::Tensor(), w, C1, C2, grad_mode);
}

std::tuple<at::Tensor, at::Tensor> ssim_cached_forward_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& mu_y, const at::Tensor& e_yy,
    c10::ArrayRef<double> window, double C1, double C2, int64_t grad_mode) {
  const auto w = checked_window(window);
  check_ssim_pair(x, y, static_cast<int64_t>(w.size()));
  check_ssim_cache(y, mu_y, e_yy, static_cast<int64_t>(w.size()));
  TORCH_CHECK(x.is_cpu(), "x must be a CPU tensor, got ", x.device());
  check_ssim_grad_mode(grad_mode, /*cached=*/true);
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
            [&](int64_t i, acc_t* rows) {
              for (int64_t j = 0; j < W; ++j) {
                const acc_t b = static_cast<acc_t>(ys[i * W + j]);
                rows[j] = b;
                rows[W + j] = b * b;
              }
            },
            [&](int64_t i, const acc_t* v) {
              std::copy(v, v + Wv, mup + (p * Hv + i) * Wv);
              std::copy(v + Wv, v + 2 * Wv, ep + (p * Hv + i) * Wv);
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
    at::parallel_for(0, N * C, 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> cols(nmaps * H * Wv);  // after the transposed vertical pass
      std::vector<acc_t> full(nmaps * W);       // one row after the horizontal pass
      for (int64_t p = begin; p < end; ++p) {
        const int64_t ref = (p / C / per_ref) * C + p % C;
        const acc_t scale = gp[p] / static_cast<acc_t>(vplane);
        std::fill(cols.begin(), cols.end(), acc_t(0));
        for (int64_t i = 0; i < Hv; ++i) {
          for (int64_t k = 0; k < K; ++k) {
            const acc_t wk = w[k];
            for (int64_t m = 0; m < nmaps; ++m) {
              const acc_t* src = mp + m * map_stride + p * vplane + i * Wv;
              acc_t* dst = cols.data() + (m * H + i + k) * Wv;
              for (int64_t j = 0; j < Wv; ++j) {
                dst[j] += wk * src[j];
              }
            }
          }
        }
        const scalar_t* xs = xp + p * plane;
        const scalar_t* ys = yp + ref * plane;
        for (int64_t r = 0; r < H; ++r) {
          std::fill(full.begin(), full.end(), acc_t(0));
          for (int64_t m = 0; m < nmaps; ++m) {
            const acc_t* src = cols.data() + (m * H + r) * Wv;
            acc_t* dst = full.data() + m * W;
            for (int64_t k = 0; k < K; ++k) {
              const acc_t wk = w[k];
              for (int64_t j = 0; j < Wv; ++j) {
                dst[j + k] += wk * src[j];
              }
            }
          }
          const acc_t* d1 = full.data();
          const acc_t* d11 = d1 + W;
          const acc_t* d12 = d11 + W;
          for (int64_t q = 0; q < W; ++q) {
            const acc_t a = static_cast<acc_t>(xs[r * W + q]);
            const acc_t b = static_cast<acc_t>(ys[r * W + q]);
            gxp[p * plane + r * W + q] =
                static_cast<scalar_t>(scale * (d1[q] + acc_t(2) * a * d11[q] + b * d12[q]));
          }
          if (gyp != nullptr) {
            const acc_t* d2 = d12 + W;
            for (int64_t q = 0; q < W; ++q) {
              const acc_t a = static_cast<acc_t>(xs[r * W + q]);
              const acc_t b = static_cast<acc_t>(ys[r * W + q]);
              gyp[p * plane + r * W + q] =
                  static_cast<scalar_t>(scale * (d2[q] + acc_t(2) * b * d11[q] + a * d12[q]));
            }
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
