// CUDA kernels of the fused SSIM. A block computes a 16 x 32 tile of one (image,
// channel) plane: a horizontal pass of all moments into shared memory, then the vertical
// pass, SSIM and its partials per position; per-tile sums are reduced without atomics so
// that the result is deterministic. The backward kernel is the transposed blur of the
// partials, tiled the same way.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <tuple>

#include "../ssim.h"
#include "cuda_utils.cuh"

namespace vmd_fast::ops {
namespace {

constexpr int kTileW = 32;  // = blockDim.x (one warp a row)
constexpr int kTileH = 16;
constexpr int kThreadRows = 8;  // = blockDim.y

enum class SsimMode { kPlain, kCached, kStats };

template <SsimMode MODE>
constexpr int num_quantities() {
  return MODE == SsimMode::kPlain ? 5 : (MODE == SsimMode::kCached ? 3 : 2);
}

template <typename acc_t>
struct Window {
  acc_t w[kMaxWindow];
  int size;
};

template <typename acc_t>
Window<acc_t> make_window(const std::vector<double>& window) {
  Window<acc_t> w{};
  w.size = static_cast<int>(window.size());
  for (int k = 0; k < w.size; ++k) {
    w.w[k] = static_cast<acc_t>(window[k]);
  }
  return w;
}

// The window in shared memory: a kernel argument indexed at run time would be copied to
// local memory (a stack frame, and an LDL per tap); the copy here uses constant indices.
template <typename acc_t>
__device__ __forceinline__ void stage_window(const Window<acc_t>& win, acc_t* w_s) {
  if (threadIdx.x == 0 && threadIdx.y == 0) {
#pragma unroll
    for (int k = 0; k < kMaxWindow; ++k) {
      if (k < win.size) w_s[k] = win.w[k];
    }
  }
  __syncthreads();
}

struct Geometry {
  int64_t H, W, Hv, Wv, C, per_ref, tiles_x;
};

template <typename scalar_t, SsimMode MODE>
__global__ void __launch_bounds__(kTileW * kThreadRows)
    ssim_forward_kernel(const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                        const at::opmath_type<scalar_t>* __restrict__ mu_y,
                        const at::opmath_type<scalar_t>* __restrict__ e_yy,
                        Window<at::opmath_type<scalar_t>> win, Geometry g,
                        at::opmath_type<scalar_t> c1, at::opmath_type<scalar_t> c2, int nmaps,
                        int64_t map_stride, at::opmath_type<scalar_t>* __restrict__ partial,
                        at::opmath_type<scalar_t>* __restrict__ maps,
                        at::opmath_type<scalar_t>* __restrict__ out_mu,
                        at::opmath_type<scalar_t>* __restrict__ out_eyy) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int NQ = num_quantities<MODE>();
  extern __shared__ unsigned char smem[];
  acc_t* hbuf = reinterpret_cast<acc_t*>(smem);  // (NQ, kTileH + K - 1, kTileW)
  __shared__ acc_t scratch[32];
  __shared__ acc_t w_s[kMaxWindow];
  stage_window(win, w_s);

  const int K = win.size;
  const int halo_rows = kTileH + K - 1;
  const int64_t p = blockIdx.x;
  const int64_t ref = (p / g.C / g.per_ref) * g.C + p % g.C;
  const int64_t oy = (blockIdx.y / g.tiles_x) * kTileH;
  const int64_t ox = (blockIdx.y % g.tiles_x) * kTileW;
  // In stats mode the plane being blurred is y's own plane p.
  const scalar_t* xs = x + p * g.H * g.W;
  const scalar_t* ys = y + (MODE == SsimMode::kStats ? p : ref) * g.H * g.W;
  const int tx = threadIdx.x;

  for (int r = threadIdx.y; r < halo_rows; r += kThreadRows) {
    const int64_t gi = oy + r;
    const int64_t gj = ox + tx;
    acc_t s[NQ];
#pragma unroll
    for (int q = 0; q < NQ; ++q) s[q] = 0;
    if (gi < g.H && gj < g.Wv) {
      const int64_t base = gi * g.W + gj;
      for (int k = 0; k < K; ++k) {
        const acc_t wk = w_s[k];
        const acc_t b = static_cast<acc_t>(ys[base + k]);
        if constexpr (MODE == SsimMode::kStats) {
          s[0] += wk * b;
          s[1] += wk * b * b;
        } else {
          const acc_t a = static_cast<acc_t>(xs[base + k]);
          if constexpr (MODE == SsimMode::kPlain) {
            s[0] += wk * a;
            s[1] += wk * b;
            s[2] += wk * a * a;
            s[3] += wk * b * b;
            s[4] += wk * a * b;
          } else {
            s[0] += wk * a;
            s[1] += wk * a * a;
            s[2] += wk * a * b;
          }
        }
      }
    }
#pragma unroll
    for (int q = 0; q < NQ; ++q) hbuf[(q * halo_rows + r) * kTileW + tx] = s[q];
  }
  __syncthreads();

