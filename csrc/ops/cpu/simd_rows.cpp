// Definitions of the multi-versioned row kernels (simd_rows.h).
#include "simd_rows.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../ssim.h"

// The helpers below run inside the multi-versioned kernels: they must be inlined there to
// be compiled for the clone's ISA (an out-of-line copy would be baseline code).
#if defined(__GNUC__)
#define VMD_FAST_INLINE inline __attribute__((always_inline))
#define VMD_FAST_INLINE_LAMBDA __attribute__((always_inline))
#else
#define VMD_FAST_INLINE inline
#define VMD_FAST_INLINE_LAMBDA
#endif

namespace vmd_fast::ops::cpu_rows {
namespace {

// 32-byte vectors (GCC/Clang vector extensions): ymm registers in the AVX2 clone, pairs of
// xmm registers in the baseline one. A padded row (kRowLanes values) holds whole vectors.
template <typename T>
struct VecType;
template <>
struct VecType<float> {
  typedef float type __attribute__((vector_size(32)));
};
template <>
struct VecType<double> {
  typedef double type __attribute__((vector_size(32)));
};
template <typename T>
using Vec = typename VecType<T>::type;
static_assert(sizeof(Vec<float>) == 32 && sizeof(Vec<double>) == 32);

template <typename T>
constexpr int64_t kVecLanes = 32 / sizeof(T);
static_assert(kRowLanes % kVecLanes<float> == 0 && kRowLanes % kVecLanes<double> == 0);

template <typename T>
VMD_FAST_INLINE Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
VMD_FAST_INLINE void store(T* p, Vec<T> v) {
  std::memcpy(p, &v, sizeof(v));
}

// dst[j] = sum_k w[k] * src[j + k * step] for j < n (n a multiple of kVecLanes), taps
// accumulated in a register.
template <typename T>
inline void correlate(const T* src, int64_t step, const T* w, int64_t k_lo, int64_t k_hi,
                      int64_t n, T* dst) {
  constexpr int64_t L = kVecLanes<T>;
  for (int64_t j = 0; j < n; j += L) {
    Vec<T> acc = {};
    for (int64_t k = k_lo; k <= k_hi; ++k) acc += w[k] * load(src + j + k * step);
    store(dst + j, acc);
  }
}

template <typename T>
inline void blur_along_row_impl(const T* in, int64_t in_stride, int nq, const T* w, int64_t K,
                                int64_t n, T* out, int64_t out_stride) {
  for (int q = 0; q < nq; ++q) correlate(in + q * in_stride, 1, w, 0, K - 1, n, out + q * out_stride);
}

template <typename T>
inline void blur_down_columns_impl(const T* in, int64_t q_stride, int64_t row, int nq,
                                   const T* w, int64_t K, int64_t n, T* out) {
  for (int q = 0; q < nq; ++q) correlate(in + q * q_stride + row * n, n, w, 0, K - 1, n, out + q * n);
}

template <typename T>
inline void gather_up_columns_impl(const T* maps, int64_t m_stride, int nm, int64_t r,
                                   int64_t Hv, const T* w, int64_t K, int64_t n, T* out,
                                   int64_t out_stride) {
  // Row r takes w[k] * map row r - k for the k that keep r - k inside [0, Hv); written as a
  // correlation with step -n starting at map row r.
  const int64_t k_lo = r - Hv + 1 > 0 ? r - Hv + 1 : 0;
  const int64_t k_hi = r < K - 1 ? r : K - 1;
  for (int m = 0; m < nm; ++m) {
    correlate(maps + m * m_stride + r * n, -n, w, k_lo, k_hi, n, out + m * out_stride);
  }
}

template <typename T>
inline double ssim_along_row_impl(const T* m1, const T* m2, const T* m11, const T* m22,
                                  const T* m12, int64_t n, int64_t n_valid, T c1, T c2, T* s,
                                  T* d1, T* d2, T* d11, T* d12) {
  constexpr int64_t L = kVecLanes<T>;
  const Vec<T> vc1 = Vec<T>{} + c1, vc2 = Vec<T>{} + c2;
  for (int64_t j = 0; j < n; j += L) {
    const auto p = ssim_point(load(m1 + j), load(m2 + j), load(m11 + j), load(m22 + j),
                              load(m12 + j), vc1, vc2);
    store(s + j, p.s);
    store(d1 + j, p.d1);
    store(d2 + j, p.d2);
    store(d11 + j, p.d11);
    store(d12 + j, p.d12);
  }
  double total = 0;
  for (int64_t j = 0; j < n_valid; ++j) total += s[j];
  return total;
}

template <typename T>
inline void ssim_gradient_row_impl(const T* a, const T* b, const T* d1, const T* d11,
                                   const T* d12, T scale, int64_t n, T* out) {
  constexpr int64_t L = kVecLanes<T>;
  for (int64_t j = 0; j < n; j += L) {
    const Vec<T> g = load(d1 + j) + T(2) * load(a + j) * load(d11 + j) + load(b + j) * load(d12 + j);
    store(out + j, scale * g);
  }
}

// exp(x) = 2^i * exp(f), i = round(x / ln 2), f = x - i ln 2 in [-ln2/2, ln2/2]; exp(f)
// from its degree-6 Taylor polynomial (error < 2e-7 relative over the reduced range).
// Written once for scalars and vectors (the 1.5 * 2^23 trick rounds to nearest).
template <typename V, typename I>
VMD_FAST_INLINE V exp_poly(V x) {
  const V lo = V{} - 87.3f, hi = V{} + 88.7f;
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V t = x * 1.44269504088896341f;
  const V i = (t + 12582912.f) - 12582912.f;
  const V f = (x - i * 0.693145751953125f) - i * 1.428606765330187e-06f;
  V p = V{} + 1.f / 720.f;
  p = p * f + 1.f / 120.f;
  p = p * f + 1.f / 24.f;
  p = p * f + 1.f / 6.f;
  p = p * f + 0.5f;
  p = p * f + 1.f;
  p = p * f + 1.f;
  I bits;
  std::memcpy(&bits, &p, sizeof(bits));
  if constexpr (std::is_same_v<V, float>) {
    bits += static_cast<int32_t>(i) << 23;
  } else {
    bits += __builtin_convertvector(i, I) << 23;
  }
  std::memcpy(&p, &bits, sizeof(bits));
  return p;
}

typedef int32_t VecInt32 __attribute__((vector_size(32)));

template <typename T>
VMD_FAST_INLINE T row_max_impl(const T* x, int64_t n) {
  constexpr int64_t L = kVecLanes<T>;
  T best = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  if (n >= L) {
    Vec<T> acc = load(x);
    for (j = L; j + L <= n; j += L) {
      const Vec<T> v = load(x + j);
      acc = v > acc ? v : acc;
    }
    for (int64_t l = 0; l < L; ++l) best = acc[l] > best ? acc[l] : best;
  }
  for (; j < n; ++j) best = x[j] > best ? x[j] : best;
  return best;
}

// Applies `body(offset, lanes)` over [0, n): whole vectors first, then the scalar tail, so
// one generic lambda serves both (GCC vector extensions mix vectors and scalars freely).
template <typename T, typename Body>
VMD_FAST_INLINE void for_lanes(int64_t n, Body&& body) {
  constexpr int64_t L = kVecLanes<T>;
  int64_t j = 0;
  for (; j + L <= n; j += L) body(j, Vec<T>{});
  for (; j < n; ++j) body(j, T{});
}

template <typename T, typename V>
VMD_FAST_INLINE V load_as(const T* p, V) {
  if constexpr (std::is_same_v<V, T>) {
    return *p;
  } else {
    return load(p);
  }
}

template <typename T, typename V>
VMD_FAST_INLINE void store_as(T* p, V v) {
  if constexpr (std::is_same_v<V, T>) {
    *p = v;
  } else {
    store(p, v);
  }
}

template <typename V>
VMD_FAST_INLINE V exp_lanes(V x) {
  if constexpr (std::is_same_v<V, float>) {
    return exp_poly<float, int32_t>(x);
  } else if constexpr (std::is_same_v<V, Vec<float>>) {
    return exp_poly<Vec<float>, VecInt32>(x);
  } else if constexpr (std::is_same_v<V, double>) {
    return std::exp(x);
  } else {
    V out;
    for (int64_t l = 0; l < kVecLanes<double>; ++l) out[l] = std::exp(x[l]);
    return out;
  }
}

template <typename T, typename V>
VMD_FAST_INLINE T lane_sum(V v) {
  if constexpr (std::is_same_v<V, T>) {
    return v;
  } else {
    T total = 0;
    for (int64_t l = 0; l < kVecLanes<T>; ++l) total += v[l];
    return total;
  }
}

// Per row (clip_consistency.h): sh = (e - max e) / T, q = exp(sh), p = exp((o - max o) / T),
// loss = log Z_e - <p, sh> / Z_o = -sum softmax(o/T) log softmax(e/T). Vector partial sums
// keep the reductions in registers; one pass builds sh, q, p and all three sums.
template <typename T>
VMD_FAST_INLINE void soft_cross_entropy_rows_impl(const T* e_rows, const T* o_rows, int64_t rows,
                                         int64_t K, T inv_t, T* loss, T* ge_rows, T* go_rows,
                                         T* scratch) {
  T* sh = scratch;
  T* q = scratch + K;
  T* p = scratch + 2 * K;
  for (int64_t b = 0; b < rows; ++b) {
    const T* e = e_rows + b * K;
    const T* o = o_rows + b * K;
    const T max_e = row_max_impl(e, K);
    const T max_o = row_max_impl(o, K);
    Vec<T> vz_e = {}, vz_o = {}, vcross = {};
    T z_e = 0, z_o = 0, cross = 0;
    for_lanes<T>(K, [&](int64_t j, auto lane) VMD_FAST_INLINE_LAMBDA {
      using V = decltype(lane);
      const V s = (load_as(e + j, lane) - max_e) * inv_t;
      const V qe = exp_lanes(s);
      const V po = exp_lanes((load_as(o + j, lane) - max_o) * inv_t);
      store_as(sh + j, s);
      store_as(q + j, qe);
      store_as(p + j, po);
      if constexpr (std::is_same_v<V, T>) {
        z_e += qe, z_o += po, cross += po * s;
      } else {
        vz_e += qe, vz_o += po, vcross += po * s;
      }
    });
    z_e += lane_sum<T>(vz_e);
    z_o += lane_sum<T>(vz_o);
    cross += lane_sum<T>(vcross);
    const T log_z_e = std::log(z_e);
    const T row_loss = log_z_e - cross / z_o;
    loss[b] = row_loss;
    const T inv_z_e = T(1) / z_e, inv_z_o = T(1) / z_o;
    if (ge_rows != nullptr) {
      T* ge = ge_rows + b * K;
      for_lanes<T>(K, [&](int64_t j, auto lane) VMD_FAST_INLINE_LAMBDA {
        store_as(ge + j, (load_as(q + j, lane) * inv_z_e - load_as(p + j, lane) * inv_z_o) * inv_t);
      });
    }
    if (go_rows != nullptr) {
      T* go = go_rows + b * K;
      const T shift = row_loss - log_z_e;
      for_lanes<T>(K, [&](int64_t j, auto lane) VMD_FAST_INLINE_LAMBDA {
        const auto pn = load_as(p + j, lane) * inv_z_o;
        store_as(go + j, -pn * (load_as(sh + j, lane) + shift) * inv_t);
      });
    }
  }
}

// StyleCLIP's thresholding of one relevance row (relevance.h): x <- x * 1(|x| >= thr) *
// scale, with the sum of squares and the abs-max of the result in vector accumulators.
template <typename T>
VMD_FAST_INLINE void threshold_row_impl(T* x, int64_t n, T thr, const T* scale, T* sumsq,
                                        T* absmax) {
  Vec<T> vsq = {}, vmax = {};
  T ssq = 0, amax = 0;
  for_lanes<T>(n, [&](int64_t j, auto lane) VMD_FAST_INLINE_LAMBDA {
    using V = decltype(lane);
    const V v = load_as(x + j, lane);
    const V mag = v < 0 ? -v : v;
    V u = mag >= thr ? v : V{} + T(0);
    if (scale != nullptr) u = u * load_as(scale + j, lane);
    const V umag = u < 0 ? -u : u;
    store_as(x + j, u);
    if constexpr (std::is_same_v<V, T>) {
      ssq += u * u;
      amax = umag > amax ? umag : amax;
    } else {
      vsq += u * u;
      vmax = umag > vmax ? umag : vmax;
    }
  });
  for (int64_t l = 0; l < kVecLanes<T>; ++l) amax = vmax[l] > amax ? vmax[l] : amax;
  *sumsq = ssq + lane_sum<T>(vsq);
  *absmax = amax;
}

}  // namespace

VMD_FAST_SIMD_CLONES void blur_along_row(const float* in, int64_t in_stride, int nq,
                                         const float* w, int64_t K, int64_t n, float* out,
                                         int64_t out_stride) {
  blur_along_row_impl(in, in_stride, nq, w, K, n, out, out_stride);
}
VMD_FAST_SIMD_CLONES void blur_along_row(const double* in, int64_t in_stride, int nq,
                                         const double* w, int64_t K, int64_t n, double* out,
                                         int64_t out_stride) {
  blur_along_row_impl(in, in_stride, nq, w, K, n, out, out_stride);
}

VMD_FAST_SIMD_CLONES void blur_down_columns(const float* in, int64_t q_stride, int64_t row,
                                            int nq, const float* w, int64_t K, int64_t n,
                                            float* out) {
  blur_down_columns_impl(in, q_stride, row, nq, w, K, n, out);
}
VMD_FAST_SIMD_CLONES void blur_down_columns(const double* in, int64_t q_stride, int64_t row,
                                            int nq, const double* w, int64_t K, int64_t n,
                                            double* out) {
  blur_down_columns_impl(in, q_stride, row, nq, w, K, n, out);
}

VMD_FAST_SIMD_CLONES void gather_up_columns(const float* maps, int64_t m_stride, int nm,
                                            int64_t r, int64_t Hv, const float* w, int64_t K,
                                            int64_t n, float* out, int64_t out_stride) {
  gather_up_columns_impl(maps, m_stride, nm, r, Hv, w, K, n, out, out_stride);
}
VMD_FAST_SIMD_CLONES void gather_up_columns(const double* maps, int64_t m_stride, int nm,
                                            int64_t r, int64_t Hv, const double* w, int64_t K,
                                            int64_t n, double* out, int64_t out_stride) {
  gather_up_columns_impl(maps, m_stride, nm, r, Hv, w, K, n, out, out_stride);
}

VMD_FAST_SIMD_CLONES double ssim_along_row(const float* m1, const float* m2, const float* m11,
                                           const float* m22, const float* m12, int64_t n,
                                           int64_t n_valid, float c1, float c2, float* s, float* d1, float* d2,
                                           float* d11, float* d12) {
  return ssim_along_row_impl(m1, m2, m11, m22, m12, n, n_valid, c1, c2, s, d1, d2, d11, d12);
}
VMD_FAST_SIMD_CLONES double ssim_along_row(const double* m1, const double* m2,
                                           const double* m11, const double* m22,
                                           const double* m12, int64_t n, int64_t n_valid,
                                           double c1, double c2, double* s, double* d1, double* d2, double* d11,
                                           double* d12) {
  return ssim_along_row_impl(m1, m2, m11, m22, m12, n, n_valid, c1, c2, s, d1, d2, d11, d12);
}

VMD_FAST_SIMD_CLONES void ssim_gradient_row(const float* a, const float* b, const float* d1,
                                            const float* d11, const float* d12, float scale,
                                            int64_t n, float* out) {
  ssim_gradient_row_impl(a, b, d1, d11, d12, scale, n, out);
}
VMD_FAST_SIMD_CLONES void ssim_gradient_row(const double* a, const double* b, const double* d1,
                                            const double* d11, const double* d12, double scale,
                                            int64_t n, double* out) {
  ssim_gradient_row_impl(a, b, d1, d11, d12, scale, n, out);
}

VMD_FAST_SIMD_CLONES void soft_cross_entropy_rows(const float* e, const float* o,
                                                 int64_t rows, int64_t K, float inv_t,
                                                 float* loss, float* ge, float* go,
                                                 float* scratch) {
  soft_cross_entropy_rows_impl(e, o, rows, K, inv_t, loss, ge, go, scratch);
}
VMD_FAST_SIMD_CLONES void soft_cross_entropy_rows(const double* e, const double* o,
                                                 int64_t rows, int64_t K, double inv_t,
                                                 double* loss, double* ge, double* go,
                                                 double* scratch) {
  soft_cross_entropy_rows_impl(e, o, rows, K, inv_t, loss, ge, go, scratch);
}

VMD_FAST_SIMD_CLONES void threshold_row(float* x, int64_t n, float thr, const float* scale,
                                        float* sumsq, float* absmax) {
  threshold_row_impl(x, n, thr, scale, sumsq, absmax);
}
VMD_FAST_SIMD_CLONES void threshold_row(double* x, int64_t n, double thr, const double* scale,
                                        double* sumsq, double* absmax) {
  threshold_row_impl(x, n, thr, scale, sumsq, absmax);
}

}  // namespace vmd_fast::ops::cpu_rows
