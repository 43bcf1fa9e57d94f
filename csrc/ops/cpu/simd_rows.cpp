// Definitions of the multi-versioned row kernels (simd_rows.h).
#include "simd_rows.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#include "../ssim.h"

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
inline Vec<T> load(const T* p) {
  Vec<T> v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void store(T* p, Vec<T> v) {
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
inline V exp_poly(V x) {
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
inline T row_max_impl(const T* x, int64_t n) {
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

// sum_j x[j] * (y ? y[j] : 1)
template <typename T>
inline T row_dot_impl(const T* x, const T* y, int64_t n) {
  constexpr int64_t L = kVecLanes<T>;
  Vec<T> acc = {};
  int64_t j = 0;
  for (; j + L <= n; j += L) acc += y != nullptr ? load(x + j) * load(y + j) : load(x + j);
  T total = 0;
  for (int64_t l = 0; l < L; ++l) total += acc[l];
  for (; j < n; ++j) total += y != nullptr ? x[j] * y[j] : x[j];
  return total;
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

VMD_FAST_SIMD_CLONES float row_max(const float* x, int64_t n) { return row_max_impl(x, n); }
VMD_FAST_SIMD_CLONES double row_max(const double* x, int64_t n) { return row_max_impl(x, n); }
VMD_FAST_SIMD_CLONES float row_sum(const float* x, int64_t n) { return row_dot_impl<float>(x, nullptr, n); }
VMD_FAST_SIMD_CLONES double row_sum(const double* x, int64_t n) { return row_dot_impl<double>(x, nullptr, n); }
VMD_FAST_SIMD_CLONES float row_dot(const float* x, const float* y, int64_t n) { return row_dot_impl(x, y, n); }
VMD_FAST_SIMD_CLONES double row_dot(const double* x, const double* y, int64_t n) { return row_dot_impl(x, y, n); }

VMD_FAST_SIMD_CLONES void exp_in_place(float* x, int64_t n) {
  constexpr int64_t L = kVecLanes<float>;
  int64_t j = 0;
  for (; j + L <= n; j += L) store(x + j, exp_poly<Vec<float>, VecInt32>(load(x + j)));
  for (; j < n; ++j) x[j] = exp_poly<float, int32_t>(x[j]);
}
void exp_in_place(double* x, int64_t n) {
  for (int64_t j = 0; j < n; ++j) x[j] = std::exp(x[j]);
}

}  // namespace vmd_fast::ops::cpu_rows