  acc_t local = 0;
  const int64_t vplane = g.Hv * g.Wv;
  for (int rr = threadIdx.y; rr < kTileH; rr += kThreadRows) {
    const int64_t oi = oy + rr;
    const int64_t oj = ox + tx;
    if (oi >= g.Hv || oj >= g.Wv) continue;
    acc_t m[NQ];
#pragma unroll
    for (int q = 0; q < NQ; ++q) {
      acc_t v = 0;
      for (int k = 0; k < K; ++k) v += w_s[k] * hbuf[(q * halo_rows + rr + k) * kTileW + tx];
      m[q] = v;
    }
    const int64_t o = oi * g.Wv + oj;
    if constexpr (MODE == SsimMode::kStats) {
      out_mu[p * vplane + o] = m[0];
      out_eyy[p * vplane + o] = m[1];
    } else {
      SsimPoint<acc_t> pt;
      if constexpr (MODE == SsimMode::kPlain) {
        pt = ssim_point(m[0], m[1], m[2], m[3], m[4], c1, c2);
      } else {
        pt = ssim_point(m[0], mu_y[ref * vplane + o], m[1], e_yy[ref * vplane + o], m[2], c1, c2);
      }
      local += pt.s;
      if (nmaps > 0) {
        acc_t* mp = maps + p * vplane + o;
        mp[0] = pt.d1;
        mp[map_stride] = pt.d11;
        mp[2 * map_stride] = pt.d12;
        if (nmaps == 4) mp[3 * map_stride] = pt.d2;
      }
    }
  }
  if constexpr (MODE != SsimMode::kStats) {
    local = cuda::block_sum(local, scratch);
    if (threadIdx.x == 0 && threadIdx.y == 0) {
      partial[p * gridDim.y + blockIdx.y] = local;
    }
  }
}

template <typename scalar_t, int NM>
__global__ void __launch_bounds__(kTileW * kThreadRows)
    ssim_backward_kernel(const at::opmath_type<scalar_t>* __restrict__ grad,
                         const scalar_t* __restrict__ x, const scalar_t* __restrict__ y,
                         const at::opmath_type<scalar_t>* __restrict__ maps,
                         Window<at::opmath_type<scalar_t>> win, Geometry g, int64_t map_stride,
                         scalar_t* __restrict__ gx, scalar_t* __restrict__ gy) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ unsigned char smem[];
  acc_t* cols = reinterpret_cast<acc_t*>(smem);  // (NM, kTileH, kTileW + K - 1)
  __shared__ acc_t w_s[kMaxWindow];
  stage_window(win, w_s);
  const int K = win.size;
  const int halo_cols = kTileW + K - 1;
  const int64_t p = blockIdx.x;
  const int64_t ref = (p / g.C / g.per_ref) * g.C + p % g.C;
  const int64_t oy = (blockIdx.y / g.tiles_x) * kTileH;
  const int64_t ox = (blockIdx.y % g.tiles_x) * kTileW;
  const int64_t vplane = g.Hv * g.Wv;
  const acc_t* mp = maps + p * vplane;

  // Transposed vertical pass: input row i gathers the partials of output rows i - k.
  for (int rr = threadIdx.y; rr < kTileH; rr += kThreadRows) {
    const int64_t gi = oy + rr;
    for (int cc = threadIdx.x; cc < halo_cols; cc += kTileW) {
      const int64_t gj = ox - (K - 1) + cc;
      acc_t s[NM];
#pragma unroll
      for (int m = 0; m < NM; ++m) s[m] = 0;
      if (gj >= 0 && gj < g.Wv && gi < g.H) {
        for (int k = 0; k < K; ++k) {
          const int64_t vi = gi - k;
          if (vi < 0 || vi >= g.Hv) continue;
          const acc_t wk = w_s[k];
#pragma unroll
          for (int m = 0; m < NM; ++m) s[m] += wk * mp[m * map_stride + vi * g.Wv + gj];
        }
      }
#pragma unroll
      for (int m = 0; m < NM; ++m) cols[(m * kTileH + rr) * halo_cols + cc] = s[m];
    }
  }
  __syncthreads();

