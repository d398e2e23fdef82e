// What the host we run on has: SIMD read once with cpuid (kernels are chosen at run time), and memory.
#pragma once

#include <cstdint>
#include <string>

namespace kiln {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_bf16 = false;
  bool avx512_vnni = false;
  std::string to_string() const;
};

// Features of this CPU; KILN_CPU_ISA=scalar|avx2|avx512 caps what kernels may use (for tests).
const CpuFeatures& cpu_features();

// MemAvailable of /proc/meminfo (8 GiB when unreadable).
uint64_t available_host_memory();

}  // namespace kiln
