// Packing, reference, ISA dispatch and threading of the CPU GEMM. The kernels live in
// gemm_avx512.cpp, gemm_avx2.cpp and gemm_scalar.cpp.
#include "backend/cpu/gemm.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "core/checked_math.h"
#include "core/cpu_features.h"
#include "core/status.h"

namespace kiln::cpu {

namespace {

bool is_weight_type(DType t) { return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16; }

// Elements along k stored per panel (k padded as the layout needs).
int64_t packed_k(DType wtype, int64_t k) { return wtype == DType::kF32 ? k : static_cast<int64_t>(round_up(k, 2)); }

float load_as_f32(const void* p, DType t, size_t i) {
  switch (t) {
    case DType::kF32: return static_cast<const float*>(p)[i];
    case DType::kBF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::kF16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return 0.0f;
  }
}

}  // namespace

size_t packed_weight_bytes(DType wtype, int64_t n, int64_t k) {
  KILN_CHECK(is_weight_type(wtype), std::string("gemm: unsupported weight type ") + dtype_name(wtype));
  KILN_CHECK(n >= 0 && k >= 0, "gemm: negative weight shape");
  uint64_t panels = round_up(static_cast<uint64_t>(n), kGemmPanel) / kGemmPanel;
  auto bytes = checked_product(std::initializer_list<int64_t>{
      static_cast<int64_t>(panels), kGemmPanel, packed_k(wtype, k), static_cast<int64_t>(dtype_size(wtype))});
  KILN_CHECK(bytes.has_value(), "gemm: packed weight size overflows");
  return static_cast<size_t>(*bytes);
}

void pack_weight(const void* w, DType src_type, int64_t n, int64_t k, DType wtype, void* dst) {
  KILN_CHECK(is_weight_type(src_type), std::string("pack_weight: unsupported source type ") + dtype_name(src_type));
  const size_t bytes = packed_weight_bytes(wtype, n, k);
  KILN_CHECK(reinterpret_cast<uintptr_t>(dst) % 64 == 0, "pack_weight: dst must be 64-byte aligned");
  if (bytes == 0) return;
  KILN_CHECK(w != nullptr && dst != nullptr, "pack_weight: null pointer");
  std::memset(dst, 0, bytes);
  const int64_t kp = packed_k(wtype, k);
  for (int64_t r = 0; r < n; ++r) {
    const int64_t panel = r / kGemmPanel, c = r % kGemmPanel;
    for (int64_t kk = 0; kk < k; ++kk) {
      const size_t si = static_cast<size_t>(r * k + kk);
      switch (wtype) {
        case DType::kF32: {
          float* d = static_cast<float*>(dst) + (panel * kp + kk) * kGemmPanel + c;
          *d = load_as_f32(w, src_type, si);
          break;
        }
        case DType::kF16: {
          uint16_t* d = static_cast<uint16_t*>(dst) + (panel * kp + kk) * kGemmPanel + c;
          *d = src_type == DType::kF16 ? static_cast<const uint16_t*>(w)[si] : f32_to_f16(load_as_f32(w, src_type, si));
          break;
        }
        case DType::kBF16: {
          // [panel][kk/2][c][kk%2]
          uint16_t* d = static_cast<uint16_t*>(dst) + panel * kp * kGemmPanel + (kk / 2) * 2 * kGemmPanel + c * 2 + kk % 2;
          *d = src_type == DType::kBF16 ? static_cast<const uint16_t*>(w)[si] : f32_to_bf16(load_as_f32(w, src_type, si));
          break;
        }
        default: break;
      }
    }
  }
}

void gemm_reference(const float* x, int64_t m, const void* w, DType wtype, int64_t n, int64_t k, const float* bias,
                    float* y) {
  KILN_CHECK(is_weight_type(wtype), "gemm_reference: unsupported weight type");
  std::vector<double> xr(static_cast<size_t>(std::max<int64_t>(k, 0)));
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t kk = 0; kk < k; ++kk) {
      float v = x[i * k + kk];
      if (wtype == DType::kBF16) v = bf16_to_f32(f32_to_bf16(v));
      xr[kk] = v;
    }
    for (int64_t j = 0; j < n; ++j) {
      double acc = 0.0;
      for (int64_t kk = 0; kk < k; ++kk) acc += xr[kk] * static_cast<double>(load_as_f32(w, wtype, j * k + kk));
      if (bias) acc += bias[j];
      y[i * n + j] = static_cast<float>(acc);
    }
  }
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
  }
  return "?";
}

bool isa_available(Isa isa) {
  const CpuFeatures& f = cpu_features();
  const bool avx2 = f.avx2 && f.fma && f.f16c;
  switch (isa) {
    case Isa::kScalar: return true;
    case Isa::kAvx2: return avx2;
    case Isa::kAvx512: return avx2 && f.avx512f && f.avx512bw && f.avx512vl;
  }
  return false;
}

Isa best_isa() {
  static const Isa best = isa_available(Isa::kAvx512) ? Isa::kAvx512
                          : isa_available(Isa::kAvx2) ? Isa::kAvx2
                                                      : Isa::kScalar;
  return best;
}

namespace {

// The kernel family that actually runs for (isa, wtype).
detail::GemmBlockFn block_fn(Isa isa, DType wtype) {
  switch (isa) {
    case Isa::kAvx512:
      if (wtype != DType::kBF16 || cpu_features().avx512_bf16) return &detail::gemm_block_avx512;
      return &detail::gemm_block_avx2;
    case Isa::kAvx2: return &detail::gemm_block_avx2;
    case Isa::kScalar: return &detail::gemm_block_scalar;
  }
  return &detail::gemm_block_scalar;
}

}  // namespace

