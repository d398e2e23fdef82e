// Programmatic dependent launch (Hopper): a kernel launched with `launch_kernel` may start while the
// kernel before it on the stream is still running, so its launch latency and its loads of immutable data
// (weights) overlap the predecessor's tail. The contract every such kernel keeps:
//   - nothing produced or consumed by earlier kernels (activations, KV cache, workspaces) is read or
//     written before `pdl_wait()`, which returns once the kernel before it has finished and its writes
//     are visible; weights and other data fixed for the life of the engine may be read before it;
//   - every block calls `pdl_wait()` before it ends, even one that touches no activations: the wait covers
//     only the kernel just before, so "finished" stays transitive only if every kernel waits;
//   - `pdl_launch_dependents()` (optional) lets the next kernel be scheduled before this one ends; a kernel
//     that never calls it lets the next one start when its blocks exit.
// On pre-Hopper devices, or with KILN_CUDA_PDL=0, launches are ordinary and both calls are no-ops.
#pragma once

#include <cuda_runtime.h>

#include <utility>

namespace kiln::cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether launches on the current device use programmatic stream serialization (cached per process:
// sm_90+ and KILN_CUDA_PDL not "0"). Defined in cuda_backend.cpp.
bool pdl_enabled();

// Launches `kernel<<<grid, block, smem, stream>>>(args...)`, as a programmatic dependent launch when
// pdl_enabled(). The kernel must keep the contract above. Returns the launch's error.
template <typename... KernelArgs, typename... Args>
cudaError_t launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  cudaLaunchAttribute attribute[1];
  attribute[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attribute[0].val.programmaticStreamSerializationAllowed = 1;
  config.attrs = attribute;
  config.numAttrs = pdl_enabled() ? 1 : 0;
  return cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
}

}  // namespace kiln::cuda
