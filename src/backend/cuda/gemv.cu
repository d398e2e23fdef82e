// Skinny linear layers (decode at small batch): y [m, n] = x [m, k] · Wᵀ (+ bias), m <= kGemvMaxRows,
// W [n, k] row major f16/bf16, f32 accumulation. At m = 1..4 a linear layer is a pass over W: bound by
// memory bandwidth, not math, so the kernel is built to keep HBM busy: each warp owns output rows, each
// lane streams 16-byte pieces of a W row with several loads in flight before using any, and one
// warp-shuffle sum per output row ends it. No tensor cores.
//
// Fused forms (gemv.h): the input may be made by the block itself into shared memory — rmsnorm(x) * w_norm,
// or silu(gate) * up — instead of by a kernel of its own, and the result may be added into y (the residual
// stream) instead of stored: the small kernels between a decode step's GEMVs cost ~4 us each, more than
// their bytes. Roundings are those of the separate kernels (ops.cu): the made input is rounded to the
// activation type, the product is rounded before it is added.
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

// Sum over the block's threads; every thread gets it. red: kWarps floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* red) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // red may still be read from the previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kWarps; ++i) total += red[i];
  return total;
}

// Makes the block's input rows in shared memory xs [M][k] (T). kNorm: x [M, k] -> x * rsqrt(mean(x^2) + eps)
// * norm_w, as ops.cu's rmsnorm; kSilu: gate_up [M, 2k] -> silu(gate) * up, as ops.cu's silu_mul.
template <typename T, int M, GemvInput IN>
__device__ __forceinline__ void make_input(const GemvArgs& a, T* xs, float* red) {
  const int k = a.k;
  if constexpr (IN == GemvInput::kRmsNorm) {
    for (int m = 0; m < M; ++m) {
      const T* xr = static_cast<const T*>(a.x) + static_cast<int64_t>(m) * k;
      float ss = 0.0f;
      for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const float v = to_f32(xr[i]);
        ss += v * v;
      }
      const float inv = 1.0f / sqrtf(block_sum(ss, red) / static_cast<float>(k) + a.eps);
      for (int i = threadIdx.x; i < k; i += blockDim.x) xs[m * k + i] = from_f32<T>((to_f32(xr[i]) * inv) * a.norm_w[i]);
    }
  } else {
    for (int m = 0; m < M; ++m) {
      const T* g = static_cast<const T*>(a.x) + static_cast<int64_t>(m) * 2 * k;
      for (int i = threadIdx.x; i < k; i += blockDim.x) {
        const float x = to_f32(g[i]);
        xs[m * k + i] = from_f32<T>(x / (1.0f + expf(-x)) * to_f32(g[k + i]));
      }
    }
  }
  __syncthreads();
}

extern __shared__ __align__(16) unsigned char gemv_smem[];

// grid (ceil(n / (kWarps * R)), 1), block 32 * kWarps. Warp w of block b computes output columns
// j = (b * kWarps + w) * R + r, r < R, for all M rows of x. k % 8 == 0; W, x 16-byte aligned rows.
template <typename T, typename T2, typename TY, int M, int R, GemvInput IN, bool ADD>
__global__ void __launch_bounds__(32 * kWarps) gemv_kernel(const GemvArgs a) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int n = a.n, k = a.k;
  const uint4* xrow;
  if constexpr (IN == GemvInput::kPlain) {
    xrow = reinterpret_cast<const uint4*>(a.x);
  } else {
    __shared__ float red[kWarps];
    T* xs = reinterpret_cast<T*>(gemv_smem);
    make_input<T, M, IN>(a, xs, red);
    xrow = reinterpret_cast<const uint4*>(xs);
  }
  const int j0 = (blockIdx.x * kWarps + warp) * R;
  if (j0 >= n) return;
  const int k8 = k / 8;  // 16-byte pieces per row
  float acc[M][R];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) acc[m][r] = 0.0f;
  const T* w = static_cast<const T*>(a.w);
  const uint4* wrow[R];
#pragma unroll
  for (int r = 0; r < R; ++r) wrow[r] = reinterpret_cast<const uint4*>(w + static_cast<int64_t>(min(j0 + r, n - 1)) * k);
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
  TY* y = static_cast<TY*>(a.y);
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      float v = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
      const int j = j0 + r;
      if (lane == 0 && j < n) {
        const TY out = from_f32<TY>(v + (a.bias ? a.bias[j] : 0.0f));
        TY* dst = y + static_cast<int64_t>(m) * n + j;
        // In place: this lane alone reads and writes y[m, j].
        *dst = ADD ? from_f32<TY>(to_f32(*dst) + to_f32(out)) : out;
      }
    }
}

