#include "backend/cuda/cublaslt_gemm.h"

#include <string>

#include "backend/cuda/cuda_check.h"
#include "backend/cuda/kernels.h"

namespace kiln::cuda {

namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF32: return CUDA_R_32F;
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: KILN_CHECK(false, std::string("cuBLASLt GEMM: unsupported dtype ") + dtype_name(t));
  }
  return CUDA_R_32F;
}

}  // namespace

LtGemm::LtGemm() {
  KILN_CUBLAS_CHECK(cublasLtCreate(&handle_));
  // Hopper's fastest kernels want a workspace; 32 MiB is what NVIDIA's own guidance gives for sm_90.
  workspace_bytes_ = 32u << 20;
  KILN_CUDA_CHECK(cudaMalloc(&workspace_, workspace_bytes_));
}

LtGemm::~LtGemm() {
  for (auto& [key, ptr] : bias_copies_) cudaFree(ptr);
  for (auto& [key, p] : plans_) {
    destroy(p);
  }
  cudaFree(workspace_);
  cublasLtDestroy(handle_);
}

void LtGemm::destroy(Plan& p) {
  cublasLtMatrixLayoutDestroy(p.a);
  cublasLtMatrixLayoutDestroy(p.b);
  cublasLtMatrixLayoutDestroy(p.d);
  cublasLtMatmulDescDestroy(p.desc);
}

LtGemm::Plan LtGemm::describe(const Key& key) const {
  const auto [m, n, k, xt_i, wt_i, yt_i, has_bias] = key;
  const DType xt = static_cast<DType>(xt_i), wt = static_cast<DType>(wt_i), yt = static_cast<DType>(yt_i);
  Plan p;
  // f32 operands: plain f32 math (the fp32 mode is for checking against references); else f32 accumulation.
  const cublasComputeType_t compute = CUBLAS_COMPUTE_32F;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F));
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (has_bias) {
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof(epi)));
  }
  // Column major: A = W as [k, n] (ld k), B = x as [k, m] (ld k), D = y as [n, m] (ld n).
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, cuda_type(wt), k, n, k));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, cuda_type(xt), k, m, k));
  KILN_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.d, cuda_type(yt), n, m, n));
  return p;
}

std::vector<cublasLtMatmulAlgo_t> LtGemm::candidates(const Plan& p, int count) const {
  cublasLtMatmulPreference_t pref;
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  KILN_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                         &workspace_bytes_, sizeof(workspace_bytes_)));
  std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(count));
  int found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(handle_, p.desc, p.a, p.b, p.d, p.d, pref, count, results.data(), &found);
  cublasLtMatmulPreferenceDestroy(pref);
  std::vector<cublasLtMatmulAlgo_t> algos;
  if (st == CUBLAS_STATUS_SUCCESS)
    for (int i = 0; i < found; ++i)
      if (results[static_cast<size_t>(i)].state == CUBLAS_STATUS_SUCCESS) algos.push_back(results[static_cast<size_t>(i)].algo);
  return algos;
}

LtGemm::Plan& LtGemm::plan_for(const Key& key) {
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  const auto [m, n, k, xt_i, wt_i, yt_i, has_bias] = key;
  Plan p = describe(key);
  // The algorithm tuned at build for the smallest tuned m >= m, if cuBLASLt accepts it for this m.
  bool chosen = false;
  if (auto t = tuned_.find(ShapeKey{n, k, xt_i, wt_i, yt_i, has_bias}); t != tuned_.end()) {
    auto at = t->second.lower_bound(m);
    if (at != t->second.end()) {
      cublasLtMatmulHeuristicResult_t check{};
      if (cublasLtMatmulAlgoCheck(handle_, p.desc, p.a, p.b, p.d, p.d, &at->second, &check) == CUBLAS_STATUS_SUCCESS &&
          check.workspaceSize <= workspace_bytes_) {
        p.algo = at->second;
        chosen = true;
      }
    }
  }
  if (!chosen) {
    const std::vector<cublasLtMatmulAlgo_t> algos = candidates(p, 1);
    const DType xt = static_cast<DType>(xt_i), wt = static_cast<DType>(wt_i), yt = static_cast<DType>(yt_i);
    KILN_CHECK(!algos.empty(), "cuBLASLt has no algorithm for y[" + std::to_string(m) + "," + std::to_string(n) +
                                   "] = x[" + std::to_string(m) + "," + std::to_string(k) + "] W^T (" + dtype_name(xt) +
                                   " x " + dtype_name(wt) + " -> " + dtype_name(yt) + (has_bias ? ", bias" : "") + ")");
    p.algo = algos.front();
  }
  return plans_.emplace(key, p).first->second;
}

const void* LtGemm::bias_in(const float* bias, int64_t n, DType yt, cudaStream_t stream) {
  if (yt == DType::kF32) return bias;
  void*& copy = bias_copies_[{bias, static_cast<int>(yt)}];
  if (!copy) {
    KILN_CUDA_CHECK(cudaMalloc(&copy, static_cast<size_t>(n) * dtype_size(yt)));
    convert(bias, DType::kF32, copy, yt, n, stream);
  }
  return copy;
}

void LtGemm::run(const void* x, DType xt, int64_t m, const void* w, DType wt, int64_t n, int64_t k, const float* bias,
                 void* y, DType yt, cudaStream_t stream) {
  if (m == 0) return;
  Plan& p = plan_for(Key{m, n, k, static_cast<int>(xt), static_cast<int>(wt), static_cast<int>(yt), bias != nullptr});
  if (bias) {
    const void* b = bias_in(bias, n, yt, stream);
    KILN_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &b, sizeof(b)));
  }
  const float alpha = 1.0f, beta = 0.0f;
  KILN_CUBLAS_CHECK(cublasLtMatmul(handle_, p.desc, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d, &p.algo, workspace_,
                                   workspace_bytes_, stream));
}

}  // namespace kiln::cuda
