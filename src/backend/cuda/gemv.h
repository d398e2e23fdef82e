// Bandwidth-bound skinny GEMM for decode at batch 1..4 (gemv.cu says how); larger m goes to cuBLASLt.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace kiln::cuda {

constexpr int64_t kGemvMaxRows = 4;

// Whether gemv() takes this linear layer: x and W of one 16-bit type, y that type or f32, m <= kGemvMaxRows,
// k % 8 == 0, x and W 16-byte aligned.
bool gemv_supported(DType xt, DType wt, DType yt, int64_t m, int64_t n, int64_t k, const void* x, const void* w);

// y [m, n] = x [m, k] · Wᵀ + bias (bias [n] f32 or null), W [n, k] of x's type.
void gemv(const void* x, DType xt, int64_t m, const void* w, int64_t n, int64_t k, const float* bias, void* y, DType yt,
          cudaStream_t stream);

}  // namespace kiln::cuda
