// Shared by the CUDA backend's tests: they run where a CUDA device is visible and skip elsewhere (CI).
#pragma once

#include <cuda_runtime.h>

namespace kiln::test {

inline bool have_cuda_device() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear it (no driver / no device)
    return false;
  }
  return n > 0;
}

}  // namespace kiln::test
