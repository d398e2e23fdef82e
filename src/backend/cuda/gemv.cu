// Skinny linear layers (decode at small batch): y [m, n] = x [m, k] · Wᵀ (+ bias), m <= kGemvMaxRows,
// W [n, k] row major f16/bf16, f32 accumulation. At m = 1..4 a linear layer is a pass over W: bound by
// memory bandwidth, not math, so the kernel is built to keep HBM busy: each warp owns output rows, each
// lane streams 16-byte pieces of a W row with several loads in flight before using any, x (a few KB) comes
// through L1, and one warp-shuffle sum per output row ends it. No shared memory, no tensor cores.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <string>

#include "backend/cuda/float_types.cuh"
#include "backend/cuda/gemv.h"
#include "core/status.h"

namespace kiln::cuda {

namespace {

constexpr int kWarps = 8;      // warps per block
constexpr int kUnroll = 4;     // 16-byte W loads in flight per lane before the first use

__device__ __forceinline__ float2 to_float2(__half2 v) { return __half22float2(v); }
__device__ __forceinline__ float2 to_float2(__nv_bfloat162 v) { return __bfloat1622float2(v); }

// Dot of 8 packed elements of W with 8 of x, accumulated in f32.
template <typename T2>
__device__ __forceinline__ float dot8(const uint4& w, const uint4& x, float acc) {
  const T2* wp = reinterpret_cast<const T2*>(&w);
  const T2* xp = reinterpret_cast<const T2*>(&x);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 a = to_float2(wp[i]), b = to_float2(xp[i]);
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
  }
  return acc;
}

// grid (ceil(n / (kWarps * R)), 1), block 32 * kWarps. Warp w of block b computes output columns
// j = (b * kWarps + w) * R + r, r < R, for all M rows of x. k % 8 == 0; W, x 16-byte aligned rows.
template <typename T, typename T2, typename TY, int M, int R>
__global__ void __launch_bounds__(32 * kWarps) gemv_kernel(const T* __restrict__ x, const T* __restrict__ w,
                                                           const float* __restrict__ bias, TY* __restrict__ y,
                                                           int n, int k) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int j0 = (blockIdx.x * kWarps + warp) * R;
  if (j0 >= n) return;
  const int k8 = k / 8;  // 16-byte pieces per row
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wrow[r] = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(min(j0 + r, n - 1)) * k);
  const uint4* xrow = reinterpret_cast<const uint4*>(x);
  // Main loop: kUnroll pieces per lane per row in flight.
  int i = lane;
  for (; i + 32 * (kUnroll - 1) < k8; i += 32 * kUnroll) {
    uint4 wv[R][kUnroll];
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) wv[r][u] = __ldcs(wrow[r] + i + 32 * u);  // streamed: W is read once
#pragma unroll
    for (int u = 0; u < kUnroll; ++u)
#pragma unroll
      for (int m = 0; m < M; ++m) {
        const uint4 xv = xrow[m * k8 + i + 32 * u];
#pragma unroll
        for (int r = 0; r < R; ++r) acc[m][r] = dot8<T2>(wv[r][u], xv, acc[m][r]);
      }
  }
  for (; i < k8; i += 32) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const uint4 wv = __ldcs(wrow[r] + i);
#pragma unroll
      for (int m = 0; m < M; ++m) acc[m][r] = dot8<T2>(wv, xrow[m * k8 + i], acc[m][r]);
    }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      const int j = j0 + r;
      if (lane == 0 && j < n) y[static_cast<int64_t>(m) * n + j] = from_f32<TY>(v + (bias ? bias[j] : 0.0f));
    }
}

template <typename T, typename T2, typename TY, int M>
void launch_m(const T* x, const T* w, const float* bias, TY* y, int n, int k, cudaStream_t stream) {
  // Two output rows per warp when there are enough of them to fill the GPU twice over, else one.
  if (n >= 2 * kWarps * 132 * 2) {
    constexpr int R = 2;
    gemv_kernel<T, T2, TY, M, R><<<(n + kWarps * R - 1) / (kWarps * R), 32 * kWarps, 0, stream>>>(x, w, bias, y, n, k);
  } else {
    gemv_kernel<T, T2, TY, M, 1><<<(n + kWarps - 1) / kWarps, 32 * kWarps, 0, stream>>>(x, w, bias, y, n, k);
  }
}

template <typename T, typename T2, typename TY>
void launch(const T* x, int64_t m, const T* w, const float* bias, TY* y, int n, int k, cudaStream_t stream) {
  switch (m) {
    case 1: launch_m<T, T2, TY, 1>(x, w, bias, y, n, k, stream); break;
    case 2: launch_m<T, T2, TY, 2>(x, w, bias, y, n, k, stream); break;
    case 3: launch_m<T, T2, TY, 3>(x, w, bias, y, n, k, stream); break;
    default: launch_m<T, T2, TY, 4>(x, w, bias, y, n, k, stream); break;
  }
}

}  // namespace

bool gemv_supported(DType xt, DType wt, DType yt, int64_t m, int64_t n, int64_t k, const void* x, const void* w) {
  const bool types = xt == wt && (xt == DType::kF16 || xt == DType::kBF16) && (yt == xt || yt == DType::kF32);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  return types && aligned && m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && n > 0 && n < (1 << 30) && k < (1 << 30);
}

void gemv(const void* x, DType xt, int64_t m, const void* w, int64_t n, int64_t k, const float* bias, void* y, DType yt,
          cudaStream_t stream) {
  KILN_CHECK(gemv_supported(xt, xt, yt, m, n, k, x, w), "gemv: unsupported shape or types");
  const int ni = static_cast<int>(n), ki = static_cast<int>(k);
  if (xt == DType::kF16) {
    if (yt == DType::kF32) launch<__half, __half2, float>(static_cast<const __half*>(x), m, static_cast<const __half*>(w), bias, static_cast<float*>(y), ni, ki, stream);
    else launch<__half, __half2, __half>(static_cast<const __half*>(x), m, static_cast<const __half*>(w), bias, static_cast<__half*>(y), ni, ki, stream);
  } else {
    if (yt == DType::kF32) launch<__nv_bfloat16, __nv_bfloat162, float>(static_cast<const __nv_bfloat16*>(x), m, static_cast<const __nv_bfloat16*>(w), bias, static_cast<float*>(y), ni, ki, stream);
    else launch<__nv_bfloat16, __nv_bfloat162, __nv_bfloat16>(static_cast<const __nv_bfloat16*>(x), m, static_cast<const __nv_bfloat16*>(w), bias, static_cast<__nv_bfloat16*>(y), ni, ki, stream);
  }
  const cudaError_t e = cudaGetLastError();
  KILN_CHECK(e == cudaSuccess, std::string("gemv: launch failed: ") + cudaGetErrorString(e));
}

}  // namespace kiln::cuda
