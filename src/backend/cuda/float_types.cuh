// Device-side conversions between the activation types (float, __half, __nv_bfloat16) and f32, shared by
// the CUDA kernels: widening is exact, narrowing rounds to nearest even (as the CPU's f32_to_f16/_bf16).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

namespace kiln::cuda {

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Rotate-half RoPE of one pair (x1 at dim i, x2 at dim i + rotary_dim / 2) with cos c and sin s:
// y1 = x1 c - x2 s, y2 = x2 c + x1 s in f32 with explicit roundings (no contraction left to the compiler),
// so that qkv_rope_kv_write (ops.cu) and the fused decode attention (attention.cu) give the same bits.
__device__ __forceinline__ void rope_pair(float x1, float x2, float c, float s, float& y1, float& y2) {
  y1 = __fmaf_rn(x1, c, -__fmul_rn(x2, s));
  y2 = __fmaf_rn(x2, c, __fmul_rn(x1, s));
}

}  // namespace kiln::cuda
