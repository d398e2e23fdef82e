#include "backend/backend_factory.h"

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

Result<std::unique_ptr<Backend>> make_backend(const std::string& name, int device) {
  (void)device;
  if (name == "cpu") return std::unique_ptr<Backend>(std::make_unique<CpuBackend>());
  if (name == "cuda") {
#ifdef KILN_HAVE_CUDA
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
