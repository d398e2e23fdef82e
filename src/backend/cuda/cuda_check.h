// Error checks for CUDA runtime and cuBLASLt calls inside the CUDA backend. A failing call inside an op is
// a broken invariant (bad pointer, device lost): KILN_CHECK aborts with the call and the error's name.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <string>

#include "core/status.h"

namespace kiln::cuda {

inline std::string cuda_error_text(cudaError_t e) {
  return std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}
inline std::string cublas_status_text(cublasStatus_t s) {
  return "cublasStatus " + std::to_string(static_cast<int>(s));
}

}  // namespace kiln::cuda

#define KILN_CUDA_CHECK(call)                                                                     \
  do {                                                                                            \
    const cudaError_t kiln_cuda_err_ = (call);                                                    \
    KILN_CHECK(kiln_cuda_err_ == cudaSuccess,                                                     \
               std::string(#call) + " failed: " + ::kiln::cuda::cuda_error_text(kiln_cuda_err_)); \
  } while (0)

#define KILN_CUBLAS_CHECK(call)                                                                           \
  do {                                                                                                    \
    const cublasStatus_t kiln_cublas_st_ = (call);                                                        \
    KILN_CHECK(kiln_cublas_st_ == CUBLAS_STATUS_SUCCESS,                                                  \
               std::string(#call) + " failed: " + ::kiln::cuda::cublas_status_text(kiln_cublas_st_));        \
  } while (0)
