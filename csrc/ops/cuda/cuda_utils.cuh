// Small CUDA helpers shared by the vmd_fast kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace vmd_fast::ops::cuda {

inline int sm_count(int device) {
  static int cached[64] = {0};
  if (device < 64 && cached[device] > 0) {
    return cached[device];
  }
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  if (device < 64) {
    cached[device] = count;
  }
  return count;
}

// Device math spelled out per type, so that an `acc_t` expression can never resolve to an
// integer or host overload.
__device__ __forceinline__ float dev_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double dev_abs(double x) { return fabs(x); }
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double dev_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float dev_min(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double dev_min(double a, double b) { return fmin(a, b); }
__device__ __forceinline__ float dev_max(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double dev_max(double a, double b) { return fmax(a, b); }

// Reduction of `value` over a (1-D or 2-D) block with `combine`, valid in thread 0.
// `shared` holds one slot per warp; blocks are whole warps.
template <typename T, typename Combine>
__device__ inline T block_reduce(T value, T* shared, T identity, Combine combine) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    value = combine(value, __shfl_down_sync(0xffffffffu, value, offset));
  }
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int warps = (blockDim.x * blockDim.y + 31) / 32;
  __syncthreads();  // `shared` may still be read by a previous reduction
  if (tid % 32 == 0) {
    shared[tid / 32] = value;
  }
  __syncthreads();
  if (tid < 32) {
    value = tid < warps ? shared[tid] : identity;
    for (int offset = 16; offset > 0; offset >>= 1) {
      value = combine(value, __shfl_down_sync(0xffffffffu, value, offset));
    }
  }
  return value;
}

template <typename T>
__device__ inline T block_sum(T value, T* shared) {
  return block_reduce(value, shared, T(0), [](T a, T b) { return a + b; });
}

// Maximum of non-negative values.
template <typename T>
__device__ inline T block_max(T value, T* shared) {
  return block_reduce(value, shared, T(0), [](T a, T b) { return a > b ? a : b; });
}

}  // namespace vmd_fast::ops::cuda
