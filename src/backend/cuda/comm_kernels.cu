#include "backend/cuda/comm_kernels.h"

#include <algorithm>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/float_types.cuh"

namespace kiln::cuda {

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, 65535));
}

template <typename T>
__global__ void sum_kernel(CommBuffers in, int ranks, int64_t n, T* out) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.0f;
    for (int r = 0; r < ranks; ++r) s = __fadd_rn(s, to_f32(static_cast<const T*>(in.p[r])[i]));
    out[i] = from_f32<T>(s);
  }
}

template <typename T>
__global__ void gather_columns_kernel(CommBuffers parts, int64_t rows, int64_t vl, int64_t v, T* out) {
  const int64_t n = rows * v;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = i / v, col = i - row * v;
    const int64_t r = col / vl, j = col - r * vl;
    out[i] = static_cast<const T*>(parts.p[r])[row * vl + j];
  }
}

}  // namespace

void comm_sum(const CommBuffers& in, int ranks, int64_t n, DType dtype, void* out, cudaStream_t stream) {
  KILN_CHECK(ranks >= 1 && ranks <= kMaxCommRanks, "comm_sum: rank count out of range");
  if (n <= 0) return;
  switch (dtype) {
    case DType::kF32:
      sum_kernel<float><<<blocks_for(n), kThreads, 0, stream>>>(in, ranks, n, static_cast<float*>(out));
      break;
    case DType::kF16:
      sum_kernel<__half><<<blocks_for(n), kThreads, 0, stream>>>(in, ranks, n, static_cast<__half*>(out));
      break;
    case DType::kBF16:
      sum_kernel<__nv_bfloat16><<<blocks_for(n), kThreads, 0, stream>>>(in, ranks, n,
                                                                        static_cast<__nv_bfloat16*>(out));
      break;
    default:
      KILN_CHECK(false, std::string("all_reduce_sum: dtype ") + dtype_name(dtype) + " (f32, f16 or bf16)");
  }
  KILN_CUDA_CHECK(cudaGetLastError());
}

void comm_gather_columns(const CommBuffers& parts, int ranks, int64_t rows, int64_t vl, int64_t v, size_t elem_bytes,
                         void* out, cudaStream_t stream) {
  KILN_CHECK(ranks >= 1 && ranks <= kMaxCommRanks && vl > 0 && ranks * vl >= v,
             "all_gather_columns: the ranks' columns do not cover the output");
  const int64_t n = rows * v;
  if (n <= 0) return;
  if (elem_bytes == 4) {
    gather_columns_kernel<uint32_t><<<blocks_for(n), kThreads, 0, stream>>>(parts, rows, vl, v,
                                                                           static_cast<uint32_t*>(out));
  } else {
    KILN_CHECK(elem_bytes == 2, "all_gather_columns: elements of 2 or 4 bytes");
    gather_columns_kernel<uint16_t><<<blocks_for(n), kThreads, 0, stream>>>(parts, rows, vl, v,
                                                                           static_cast<uint16_t*>(out));
  }
  KILN_CUDA_CHECK(cudaGetLastError());
}

}  // namespace kiln::cuda
