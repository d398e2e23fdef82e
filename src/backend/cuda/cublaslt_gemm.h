// Linear layers on the GPU through cuBLASLt: y [m, n] = x [m, k] · Wᵀ (+ bias), W [n, k] row major as the
// engine stores it, x and y row major. In cuBLASLt's column-major terms that is D [n, m] = op(A) · B with
// A = W seen as [k, n] (transposed), B = x seen as [k, m]: no copy or repack of anything.
// Operand types: W and x f16 or bf16 (or both f32: the fp32 mode, computed in true f32, no TF32); y the
// activation type or f32 (the LM head's logits); f32 accumulation; bias through the BIAS epilogue, which
// wants it in y's type: an f32 bias (as engines store them) is converted once and the copy cached.
// The algorithm for each (m, n, k, types, bias) is taken from cuBLASLt's heuristic once and cached.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

#include "core/dtype.h"

namespace kiln::cuda {

class LtGemm {
 public:
  LtGemm();
  ~LtGemm();
  LtGemm(const LtGemm&) = delete;
  LtGemm& operator=(const LtGemm&) = delete;

  // y = x · Wᵀ + bias on `stream`.  x [m, k] xt, w [n, k] wt, bias [n] f32 or null, y [m, n] yt.
  void run(const void* x, DType xt, int64_t m, const void* w, DType wt, int64_t n, int64_t k, const float* bias,
           void* y, DType yt, cudaStream_t stream);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int, bool>;
  Plan& plan_for(const Key& key);

  // The bias in y's type: `bias` itself when y is f32, else a cached converted copy (weights never move).
  const void* bias_in(const float* bias, int64_t n, DType yt, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  std::map<std::pair<const float*, int>, void*> bias_copies_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace kiln::cuda
