// Linear layers on the GPU through cuBLASLt: y [m, n] = x [m, k] · Wᵀ (+ bias), W [n, k] row major as the
// engine stores it, x and y row major. In cuBLASLt's column-major terms that is D [n, m] = op(A) · B with
// A = W seen as [k, n] (transposed), B = x seen as [k, m]: no copy or repack of anything.
// Operand types: W and x f16 or bf16 (or both f32: the fp32 mode, computed in true f32, no TF32); y the
// activation type or f32 (the LM head's logits); f32 accumulation; bias through the BIAS epilogue, which
// wants it in y's type: an f32 bias (as engines store them) is converted once and the copy cached.
// The algorithm for each (m, n, k, types, bias) is the one tuned at `kiln build` for the smallest tuned m >= m
// (timed among cuBLASLt's candidates, see tune()), else cuBLASLt's heuristic choice; cached either way.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <string>
#include <tuple>
#include <vector>

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

  // Build-time tuning (cublaslt_tuning.cpp). For each shape and each m of `ms`, times up to 16 of cuBLASLt's
  // candidate algorithms on random data and keeps the fastest; returns the record (JSON text: library version,
  // device, per entry the algorithm and its time next to the heuristic's) and prints a summary to stderr.
  struct TuneShape {
    int64_t n = 0, k = 0;
    DType xt = DType::kF16, wt = DType::kF16, yt = DType::kF16;
    bool bias = false;
    std::vector<int64_t> ms;
  };
  std::string tune(const std::vector<TuneShape>& shapes, const std::string& device, cudaStream_t stream);
  // Takes a record made by tune(); false (and why in *note) when it is for another device or library.
  bool use_record(const std::string& record, const std::string& device, std::string* note);

 private:
  struct Plan {
    cublasLtMatmulDesc_t desc = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulAlgo_t algo{};
  };
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int, bool>;  // m, n, k, xt, wt, yt, bias
  Plan& plan_for(const Key& key);
  // cuBLASLt's candidates for `key` in the order of its heuristic (at most `count`), and a plan without one.
  std::vector<cublasLtMatmulAlgo_t> candidates(const Plan& p, int count) const;
  Plan describe(const Key& key) const;
  static void destroy(Plan& p);

  // Tuned algorithms: (n, k, xt, wt, yt, bias) -> m -> algorithm.
  using ShapeKey = std::tuple<int64_t, int64_t, int, int, int, bool>;
  std::map<ShapeKey, std::map<int64_t, cublasLtMatmulAlgo_t>> tuned_;

  // The bias in y's type: `bias` itself when y is f32, else a cached converted copy (weights never move).
  const void* bias_in(const float* bias, int64_t n, DType yt, cudaStream_t stream);

  cublasLtHandle_t handle_ = nullptr;
  std::map<std::pair<const float*, int>, void*> bias_copies_;
  void* workspace_ = nullptr;
  size_t workspace_bytes_ = 0;
  std::map<Key, Plan> plans_;
};

}  // namespace kiln::cuda
