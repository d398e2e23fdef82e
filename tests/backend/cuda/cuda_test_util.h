// Shared by the CUDA backend's tests: they run where a CUDA device is visible and skip elsewhere (CI).
#pragma once

#include <cuda_runtime.h>

namespace kiln::test {

inline bool have_cuda_device() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

}  // namespace kiln::test