const char* gemm_kernel_name_for(Isa isa, DType wtype) {
  KILN_CHECK(is_weight_type(wtype), "gemm: unsupported weight type");
  detail::GemmBlockFn fn = block_fn(isa, wtype);
  if (fn == &detail::gemm_block_avx512) {
    return wtype == DType::kBF16 ? "avx512_bf16" : wtype == DType::kF16 ? "avx512_f16c" : "avx512_fma";
  }
  if (fn == &detail::gemm_block_avx2) {
    return wtype == DType::kBF16 ? "avx2_bf16" : wtype == DType::kF16 ? "avx2_f16c" : "avx2_fma";
  }
  return "scalar";
}

const char* gemm_kernel_name(DType wtype) { return gemm_kernel_name_for(best_isa(), wtype); }

void gemm_with_isa(Isa isa, const float* x, int64_t ldx, int64_t m, const void* packed, DType wtype, int64_t n,
                   int64_t k, const float* bias, float* y, int64_t ldy, ThreadPool& pool) {
  KILN_CHECK(is_weight_type(wtype), std::string("gemm: unsupported weight type ") + dtype_name(wtype));
  KILN_CHECK(m >= 0 && n >= 0 && k >= 0, "gemm: negative shape");
  KILN_CHECK(isa_available(isa), std::string("gemm: ISA not available on this CPU: ") + isa_name(isa));
  if (m == 0 || n == 0) return;
  KILN_CHECK(ldy >= n && (k == 0 || ldx >= k), "gemm: row stride smaller than the row");
  KILN_CHECK(y != nullptr && (k == 0 || (x != nullptr && packed != nullptr)), "gemm: null pointer");
  KILN_CHECK(reinterpret_cast<uintptr_t>(packed) % 64 == 0, "gemm: packed weights must be 64-byte aligned");

  const detail::GemmArgs args{x, ldx, m, packed, wtype, n, k, bias, y, ldy};
  const detail::GemmBlockFn fn = block_fn(isa, wtype);
  const int64_t panels = (n + kGemmPanel - 1) / kGemmPanel;
  const int threads = pool.num_threads();

  // Waking the pool costs a few microseconds: not worth it for tiny products.
  const uint64_t weight_bytes = packed_weight_bytes(wtype, n, k);
  const uint64_t macs = static_cast<uint64_t>(m) * static_cast<uint64_t>(panels * kGemmPanel) * static_cast<uint64_t>(k);
  if (threads == 1 || (weight_bytes < (64u << 10) && macs < (1u << 18)) || (panels == 1 && m <= 8)) {
    fn(args, 0, m, 0, panels);
    return;
  }

  // Split the panels of n into chunks (each streams a disjoint part of W); when there are too few panels for
  // that, also split the rows of m. k is never split, so every output element is computed the same way
  // whatever the split. Several chunks per thread, taken by whichever thread is free: a thread preempted by
  // another process (or the server's own network threads) delays one chunk, not a fixed share of the work.
  const auto [n_chunks, m_chunks] = detail::split_work(m, panels, threads);
  const int64_t units = n_chunks * m_chunks;
  std::atomic<int64_t> next{0};
  pool.run([&](int, int) {
    for (int64_t u; (u = next.fetch_add(1, std::memory_order_relaxed)) < units;) {
      const int64_t nc = u % n_chunks, mc = u / n_chunks;
      const int64_t p0 = panels * nc / n_chunks, p1 = panels * (nc + 1) / n_chunks;
      const int64_t r0 = m * mc / m_chunks, r1 = m * (mc + 1) / m_chunks;
      if (p0 < p1 && r0 < r1) fn(args, r0, r1, p0, p1);
    }
  });
}

void gemm(const float* x, int64_t ldx, int64_t m, const void* packed, DType wtype, int64_t n, int64_t k,
          const float* bias, float* y, int64_t ldy, ThreadPool& pool) {
  gemm_with_isa(best_isa(), x, ldx, m, packed, wtype, n, k, bias, y, ldy, pool);
}

namespace detail {

namespace {
struct Scratch {
  void* p = nullptr;
  size_t cap = 0;
  ~Scratch() { std::free(p); }
};
}  // namespace

WorkSplit split_work(int64_t m, int64_t n_units, int64_t threads) {
  const int64_t per_thread = ThreadPool::kChunksPerThread;
  if (m <= 8 || n_units >= 2 * threads) return {std::min<int64_t>(threads * per_thread, n_units), 1};
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(threads, n_units / 2));
  // Row chunks of at least 16 rows (each re-reads its part of W), but at least one per thread.
  const int64_t m_chunks =
      std::max<int64_t>(threads / n_chunks, std::min<int64_t>(threads * per_thread / n_chunks, (m + 15) / 16));
  return {n_chunks, std::min(m_chunks, m)};
}

void* thread_scratch(size_t bytes) {
  thread_local Scratch s;
  if (bytes > s.cap) {
    size_t cap = round_up(std::max<size_t>(bytes, s.cap * 2), 4096);
    void* p = std::aligned_alloc(64, cap);
    KILN_CHECK(p != nullptr, "gemm: out of memory for scratch");
    std::free(s.p);
    s.p = p;
    s.cap = cap;
  }
  return s.p;
}

void round_to_bf16_f32(const float* src, float* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = bf16_to_f32(f32_to_bf16(src[i]));
}

}  // namespace detail

}  // namespace kiln::cpu