  const acc_t scale = grad[p] / static_cast<acc_t>(vplane);
  const int tx = threadIdx.x;
  for (int rr = threadIdx.y; rr < kTileH; rr += kThreadRows) {
    const int64_t qi = oy + rr;
    const int64_t qj = ox + tx;
    if (qi >= g.H || qj >= g.W) continue;
    acc_t f[NM];
#pragma unroll
    for (int m = 0; m < NM; ++m) {
      acc_t v = 0;
      for (int k = 0; k < K; ++k) v += w_s[k] * cols[(m * kTileH + rr) * halo_cols + tx + K - 1 - k];
      f[m] = v;
    }
    const int64_t o = qi * g.W + qj;
    const acc_t a = static_cast<acc_t>(x[p * g.H * g.W + o]);
    const acc_t b = static_cast<acc_t>(y[ref * g.H * g.W + o]);
    gx[p * g.H * g.W + o] = static_cast<scalar_t>(scale * (f[0] + acc_t(2) * a * f[1] + b * f[2]));
    if constexpr (NM == 4) {
      gy[p * g.H * g.W + o] = static_cast<scalar_t>(scale * (f[3] + acc_t(2) * b * f[1] + a * f[2]));
    }
  }
}

// Launch configuration shared by the kernels: planes on grid.x (no 65535 limit), tiles
// on grid.y, and the dynamic shared memory opted in when it exceeds the default 48 KiB.
template <typename Kernel>
void launch_tiles(Kernel kernel, int64_t planes, int64_t tiles, size_t smem,
                  const std::function<void(dim3, dim3, size_t, cudaStream_t)>& body) {
  TORCH_CHECK(tiles <= 65535, "image too large for the SSIM kernel tiling (", tiles, " tiles)");
  if (smem > 48 * 1024) {
    C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem)));
  }
  body(dim3(static_cast<unsigned>(planes), static_cast<unsigned>(tiles)),
       dim3(kTileW, kThreadRows), smem, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

template <SsimMode MODE>
std::tuple<at::Tensor, at::Tensor, at::Tensor> run_forward(
    const at::Tensor& x_in, const at::Tensor& y_in, const at::Tensor& mu_y,
    const at::Tensor& e_yy, const std::vector<double>& window, double C1, double C2,
    int64_t grad_mode) {
  const c10::cuda::OptionalCUDAGuard guard(y_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t K = static_cast<int64_t>(window.size());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  Geometry geo{H, W, valid_size(H, K), valid_size(W, K), C, N / y.size(0),
               ceil_div(valid_size(W, K), kTileW)};
  const int64_t tiles = geo.tiles_x * ceil_div(geo.Hv, kTileH);
  const int64_t nmaps = ssim_num_maps(grad_mode);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  const auto acc_opts = x.options().dtype(acc_type);
  const bool stats = MODE == SsimMode::kStats;
  at::Tensor partial = at::empty({stats ? 0 : N * C, tiles}, acc_opts);
  at::Tensor maps = nmaps > 0 ? at::empty({nmaps, N, C, geo.Hv, geo.Wv}, acc_opts)
                              : at::empty({0}, acc_opts);
  at::Tensor out_mu = stats ? at::empty({N, C, geo.Hv, geo.Wv}, acc_opts) : at::Tensor();
  at::Tensor out_eyy = stats ? at::empty({N, C, geo.Hv, geo.Wv}, acc_opts) : at::Tensor();
  const at::Tensor mu = MODE == SsimMode::kCached ? mu_y.to(acc_type).contiguous() : at::Tensor();
  const at::Tensor eyy = MODE == SsimMode::kCached ? e_yy.to(acc_type).contiguous() : at::Tensor();
  if (N * C > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_forward_cuda",
                                    [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const size_t smem = sizeof(acc_t) * num_quantities<MODE>() * (kTileH + K - 1) * kTileW;
      auto kernel = ssim_forward_kernel<scalar_t, MODE>;
      launch_tiles(kernel, N * C, tiles, smem, [&](dim3 grid, dim3 block, size_t sm, cudaStream_t st) {
        kernel<<<grid, block, sm, st>>>(
            x.const_data_ptr<scalar_t>(), y.const_data_ptr<scalar_t>(),
            mu.defined() ? mu.const_data_ptr<acc_t>() : nullptr,
            eyy.defined() ? eyy.const_data_ptr<acc_t>() : nullptr, make_window<acc_t>(window), geo,
            static_cast<acc_t>(C1), static_cast<acc_t>(C2), static_cast<int>(nmaps),
            N * C * geo.Hv * geo.Wv, stats ? nullptr : partial.mutable_data_ptr<acc_t>(),
            nmaps > 0 ? maps.mutable_data_ptr<acc_t>() : nullptr,
            stats ? out_mu.mutable_data_ptr<acc_t>() : nullptr,
            stats ? out_eyy.mutable_data_ptr<acc_t>() : nullptr);
      });
    });
  }
  if (stats) {
    return {out_mu, out_eyy, at::Tensor()};
  }
  const at::Tensor ssim = (partial.sum(1) / static_cast<double>(geo.Hv * geo.Wv)).view({N, C});
  return {ssim, maps, at::Tensor()};
}

std::tuple<at::Tensor, at::Tensor> ssim_forward_cuda(const at::Tensor& x, const at::Tensor& y,
                                                     c10::ArrayRef<double> window, double C1,
                                                     double C2, int64_t grad_mode) {
  const auto w = check_ssim_forward(x, y, window, grad_mode, /*cached=*/false, at::kCUDA);
  auto [ssim, maps, unused] =
      run_forward<SsimMode::kPlain>(x, y, at::Tensor(), at::Tensor(), w, C1, C2, grad_mode);
  return {ssim, maps};
}

std::tuple<at::Tensor, at::Tensor> ssim_cached_forward_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& mu_y, const at::Tensor& e_yy,
    c10::ArrayRef<double> window, double C1, double C2, int64_t grad_mode) {
  const auto w = check_ssim_forward(x, y, window, grad_mode, /*cached=*/true, at::kCUDA);
  check_ssim_cache(y, mu_y, e_yy, static_cast<int64_t>(w.size()));
  auto [ssim, maps, unused] =
      run_forward<SsimMode::kCached>(x, y, mu_y, e_yy, w, C1, C2, grad_mode);
  return {ssim, maps};
}

