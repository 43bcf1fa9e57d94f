// Row kernels of the CPU SSIM and CLIP-consistency ops, compiled twice by the compiler's
// function multi-versioning: once for x86-64-v3 (AVX2 + FMA) and once for the baseline,
// with the version picked at load time for the CPU at hand. The loops run along image rows
// over plain float/double arrays whose lengths `n` are multiples of kRowLanes (callers
// pad), eight outputs at a time with the window taps accumulated in registers.
#pragma once

#include <cstdint>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define VMD_FAST_SIMD_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VMD_FAST_SIMD_CLONES
#endif

namespace vmd_fast::ops::cpu_rows {

constexpr int64_t kRowLanes = 8;

inline int64_t padded(int64_t n) { return (n + kRowLanes - 1) / kRowLanes * kRowLanes; }

// out[q * out_stride + j] = sum_k w[k] * in[q * in_stride + j + k]  (q < nq, j < n)
void blur_along_row(const float* in, int64_t in_stride, int nq, const float* w, int64_t K,
                    int64_t n, float* out, int64_t out_stride);
void blur_along_row(const double* in, int64_t in_stride, int nq, const double* w, int64_t K,
                    int64_t n, double* out, int64_t out_stride);

// out[q * n + j] = sum_k w[k] * in[q * q_stride + (row + k) * n + j], the rows below `row`
// of column-stacked planes (q < nq, j < n).
void blur_down_columns(const float* in, int64_t q_stride, int64_t row, int nq, const float* w,
                       int64_t K, int64_t n, float* out);
void blur_down_columns(const double* in, int64_t q_stride, int64_t row, int nq,
                       const double* w, int64_t K, int64_t n, double* out);

// The transposed blur down the columns, gathered for input row r of an H-row plane from
// the Hv valid rows of each map: out[m * out_stride + j] = sum_k w[k] * maps[m * m_stride
// + (r - k) * n + j] over 0 <= r - k < Hv.
void gather_up_columns(const float* maps, int64_t m_stride, int nm, int64_t r, int64_t Hv,
                       const float* w, int64_t K, int64_t n, float* out, int64_t out_stride);
void gather_up_columns(const double* maps, int64_t m_stride, int nm, int64_t r, int64_t Hv,
                       const double* w, int64_t K, int64_t n, double* out,
                       int64_t out_stride);

// SSIM `s` and its partials (ssim.h) at n positions from the five moments; returns the
// sum of s over the first n_valid positions (the rest is row padding).
double ssim_along_row(const float* m1, const float* m2, const float* m11, const float* m22,
                      const float* m12, int64_t n, int64_t n_valid, float c1, float c2, float* s,
                      float* d1,
                      float* d2, float* d11, float* d12);
double ssim_along_row(const double* m1, const double* m2, const double* m11,
                      const double* m22, const double* m12, int64_t n, int64_t n_valid,
                      double c1, double c2, double* s, double* d1, double* d2, double* d11, double* d12);

// out[j] = scale * (d1[j] + 2 a[j] d11[j] + b[j] d12[j]), the SSIM gradient of one row.
void ssim_gradient_row(const float* a, const float* b, const float* d1, const float* d11,
                       const float* d12, float scale, int64_t n, float* out);
void ssim_gradient_row(const double* a, const double* b, const double* d1, const double* d11,
                       const double* d12, double scale, int64_t n, double* out);

// The soft cross-entropy -sum softmax(o/T) log softmax(e/T) of `rows` contiguous rows of
// K logits each (any K >= 1), one value per row in loss[b], and where ge / go are not null
// its gradients w.r.t. e and o (clip_consistency.h). `scratch` holds 3 K values. The
// float exponential is a vectorised polynomial (relative error below 2e-7).
void soft_cross_entropy_rows(const float* e, const float* o, int64_t rows, int64_t K,
                             float inv_t, float* loss, float* ge, float* go, float* scratch);
void soft_cross_entropy_rows(const double* e, const double* o, int64_t rows, int64_t K,
                             double inv_t, double* loss, double* ge, double* go,
                             double* scratch);

// StyleCLIP's relevance thresholding of one row in place: x[j] <- x[j] * 1(|x[j]| >= thr)
// * scale[j] (scale may be null), returning the sum of squares and the abs-max of the result.
void threshold_row(float* x, int64_t n, float thr, const float* scale, float* sumsq,
                   float* absmax);
void threshold_row(double* x, int64_t n, double thr, const double* scale, double* sumsq,
                   double* absmax);

}  // namespace vmd_fast::ops::cpu_rows
