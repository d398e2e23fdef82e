// Kernels of the CUDA communicators (cuda_communicators.cpp): the rank-ordered sum of an all-reduce between
// ranks that read each other's buffers, and the [tp, R, V_local] -> [R, V] column gather of the vocab-parallel
// LM head. Each launcher enqueues on `stream` and never synchronizes; every pointer is device memory (a peer
// device's where peer access is on).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace kiln::cuda {

constexpr int kMaxCommRanks = 32;  // tensor-parallel ranks one collective reads (passed by value)

struct CommBuffers {
  const void* p[kMaxCommRanks] = {};
};

// out[i] = in.p[0][i] + in.p[1][i] + ... + in.p[ranks - 1][i], summed in that order in f32 and written as
// `dtype` (kF32 / kF16 / kBF16): the same bits on every rank that runs it. out may not alias any input.
void comm_sum(const CommBuffers& in, int ranks, int64_t n, DType dtype, void* out, cudaStream_t stream);

// out [rows, v] from parts.p[r] [rows, vl] (elements of elem_bytes: 2 or 4): out[i, r * vl + j] = part r [i, j]
// for r * vl + j < v (columns past v dropped). Needs ranks * vl >= v.
void comm_gather_columns(const CommBuffers& parts, int ranks, int64_t rows, int64_t vl, int64_t v, size_t elem_bytes,
                         void* out, cudaStream_t stream);

}  // namespace kiln::cuda
