// Shared by the attention kernels' tests (cuda_attention_test.cpp, cuda_prefill_sm90_test.cpp): CUDA calls
// checked as test assertions, device memory and streams freed at scope exit, the CPU reference's thread pool,
// and fast random data for pools of tens of millions of elements.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "backend/attention_cases.h"
#include "core/thread_pool.h"

namespace kiln::cuda::kernel_test {

inline std::string cuda_err(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

#define CUDA_ASSERT(call)                                                                  \
  do {                                                                                     \
    const cudaError_t kiln_e_ = (call);                                                    \
    ASSERT_EQ(kiln_e_, cudaSuccess) << #call << " -> " << ::kiln::cuda::kernel_test::cuda_err(kiln_e_); \
  } while (0)

// Device memory freed (and the free checked) at scope exit.
struct DevMem {
  void* p = nullptr;
  size_t bytes = 0;
  DevMem() = default;
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  ~DevMem() {
    if (p) {
      EXPECT_EQ(cudaFree(p), cudaSuccess);
    }
  }
};

// Allocates and (when src) uploads.
#define DEV_ALLOC(mem, n, src)                                                             \
  do {                                                                                     \
    (mem).bytes = (n);                                                                     \
    CUDA_ASSERT(cudaMalloc(&(mem).p, std::max<size_t>((mem).bytes, 16)));                  \
    if (src) CUDA_ASSERT(cudaMemcpy((mem).p, (src), (mem).bytes, cudaMemcpyHostToDevice)); \
  } while (0)

struct Stream {
  cudaStream_t s = nullptr;
  ~Stream() {
    if (s) {
      EXPECT_EQ(cudaStreamDestroy(s), cudaSuccess);
    }
  }
};

inline ThreadPool& ref_pool() {
  static ThreadPool pool(0);
  return pool;
}

inline std::string describe(const std::vector<test::SeqSpec>& specs) {
  std::string s = "seqs (new/context):";
  for (const test::SeqSpec& x : specs) s += " " + std::to_string(x.num_new) + "/" + std::to_string(x.context_len);
  return s;
}

// Fast uniform-ish random floats.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed * 0x9E3779B97F4A7C15ull + 1) {}
  uint64_t next() {
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return s;
  }
  // Sum of two uniforms in [-a, a]: triangular, mean 0, never exactly 0 in practice.
  float sym(float a) {
    const float u = static_cast<float>(next() >> 40) * (1.0f / 16777216.0f);
    const float v = static_cast<float>(next() >> 40) * (1.0f / 16777216.0f);
    return (u + v - 1.0f) * a;
  }
};

}  // namespace kiln::cuda::kernel_test
