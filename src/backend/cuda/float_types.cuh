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

}  // namespace kiln::cuda
