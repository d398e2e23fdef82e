#include "backend/backend_factory.h"

#include <algorithm>
#include <cstdlib>
#include <string>

#include "backend/cpu/cpu_backend.h"
#ifdef KILN_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace kiln {

bool cuda_backend_built() {
#ifdef KILN_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

Result<std::unique_ptr<Backend>> make_backend(const std::string& name, int device, int share) {
  (void)device;
  if (name == "cpu") {
    if (share <= 1) return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
    return std::unique_ptr<Backend>(std::make_unique<CpuBackend>(std::max(1, ThreadPool::global().num_threads() / share)));
  }
  if (name == "cuda") {
#ifdef KILN_HAVE_CUDA
    // KILN_SHARED_GPU_RANKS=1 (testing multi-rank engines on fewer GPUs): rank r's device r is GPU r % count;
    // ranks that share a GPU get host-synchronised communicators (backend/cuda/cuda_communicators.h).
    if (const char* shared = std::getenv("KILN_SHARED_GPU_RANKS"); shared && std::string(shared) == "1") {
      int count = 0;
      if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0) device %= count;
      else (void)cudaGetLastError();  // no device: create() says so
    }
    KILN_ASSIGN_OR_RETURN(auto b, CudaBackend::create(device));
    return std::unique_ptr<Backend>(std::move(b));
#else
    return unimplemented("this kiln was built without the CUDA backend (nvcc was not found at build time, or "
                         "-DKILN_CUDA=OFF); rebuild it on a machine with the CUDA toolkit, or build the engine with "
                         "--backend cpu");
#endif
  }
  return invalid_argument("unknown backend '" + name + "' (cpu or cuda)");
}

}  // namespace kiln