std::tuple<at::Tensor, at::Tensor> ssim_reference_stats_cuda(const at::Tensor& y,
                                                             c10::ArrayRef<double> window) {
  const auto w = checked_window(window);
  check_ssim_pair(y, y, static_cast<int64_t>(w.size()));
  TORCH_CHECK(y.is_cuda(), "y must be a CUDA tensor, got ", y.device());
  auto [mu, eyy, unused] =
      run_forward<SsimMode::kStats>(y, y, at::Tensor(), at::Tensor(), w, 0.0, 0.0, 0);
  return {mu, eyy};
}

std::tuple<at::Tensor, at::Tensor> ssim_backward_cuda(const at::Tensor& grad,
                                                      const at::Tensor& x_in,
                                                      const at::Tensor& y_in,
                                                      const at::Tensor& maps_in,
                                                      c10::ArrayRef<double> window) {
  const auto w = checked_window(window);
  const int64_t K = static_cast<int64_t>(w.size());
  check_ssim_backward(grad, x_in, y_in, maps_in, K);
  TORCH_CHECK(x_in.is_cuda(), "x must be a CUDA tensor, got ", x_in.device());
  const c10::cuda::OptionalCUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const at::Tensor y = y_in.contiguous();
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  const at::Tensor maps = maps_in.to(acc_type).contiguous();
  const at::Tensor g = grad.to(acc_type).contiguous();
  const int64_t nmaps = maps.size(0);
  Geometry geo{H, W, valid_size(H, K), valid_size(W, K), C, N / y.size(0), ceil_div(W, kTileW)};
  const int64_t tiles = geo.tiles_x * ceil_div(H, kTileH);
  at::Tensor gx = at::empty_like(x);
  at::Tensor gy = nmaps == 4 ? at::empty_like(y) : at::empty({0}, y.options());
  if (N * C == 0) {
    return {gx, gy};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "ssim_backward_cuda",
                                  [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const size_t smem = sizeof(acc_t) * nmaps * kTileH * (kTileW + K - 1);
    const int64_t map_stride = N * C * geo.Hv * geo.Wv;
    auto launch = [&](auto kernel, scalar_t* gyp) {
      launch_tiles(kernel, N * C, tiles, smem, [&](dim3 grid, dim3 block, size_t sm, cudaStream_t st) {
        kernel<<<grid, block, sm, st>>>(g.const_data_ptr<acc_t>(), x.const_data_ptr<scalar_t>(),
                                        y.const_data_ptr<scalar_t>(), maps.const_data_ptr<acc_t>(),
                                        make_window<acc_t>(w), geo, map_stride,
                                        gx.mutable_data_ptr<scalar_t>(), gyp);
      });
    };
    if (nmaps == 4) {
      launch(ssim_backward_kernel<scalar_t, 4>, gy.mutable_data_ptr<scalar_t>());
    } else {
      launch(ssim_backward_kernel<scalar_t, 3>, nullptr);
    }
  });
  return {gx, gy};
}

}  // namespace

TORCH_LIBRARY_IMPL(vmd_fast, CUDA, m) {
  m.impl("ssim_forward", &ssim_forward_cuda);
  m.impl("ssim_cached_forward", &ssim_cached_forward_cuda);
  m.impl("ssim_reference_stats", &ssim_reference_stats_cuda);
  m.impl("ssim_backward", &ssim_backward_cuda);
}

}  // namespace vmd_fast::ops