template <typename T, typename T2, typename TY, int M, GemvInput IN, bool ADD>
void launch_m(const GemvArgs& a, cudaStream_t stream) {
  const size_t smem = IN == GemvInput::kPlain ? 0 : static_cast<size_t>(M) * a.k * sizeof(T);
  // Two output rows per warp when there are enough of them to fill the GPU twice over, else one.
  auto go = [&](auto kernel, int rows_per_warp) {
    if (smem > 48 * 1024) {
      const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      KILN_CHECK(e == cudaSuccess, std::string("gemv: ") + std::to_string(smem) + " bytes of shared memory: " +
                                       cudaGetErrorString(e));
    }
    const unsigned blocks = static_cast<unsigned>((a.n + kWarps * rows_per_warp - 1) / (kWarps * rows_per_warp));
    kernel<<<blocks, 32 * kWarps, smem, stream>>>(a);
  };
  if (a.n >= 2 * kWarps * 132 * 2) go(gemv_kernel<T, T2, TY, M, 2, IN, ADD>, 2);
  else go(gemv_kernel<T, T2, TY, M, 1, IN, ADD>, 1);
}

template <typename T, typename T2, typename TY, GemvInput IN, bool ADD>
void launch_in(const GemvArgs& a, cudaStream_t stream) {
  switch (a.m) {
    case 1: launch_m<T, T2, TY, 1, IN, ADD>(a, stream); break;
    case 2: launch_m<T, T2, TY, 2, IN, ADD>(a, stream); break;
    case 3: launch_m<T, T2, TY, 3, IN, ADD>(a, stream); break;
    default: launch_m<T, T2, TY, 4, IN, ADD>(a, stream); break;
  }
}

template <typename T, typename T2>
void launch(const GemvArgs& a, DType yt, cudaStream_t stream) {
  if (yt == DType::kF32) {
    KILN_CHECK(a.input == GemvInput::kPlain && !a.add, "gemv: f32 output only for a plain linear (the LM head)");
    launch_in<T, T2, float, GemvInput::kPlain, false>(a, stream);
    return;
  }
  switch (a.input) {
    case GemvInput::kPlain:
      if (a.add) launch_in<T, T2, T, GemvInput::kPlain, true>(a, stream);
      else launch_in<T, T2, T, GemvInput::kPlain, false>(a, stream);
      break;
    case GemvInput::kRmsNorm:
      if (a.add) launch_in<T, T2, T, GemvInput::kRmsNorm, true>(a, stream);
      else launch_in<T, T2, T, GemvInput::kRmsNorm, false>(a, stream);
      break;
    case GemvInput::kSiluMul:
      if (a.add) launch_in<T, T2, T, GemvInput::kSiluMul, true>(a, stream);
      else launch_in<T, T2, T, GemvInput::kSiluMul, false>(a, stream);
      break;
  }
}

}  // namespace

bool gemv_supported(DType xt, DType wt, DType yt, int64_t m, int64_t n, int64_t k, const void* x, const void* w) {
  const bool types = xt == wt && (xt == DType::kF16 || xt == DType::kBF16) && (yt == xt || yt == DType::kF32);
  const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && reinterpret_cast<uintptr_t>(w) % 16 == 0;
  // k <= 16384: the made input of 4 rows fits the 227 KB of shared memory a block may have.
  return types && aligned && m >= 1 && m <= kGemvMaxRows && k % 8 == 0 && n > 0 && n < (1 << 30) && k <= 16384;
}

void gemv(const GemvArgs& a, DType xt, DType yt, cudaStream_t stream) {
  KILN_CHECK(gemv_supported(xt, xt, yt, a.m, a.n, a.k, a.x, a.w), "gemv: unsupported shape or types");
  if (xt == DType::kF16) launch<__half, __half2>(a, yt, stream);
  else launch<__nv_bfloat16, __nv_bfloat162>(a, yt, stream);
  const cudaError_t e = cudaGetLastError();
  KILN_CHECK(e == cudaSuccess, std::string("gemv: launch failed: ") + cudaGetErrorString(e));
}

void gemv(const void* x, DType xt, int64_t m, const void* w, int64_t n, int64_t k, const float* bias, void* y, DType yt,
          cudaStream_t stream) {
  GemvArgs a;
  a.x = x;
  a.w = w;
  a.m = static_cast<int>(m);
  a.n = static_cast<int>(n);
  a.k = static_cast<int>(k);
  a.bias = bias;
  a.y = y;
  gemv(a, xt, yt, stream);
}

}  // namespace kiln::cuda
